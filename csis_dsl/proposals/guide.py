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
from ..device import here, on
from .network import NetworkConfig, ProposalNetwork
from .site_proposal import GuideState, SiteProposal


class GuideSites(SiteHandler):
    """The guide's handler: latents from their proposals (Pyro sample sites), observed
    values from the data."""

    reads_observed = False

    def __init__(self, net: ProposalNetwork, layout: Layout, obs, state: GuideState):
        super().__init__(obs)
        self.net, self.layout, self.state = net, layout, state

    def observed(self, site: Site):
        return given(self.observations[site.name], site, self.layout.B)

    def latent(self, site: Site):
        L = self.layout
        present = None if site.mask is None else \
            site.mask.expand((L.B,) + tuple(site.mask.shape[1:])).reshape(L.B, -1)
        q = SiteProposal(self.net, self.state, self.net.by_name[site.name], site.fn,
                         site.env, present, L.batch_shape(site), L.event_shape(site),
                         site.runtime)
        with L.plates(site):
            x = pyro.sample(site.name, q)
        q.advance(x)
        return L.from_pyro(x, site)


class ProposeSites(SiteHandler):
    """The guide's handler without Pyro (the fast path): latents proposed, or given in
    ``values`` (teacher forcing); accumulates log q per trace."""

    reads_observed = False

    def __init__(self, net: ProposalNetwork, B: int, obs, state: GuideState, values=None,
                 subsample: Optional[int] = None, record: bool = False):
        super().__init__(obs)
        self.net, self.B, self.state = net, B, state
        self.values = values or {}
        self.subsample = subsample      # score given values on this many instances per site
        self.record = record            # keep each site's contexts (what refinement reads)
        self.proposed = {}
        self.present = {}
        self.contexts = {}
        self.looked_ahead = set()      # chains located by their look-ahead messages
        self.log_q = torch.zeros(B)

    def observed(self, site: Site):
        return given(self.observations[site.name], site, self.B)

    def latent(self, site: Site):
        B, info = self.B, self.net.by_name[site.name]
        present = None if site.mask is None else \
            site.mask.expand((B,) + tuple(site.mask.shape[1:])).reshape(B, -1)
        shape = site.value_shape(B)
        q = SiteProposal(self.net, self.state, info, site.fn, site.env, present,
                         shape[:1], shape[1:], site.runtime)
        x = self.values.get(site.name)
        subsample = self.subsample
        if x is None:
            x, subsample = q.sample(), None
        x = x.expand((B,) + tuple(x.shape[1:])).reshape(shape)
        self.log_q = self.log_q + q.advance(x, subsample).sum(-1)
        self.proposed[site.name] = x
        self.present[site.name] = present
        if self.record:
            with torch.no_grad():
                prev = None if info.plate else q._previous(x.reshape(B, info.n, info.de).to(
                    torch.get_default_dtype()))
                c = q.adapter_context(0, info.n, prev)
            self.contexts[site.name] = None if c is None else c.detach()
        if q.looked_ahead:
            self.looked_ahead.add(site.name)
        return x


_GUIDE_NUMBERS = itertools.count()


class Guide(nn.Module):
    """The generated inference network, usable as a Pyro guide."""

    def __init__(self, model: PyroModel, graph, config: Optional[NetworkConfig] = None,
                 obs_embeddings: Optional[dict] = None):
        super().__init__()
        self.model = model
        self.net = ProposalNetwork(model.checked, model.plan, graph,
                                   config or NetworkConfig(), obs_embeddings)
        self.config = self.net.config          # the widths made concrete for the model
        # whether the standardisation statistics were fitted (saved with the weights)
        self.register_buffer("fitted", torch.tensor(False))
        # its own name in Pyro's param store, never reused in this process (an id() could
        # be, and pyro.module would then load another guide's stale weights)
        self._pyro_name = f"csis_dsl.{model.checked.program.name}.{next(_GUIDE_NUMBERS)}"

    def __deepcopy__(self, memo):
        """A copy of the network's weights and state; the model it proposes for (the
        checked program and plan, read-only) is shared, not copied."""
        import copy
        memo[id(self.model)] = self.model
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, copy.deepcopy(v, memo))
        return new

    def fit_statistics(self, n: int = 5000):
        """Standardisation statistics of the network from ``n`` prior simulations, once."""
        if not bool(self.fitted):
            with poutine.block(), on(self.model.device):   # may run inside a caller's
                sims = self.model.simulate(n)                  # handlers (pyro CSIS)
                self.model.warn_extreme(sims)
                self.net.fit_statistics(sims)
            self.fitted.fill_(True)

    def _run(self, obs, B, handler_of, args):
        """(Inside ``on(device)``: the callers enter it.)"""
        state = GuideState(self.net, self.net.embed(obs, B), obs)
        handler = handler_of(state)
        Runtime(self.model.checked, self.model.plan, B, handler, self.model.args(args),
                strict=False, body=self.model.plan.proposal_body).run()
        return handler

    def propose(self, observations, num_traces: int, grad: bool = False,
                present: bool = False, **args):
        """Draw every latent from the proposal, without Pyro: (values {name: (B, ...)},
        log q (B,)), and with ``present`` also the handler that drew them (where each
        site's instances exist, their contexts). With ``grad``, log q is differentiable
        in the network's weights (the draws themselves never are)."""
        with torch.set_grad_enabled(grad), on(self.model.device):
            obs = Observations.of(self.model.checked, observations, batch=num_traces)
            h = self._run(obs, num_traces, lambda st: ProposeSites(
                self.net, num_traces, obs, st, record=present), args)
        return (h.proposed, h.log_q, h) if present else (h.proposed, h.log_q)

    def log_q(self, observations, values, num_traces: int, subsample: Optional[int] = None,
              **args) -> torch.Tensor:
        """log q(values | observations) per trace (B,), differentiable, without Pyro
        (teacher forcing: the fast path of training). With ``subsample``, an unbiased
        estimate of it from at most that many instances of each site (the training
        loss of large plates, :meth:`SiteProposal._score`)."""
        with on(self.model.device):
            obs = Observations.of(self.model.checked, observations, batch=num_traces)
            values = {n: here(v) for n, v in values.items()}
            return self._run(obs, num_traces, lambda st: ProposeSites(
                self.net, num_traces, obs, st, values, subsample), args).log_q

    def forward(self, observations=None, num_traces: Optional[int] = None, **args):
        if observations is None:
            raise ValueError("the guide needs observations: guide(observations={...})")
        if not isinstance(observations, Observations):
            # called by Pyro code (pyro.infer.CSIS, Importance, ...) or by hand: let
            # Pyro's optimisers see the weights, under a name of this guide's own
            self.fit_statistics()
            pyro.module(self._pyro_name, self)
        with on(self.model.device):
            return self._forward(observations, num_traces, **args)

    def _forward(self, observations, num_traces, **args):
        obs = Observations.of(self.model.checked, observations, batch=num_traces)
        layout = Layout(self.model.plan, num_traces or 1, num_traces is not None)
        state = GuideState(self.net, self.net.embed(obs, layout.B), obs)
        rt = Runtime(self.model.checked, self.model.plan, layout.B,
                     GuideSites(self.net, layout, obs, state), self.model.args(args),
                     strict=False, body=self.model.plan.proposal_body)
        with layout.traces_plate():
            rt.run()
        return None
