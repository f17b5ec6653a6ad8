"""Observations: the values given for observed variables, checked once against the
model (names, shapes, dtypes, supports) and carried as an :class:`Observations` object,
so that every later stage knows they are valid without re-checking a flag."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Dict, Optional

import numpy as np
import torch
from torch.distributions import constraints

from ..catalogue.supports import describe, is_dependent
from ..errors import ObservationError
from ..frontend.checked import Checked


class Observations(Mapping):
    """Validated observations: name -> tensor of shape (1 or B, *shape), real-valued
    variables in the default float dtype."""

    def __init__(self, values: Dict[str, torch.Tensor]):
        self._values = dict(values)

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __repr__(self):
        return f"Observations({', '.join(self._values)})"

    def take(self, index: torch.Tensor) -> "Observations":
        """The observation sets of the given traces (sets shared by every trace stay)."""
        return Observations({n: t if t.shape[0] == 1 else t[index]
                             for n, t in self._values.items()})

    @property
    def batch(self) -> int:
        """How many observation sets these are (1: one set shared by every trace)."""
        return max((t.shape[0] for t in self._values.values()), default=1)

    @classmethod
    def of(cls, checked: Checked, observations, batch: Optional[int] = None,
           require_all: bool = True) -> "Observations":
        """Validate ``observations`` (a mapping of name to number, list, array or
        tensor), or pass an already validated one through."""
        if isinstance(observations, Observations):
            return observations
        return cls(validate(checked, observations, batch, require_all))


INT64_MAX = 2 ** 63 - 1


def to_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        arr = np.asarray(value)
    except Exception:
        raise ObservationError(f"{what}: cannot read {value!r} as a number or array") from None
    # beyond int64: Python ints (an object array), or numpy's reading of 2^63 .. 2^64 - 1
    # as unsigned 64-bit, which torch cannot take
    wide = arr.dtype.kind == "u" and arr.dtype.itemsize == 8
    if _has_big_int(value) if arr.dtype == object else (
            wide and arr.size and int(arr.max()) > INT64_MAX):
        raise ObservationError(f"{what}: an integer beyond the int64 range [-2^63, 2^63 - 1]")
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ObservationError(f"{what}: expected numbers, got {value!r}")
    if wide:
        arr = arr.astype(np.int64)
    return torch.as_tensor(arr)


def _has_big_int(value) -> bool:
    stack = [value]
    while stack:
        x = stack.pop()
        if isinstance(x, int) and not isinstance(x, bool) and not -2 ** 63 <= x < 2 ** 63:
            return True
        if isinstance(x, (list, tuple)):
            stack.extend(x)
    return False


def validate(checked: Checked, observations, batch: Optional[int] = None,
             require_all: bool = True) -> Dict[str, torch.Tensor]:
    """Check names, shapes, dtypes and supports; return tensors of shape
    (1 or batch, *shape). Every problem is reported in one ObservationError."""
    if observations is None:
        observations = {}
    if not isinstance(observations, Mapping):
        raise ObservationError("observations must be a mapping from observed variable to "
                               f"value, such as {{'y': 1.0}}; got {type(observations).__name__}")
    names = checked.names("observed")
    msgs = []
    for k in observations:
        if k in names:
            continue
        kind = checked.vars[k].kind if k in checked.vars else None
        if kind:
            msgs.append(f"'{k}' is {'an' if kind[0] in 'aeiou' else 'a'} {kind} variable, "
                        f"not an observed one; the observed variables are {names}")
        else:
            m = difflib.get_close_matches(str(k), names, n=1)
            msgs.append(f"unknown observed variable '{k}'"
                        + (f"; did you mean '{m[0]}'?" if m else f"; the model observes {names}"))
    if require_all:
        msgs += [f"missing observation for '{n}' (expected {checked.vars[n].type})"
                 for n in names if n not in observations]
    out = {}
    for k, value in observations.items():
        if k not in names:
            continue
        try:
            out[k] = _one(checked.vars[k], k, value, batch)
        except ObservationError as err:
            msgs.append(str(err))
    if msgs:
        raise ObservationError("; ".join(msgs) if len(msgs) == 1 else
                               "bad observations:\n  - " + "\n  - ".join(msgs))
    from ..device import here
    return {k: here(t) for k, t in out.items()}


def _one(v, k, value, batch) -> torch.Tensor:
    t = to_tensor(value, f"observation '{k}'")
    shape = tuple(v.type.shape)
    if tuple(t.shape) == shape:
        t = t.unsqueeze(0)
    elif batch is None or tuple(t.shape) != (batch,) + shape:
        raise ObservationError(f"observation '{k}' has shape {list(t.shape)}, expected "
                               f"{list(shape)} ({v.type}); nothing is broadcast")
    if v.type.base in ("int", "bool"):
        if t.is_floating_point() and not bool(torch.all(t == t.round())):
            raise ObservationError(f"observation '{k}' must be {v.type.base}-valued "
                                   f"({v.dist}), got {t.reshape(-1)[0].item():g}")
    elif t.dtype == torch.bool:
        raise ObservationError(f"observation '{k}' must be real-valued, got a bool")
    if not bool(torch.isfinite(t).all()):
        raise ObservationError(f"observation '{k}' contains NaN or infinity")
    big = torch.finfo(torch.get_default_dtype()).max
    if t.is_floating_point() and bool((t.double().abs() > big).any()):
        raise ObservationError(f"observation '{k}' has a value beyond the "
                               f"{torch.get_default_dtype()} range (±{big:.3g})")
    t = t.to(torch.get_default_dtype())
    sup = v.support
    if isinstance(sup, type(constraints.simplex)):
        total = t.sum(-1)
        if bool(((total - 1).abs() > 1e-5).any()) or bool((t < 0).any()):
            raise ObservationError(f"observation '{k}' must be on the simplex (non-negative, "
                                   f"summing to 1); it sums to {float(total.reshape(-1)[0]):g}")
        return t
    if sup is not None and sup is not constraints.real and sup is not constraints.real_vector \
            and not is_dependent(sup):
        ok = sup.check(t)
        if not bool(ok.all()):
            bad = t[~ok.expand(t.shape)] if ok.shape == t.shape else t.reshape(-1)
            raise ObservationError(f"observation '{k}' = {bad.reshape(-1)[0].item():g} is "
                                   f"outside the support of {v.dist} ({describe(sup)})")
    return t
