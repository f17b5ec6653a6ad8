"""The Pyro boundary: the handler that turns the interpreter's sites into Pyro sample
sites (the model's), and the layout that maps between the two.

Layout in Pyro: an outer ``_traces`` plate (batched runs only) at dim -(D+1), where D
is the deepest loop nesting of the model, and one ``pyro.plate`` per independent loop
at a fixed dim by nesting depth. Sites nested in fewer loops are padded with singleton
dims; the value's own shape (and the dims of a family produced in order) is the event.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import pyro
import torch

from ..middle.plan import Plan
from .dists import Reshaped
from .handlers import Site, SiteHandler, given


class Layout:
    def __init__(self, plan: Plan, B: int, batched: bool):
        self.D = plan.depth
        self.B = B
        self.batched = batched
        self.plate_names = plan.plate_names
        self._plates = {}

    def batch_shape(self, site: Site):
        if site.family:
            return (self.B,) + (1,) * self.D if self.batched else ()
        loops = site.loops
        shape = tuple(l.size for l in loops) + (1,) * (self.D - len(loops))
        return ((self.B,) + shape) if self.batched else (shape if loops else ())

    def fn(self, site: Site):
        """The site's distribution in the Pyro layout, masked where it does not run."""
        d = site.fn
        nb = len(d.batch_shape) - 1 - len(site.loops)
        if nb > 0:
            d = d.to_event(nb)
        target = self.batch_shape(site)
        if tuple(d.batch_shape) != tuple(target):
            d = Reshaped(d, target)
        if site.mask is not None:
            d = d.mask(site.mask.expand((self.B,) + tuple(site.mask.shape[1:])).reshape(target))
        return d

    def to_pyro(self, x, site: Site):
        return x.reshape(self.batch_shape(site) + tuple(self.event_shape(site)))

    def event_shape(self, site: Site):
        return site.var.type.shape if site.family else site.var.elem_shape

    def from_pyro(self, x, site: Site):
        return x.reshape(site.value_shape(self.B))

    @contextlib.contextmanager
    def plates(self, site: Site):
        with contextlib.ExitStack() as stack:
            for j, loop in enumerate(site.loops, start=1):
                # one plate object per loop and run: a fissioned loop (c[i] and y[i] as
                # separate vectorised statements) re-enters the same plate
                if loop not in self._plates:
                    self._plates[loop] = pyro.plate(self.plate_names[loop], loop.size,
                                                    dim=-(self.D + 1) + j)
                stack.enter_context(self._plates[loop])
            yield

    def traces_plate(self):
        if not self.batched:
            return contextlib.nullcontext()
        return pyro.plate("_traces", self.B, dim=-(self.D + 1))


class PyroSites(SiteHandler):
    """The model's handler: ``pyro.sample`` for every site, with ``obs=`` for observed
    variables that were given."""

    def __init__(self, layout: Layout, observations: Optional[Dict[str, torch.Tensor]]):
        super().__init__(observations)
        self.layout = layout

    def latent(self, site: Site):
        L = self.layout
        with L.plates(site):
            return L.from_pyro(pyro.sample(site.name, L.fn(site)), site)

    def observed(self, site: Site):
        L = self.layout
        x = self.observations.get(site.name)
        obs = None if x is None else L.to_pyro(given(x, site, L.B), site)
        with L.plates(site):
            return L.from_pyro(pyro.sample(site.name, L.fn(site), obs=obs), site)
