"""The compiled model as a plain Pyro model, ``pyro_model(observations=None, **args)``,
and its vectorised form (``simulate``). Observations are validated here."""
from __future__ import annotations

import difflib
from typing import Dict, Optional

import numpy as np
import pyro
import torch
from torch.distributions import constraints

from ..errors import ObservationError
from .runtime import Runtime
from .sites import Layout, ModelSites


def to_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        arr = np.asarray(value)
    except Exception:
        raise ObservationError(f"{what}: cannot read {value!r} as a number or array") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise ObservationError(f"{what}: expected numbers, got {value!r}")
    return torch.as_tensor(arr)


def validate_observations(checked, observations, batch: Optional[int] = None,
                          require_all: bool = True) -> Dict[str, torch.Tensor]:
    """Check names, shapes, dtypes and supports; return tensors of shape
    (1 or batch, *shape)."""
    observations = dict(observations or {})
    names = [n for n, v in checked.vars.items() if v.kind == "observed"]
    unknown = [k for k in observations if k not in names]
    msgs = []
    for k in unknown:
        kind = checked.vars[k].kind if k in checked.vars else None
        if kind:
            msgs.append(f"'{k}' is {'an' if kind[0] in 'aeiou' else 'a'} {kind} variable, "
                        f"not an observed one; the observed variables are {names}")
        else:
            m = difflib.get_close_matches(k, names, n=1)
            msgs.append(f"unknown observed variable '{k}'"
                        + (f"; did you mean '{m[0]}'?" if m else f"; the model observes {names}"))
    if require_all:
        for n in names:
            if n not in observations:
                msgs.append(f"missing observation for '{n}' "
                            f"(expected {checked.vars[n].type})")
    out = {}
    for k, value in observations.items():
        if k not in names:
            continue
        v = checked.vars[k]
        t = to_tensor(value, f"observation '{k}'")
        shape = tuple(v.type.shape)
        if tuple(t.shape) == shape:
            t = t.unsqueeze(0)
        elif batch is not None and tuple(t.shape) == (batch,) + shape:
            pass
        else:
            msgs.append(f"observation '{k}' has shape {list(t.shape)}, expected "
                        f"{list(shape)} ({v.type}); nothing is broadcast")
            continue
        if v.type.base in ("int", "bool"):
            if t.is_floating_point() and not bool(torch.all(t == t.round())):
                msgs.append(f"observation '{k}' must be {v.type.base}-valued "
                            f"({v.dist}), got {t.reshape(-1)[0].item():g}")
                continue
        elif t.dtype == torch.bool:
            msgs.append(f"observation '{k}' must be real-valued, got a bool")
            continue
        t = t.to(torch.get_default_dtype())
        if not bool(torch.isfinite(t).all()):
            msgs.append(f"observation '{k}' contains NaN or infinity")
            continue
        sup = v.support
        if sup is not None and sup is not constraints.real and sup is not constraints.real_vector:
            try:
                ok = sup.check(t)
                if sup.event_dim and ok.dim() < t.dim():
                    pass
                if not bool(ok.all()):
                    bad = t[~ok.expand(t.shape)] if ok.shape == t.shape else t.reshape(-1)
                    msgs.append(f"observation '{k}' = {bad.reshape(-1)[0].item():g} is outside "
                                f"the support of {v.dist} ({_support_words(sup)})")
                    continue
            except Exception:
                pass
        out[k] = t
    if msgs:
        raise ObservationError("; ".join(msgs) if len(msgs) == 1 else
                               "bad observations:\n  - " + "\n  - ".join(msgs))
    return out


def _support_words(sup) -> str:
    if sup is constraints.positive:
        return "positive reals"
    if sup is constraints.nonnegative_integer:
        return "non-negative integers"
    if sup is constraints.boolean:
        return "0 or 1"
    if sup is constraints.unit_interval:
        return "[0, 1]"
    if sup is constraints.simplex:
        return "the simplex: non-negative, summing to 1"
    if hasattr(sup, "lower_bound") and hasattr(sup, "upper_bound"):
        return f"[{sup.lower_bound}, {sup.upper_bound}]"
    if hasattr(sup, "lower_bound"):
        return f"> {sup.lower_bound}"
    return str(sup)


class PyroModel:
    """``model(observations=None, **args)``: a plain Pyro model of the spec.

    Called plainly it runs one trace with the spec's shapes. ``num_traces=B`` runs B
    independent traces at once inside a ``_traces`` plate.
    """

    def __init__(self, compiled):
        self.compiled = compiled
        self.__name__ = compiled.name

    def resolve_args(self, overrides) -> Dict[str, torch.Tensor]:
        return self.compiled.resolve_runtime_args(overrides)

    def __call__(self, observations=None, num_traces: Optional[int] = None, **args):
        c = self.compiled
        obs = observations
        if obs is not None and not getattr(obs, "_validated", False):
            obs = validate_observations(c.checked, obs, batch=num_traces, require_all=False)
        batched = num_traces is not None
        B = num_traces or 1
        layout = Layout(c, B, batched)
        rt = Runtime(c, B, ModelSites(layout, obs), self.resolve_args(args))
        with layout.traces_plate():
            env = rt.run()
        out = Env({n: s.t for n, s in env.items()})
        out.exists = {n: s.exists for n, s in env.items() if s.exists is not None}
        return out


class Env(dict):
    """Every variable's value (B, *shape); ``.exists`` masks conditional elements."""
    exists: dict
