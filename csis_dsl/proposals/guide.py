"""The generated guide: the model's own program, re-run with every latent site drawn
from the proposal network (observed statements take the given observations).

``Guide`` is a ``torch.nn.Module`` and a Pyro guide with the model's signature
(``guide(observations=None, **args)``), so it works with ``pyro.infer.CSIS`` and
``pyro.infer.Importance`` as well as with csis_dsl's own engine.
"""
from __future__ import annotations

import itertools
from typing import Optional

import pyro
import pyro.poutine as poutine
import torch
import torch.nn as nn

from ..backend.handlers import Site, SiteHandler, given
from ..backend.interpreter import Runtime
from ..backend.observations import Observations
from ..backend.pyro_model import PyroModel
from ..backend.pyro_sites import Layout
from .network import NetworkConfig, ProposalNetwork
from .site_proposal import GuideState, SiteProposal


class GuideSites(SiteHandler):
    """The guide's handler: latents from their proposals (Pyro sample sites), observed
    values from the data."""

    def __init__(self, net: ProposalNetwork, layout: Layout, obs, state: GuideState):
        super().__init__(obs)
        self.net, self.layout, self.state = net, layout, state

    def observed(self, site: Site):
        return given(self.observations[site.name], site, self.layout.B)

    def latent(self, site: Site):
        L = self.layout
        present = None if site.mask is None else \
            site.mask.expand((L.B,) + tuple(site.mask.shape[1:])).reshape(L.B, -1)
        q = SiteProposal(self.net, self.state, self.net.by_name[site.name], site.fn, present,
                         L.batch_shape(site), L.event_shape(site))
        with L.plates(site):
            x = pyro.sample(site.name, q)
        q.advance(x)
        return L.from_pyro(x, site)


_GUIDE_NUMBERS = itertools.count()


class Guide(nn.Module):
    """The generated inference network, usable as a Pyro guide."""

    def __init__(self, model: PyroModel, graph, config: Optional[NetworkConfig] = None,
                 obs_embeddings: Optional[dict] = None):
        super().__init__()
        self.model = model
        self.config = config or NetworkConfig()
        self.net = ProposalNetwork(model.checked, model.plan, graph, self.config,
                                   obs_embeddings)
        # whether the standardisation statistics were fitted (saved with the weights)
        self.register_buffer("fitted", torch.tensor(False))
        # its own name in Pyro's param store, never reused in this process (an id() could
        # be, and pyro.module would then load another guide's stale weights)
        self._pyro_name = f"csis_dsl.{model.checked.program.name}.{next(_GUIDE_NUMBERS)}"

    def fit_statistics(self, n: int = 5000):
        """Standardisation statistics of the network from ``n`` prior simulations, once."""
        if not bool(self.fitted):
            with poutine.block():   # may run inside a caller's handlers (pyro.infer.CSIS)
                self.net.fit_statistics(self.model.simulate(n))
            self.fitted.fill_(True)

    def forward(self, observations=None, num_traces: Optional[int] = None, **args):
        if observations is None:
            raise ValueError("the guide needs observations: guide(observations={...})")
        if not isinstance(observations, Observations):
            # called by Pyro code (pyro.infer.CSIS, Importance, ...) or by hand: let
            # Pyro's optimisers see the weights, under a name of this guide's own
            self.fit_statistics()
            pyro.module(self._pyro_name, self)
        obs = Observations.of(self.model.checked, observations, batch=num_traces)
        layout = Layout(self.model.plan, num_traces or 1, num_traces is not None)
        state = GuideState(self.net, self.net.embed_observations(obs, layout.B))
        rt = Runtime(self.model.checked, self.model.plan, layout.B,
                     GuideSites(self.net, layout, obs, state), self.model.args(args))
        with layout.traces_plate():
            rt.run()
        return None
