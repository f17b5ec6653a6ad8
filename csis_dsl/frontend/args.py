"""Arg values given by the user (``compile(..., args=...)``, ``--arg``, overrides at run
time): converted to tensors of the declared type, or an ObservationError naming the arg."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from ..errors import ObservationError
from .checked import Checked
from .types import Type


def _to_python(v: torch.Tensor):
    return v.item() if v.dim() == 0 else v.tolist()


def convert_arg(name: str, t: Type, raw) -> torch.Tensor:
    """``raw`` (a number, a nested list, a numpy array or a tensor) as a tensor of type
    ``t``; ObservationError when it does not fit."""
    try:
        if isinstance(raw, torch.Tensor):
            value = raw.detach().clone()
        else:
            arr = np.asarray(raw)
            if arr.dtype == object or arr.dtype.kind not in "biuf":
                raise TypeError
            value = torch.as_tensor(arr)
    except Exception:
        raise ObservationError(f"arg '{name}': expected {t}, got {raw!r}") from None
    if tuple(value.shape) != t.shape:
        raise ObservationError(f"arg '{name}': expected {t} (shape {list(t.shape)}), "
                               f"got a value of shape {list(value.shape)}")
    if t.base == "int":
        if value.dtype == torch.bool or (value.is_floating_point() and
                                         not torch.all(value == value.round())):
            raise ObservationError(f"arg '{name}': expected {t}, got {_to_python(value)!r}")
        return value.long()
    if t.base == "bool":
        if value.dtype != torch.bool:
            raise ObservationError(f"arg '{name}': expected bool, got {_to_python(value)!r}")
        return value
    if value.dtype == torch.bool:
        raise ObservationError(f"arg '{name}': expected {t}, got a bool")
    return value.to(torch.get_default_dtype())


def resolve_runtime_args(checked: Checked, overrides) -> Dict[str, torch.Tensor]:
    """The arg values for one run: the compiled ones, with real-valued args overridden.
    Int and bool args fix the model's structure, so changing them needs a recompile."""
    args = dict(checked.args)
    for name, value in (overrides or {}).items():
        v = checked.vars.get(name)
        if v is None or v.kind != "arg":
            raise ObservationError(f"'{name}' is not an arg of model {checked.program.name}; "
                                   f"its args are {list(checked.args)}")
        new = convert_arg(name, v.type, value)
        if v.type.base != "real":
            if not torch.equal(new, args[name]):
                raise ObservationError(
                    f"arg '{name}' ({v.type}) fixes the model's structure; recompile "
                    f"with compile(..., args={{'{name}': {value!r}}}) to change it")
            continue
        args[name] = new
    return args
