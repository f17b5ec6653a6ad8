"""The Pyro boundary: turns runtime-layout distributions into Pyro sample sites.

Layout in Pyro: an outer ``_traces`` plate (batched runs only) at dim -(D+1), where D
is the deepest loop nesting of the model, and one ``pyro.plate`` per independent loop
at a fixed dim by nesting depth. Sites nested in fewer loops are padded with singleton
dims; the value's own shape (and the dims of a sequential family) is the event.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import pyro
import pyro.distributions as pdist
import torch
from torch.distributions import constraints


class Reshaped(pdist.TorchDistribution):
    """``base`` with its batch shape reshaped (same number of elements)."""

    def __init__(self, base, batch_shape, validate_args=False):
        self.base = base
        super().__init__(torch.Size(batch_shape), base.event_shape, validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self.base.support

    @property
    def has_rsample(self):
        return self.base.has_rsample

    def _to_base(self, value):
        n = len(self.event_shape)
        lead = value.shape[:value.dim() - n - len(self.batch_shape)]
        return value.reshape(lead + self.base.batch_shape + self.base.event_shape)

    def sample(self, sample_shape=torch.Size()):
        x = self.base.sample(sample_shape)
        return x.reshape(sample_shape + self.batch_shape + self.event_shape)

    def rsample(self, sample_shape=torch.Size()):
        x = self.base.rsample(sample_shape)
        return x.reshape(sample_shape + self.batch_shape + self.event_shape)

    def log_prob(self, value):
        lp = self.base.log_prob(self._to_base(value))
        return lp.reshape(lp.shape[:lp.dim() - len(self.base.batch_shape)] + self.batch_shape)

    @property
    def mean(self):
        return self.base.mean.reshape(self.batch_shape + self.event_shape)


class Layout:
    def __init__(self, compiled, B: int, batched: bool):
        self.D = compiled.checked.max_depth
        self.B = B
        self.batched = batched
        self.plate_names = compiled.plate_names
        self._plates = {}

    def batch_shape(self, loops):
        shape = tuple(l.size for l in loops) + (1,) * (self.D - len(loops))
        return ((self.B,) + shape) if self.batched else (shape if loops else ())

    def to_pyro(self, d, loops):
        """Runtime dist with batch (B, *loops, *elem batch) -> Pyro layout."""
        nb = len(d.batch_shape) - 1 - len(loops)
        if nb > 0:
            d = d.to_event(nb)
        target = self.batch_shape(loops)
        if tuple(d.batch_shape) == tuple(target):
            return d
        return Reshaped(d, target)

    def mask_to_pyro(self, mask, loops):
        if mask is None:
            return None
        target = self.batch_shape(loops)
        return mask.expand((self.B,) + tuple(mask.shape[1:])).reshape(target)

    def value_from_pyro(self, x, loops, elem_shape):
        return x.reshape((self.B,) + tuple(l.size for l in loops) + tuple(elem_shape))

    def value_to_pyro(self, x, loops, elem_shape, family=False):
        """An observed array (no batch, or batch B) -> the site's Pyro shape."""
        lead = (self.B,) if self.batched else ()
        if family:
            if not self.batched:
                return x.reshape(x.shape[1:])
            x = x.expand((self.B,) + tuple(x.shape[1:]))
            return x.reshape((self.B,) + (1,) * self.D + tuple(x.shape[1:]))
        target = self.batch_shape(loops) + tuple(elem_shape)
        return x.expand((self.B,) + tuple(x.shape[1:])).reshape(target)

    @contextlib.contextmanager
    def plates(self, loops):
        with contextlib.ExitStack() as stack:
            for j, loop in enumerate(loops, start=1):
                # one plate object per loop and run: a fissioned loop (c[i] and y[i] as
                # separate vectorised statements) re-enters the same plate
                key = id(loop.stmt)
                if key not in self._plates:
                    self._plates[key] = pyro.plate(self.plate_names[key], loop.size,
                                                   dim=-(self.D + 1) + j)
                stack.enter_context(self._plates[key])
            yield

    def traces_plate(self):
        if not self.batched:
            return contextlib.nullcontext()
        return pyro.plate("_traces", self.B, dim=-(self.D + 1))


class ModelSites:
    """Site handler of the model: ``pyro.sample`` with ``obs=`` for observed variables."""

    def __init__(self, layout: Layout, observations: Optional[Dict[str, torch.Tensor]]):
        self.layout = layout
        self.obs = observations or {}

    def sample(self, rt, v, s, d, active, k):
        L = self.layout
        loops = rt.plans[id(s)].loops if k else []
        fn = L.to_pyro(d, loops)
        mask = L.mask_to_pyro(active, loops)
        if mask is not None:
            fn = fn.mask(mask)
        obs = None
        if v.kind == "observed" and v.name in self.obs:
            obs = L.value_to_pyro(self.obs[v.name], loops, v.elem_shape)
        with L.plates(loops):
            x = pyro.sample(v.name, fn, obs=obs)
        return L.value_from_pyro(x, loops, v.elem_shape)

    def family(self, rt, v, d):
        L = self.layout
        fn = Reshaped(d, L.batch_shape([]) if not L.batched else (L.B,) + (1,) * L.D)
        obs = None
        if v.kind == "observed" and v.name in self.obs:
            obs = L.value_to_pyro(self.obs[v.name], [], v.type.shape, family=True)
        x = pyro.sample(v.name, fn, obs=obs)
        x = x.reshape((L.B,) + tuple(v.type.shape))
        if obs is not None or not hasattr(d, "_exists"):
            d.log_prob(x)  # sets the existence mask of the given value
        return x
