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
import pyro.distributions as pdist
import torch
import torch.nn as nn
from torch.distributions import biject_to, constraints

from ..backend.pyro_model import validate_observations
from ..backend.runtime import Runtime
from ..backend.sites import Layout, Reshaped
from .network import LatentInfo, NetworkConfig, ProposalNetwork


class _State:
    """The recurrent state carried from site to site within one guide run."""

    def __init__(self, net: ProposalNetwork, embedded):
        C = net.config
        obs_emb, self.skip, self.raws = embedded
        M = obs_emb.shape[0]
        self.M = M
        self.obs = obs_emb
        self.hc = None
        self.prev_val = torch.zeros(M, C.value_embedding)
        self.prev_addr = torch.zeros(M, dtype=torch.long)
        self.prev_dist = torch.zeros(M, dtype=torch.long)


class SiteProposal(pdist.TorchDistribution):
    """The proposal for one latent site (all its instances). ``log_prob`` of a value
    scores it by teacher forcing; the state the guide carries on is the one reached by
    the value actually drawn or given."""

    def __init__(self, net: ProposalNetwork, state: _State, info: LatentInfo, prior,
                 present: Optional[torch.Tensor], batch_shape, event_shape):
        self.net, self.state, self.info, self.prior = net, state, info, prior
        self.present = present            # (M, n) bool or None
        self._cache = None
        self._prior_info = None
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self.info.support

    # ------------------------------------------------------------ prior facts
    def prior_info(self):
        if self._prior_info is not None:
            return self._prior_info
        l, M = self.info, self.state.M
        net = self.net
        mean = getattr(net, f"lat_mean_{l.name}").unsqueeze(0).expand(M, l.n, -1)
        std = getattr(net, f"lat_std_{l.name}").unsqueeze(0).expand(M, l.n, -1)
        d = self.prior if l.plate else None
        if l.family == "continuous":
            info = (mean.detach(), std.detach())
            if d is not None and self._moments_usable():
                try:
                    info = self._located(d.mean.reshape(M, l.n, l.de),
                                         d.stddev.reshape(M, l.n, l.de), mean, std)
                except (NotImplementedError, AttributeError, RuntimeError):
                    pass
        elif l.family in ("finite", "boolean"):
            lp = torch.zeros(M, l.n, l.de, l.k)
            if d is not None:
                try:
                    ks = [d.log_prob(torch.full(d.batch_shape, float(k)).to(
                        torch.long if isinstance(d, torch.distributions.Categorical) else
                        torch.get_default_dtype())) for k in range(l.k)]
                    lp = torch.stack(ks, -1).reshape(M, l.n, l.de, l.k)
                    if hasattr(d, "total_count"):
                        n = d.total_count.reshape(M, l.n, l.de, 1)
                        lp = torch.where(torch.arange(l.k) <= n, lp,
                                         torch.full_like(lp, -float("inf")))
                    lp = torch.nan_to_num(lp, nan=-float("inf"))
                except (NotImplementedError, RuntimeError, ValueError):
                    lp = torch.zeros(M, l.n, l.de, l.k)
            info = (lp.detach(),)
        else:
            m, s = mean, std
            if d is not None:
                try:
                    m = d.mean.reshape(M, l.n, l.de)
                    s = d.stddev.reshape(M, l.n, l.de)
                except (NotImplementedError, AttributeError, RuntimeError):
                    pass
            info = (m.detach(), s.clamp(min=0.5).detach())
        self._prior_info = info
        return info

    def _moments_usable(self):
        """Whether the prior's mean and standard deviation can locate the proposal: a
        continuous latent on the real line or (0, inf), one number per element."""
        l = self.info
        return (l.family == "continuous" and l.udim == l.de
                and l.support in (constraints.real, constraints.positive))

    def _located(self, m, s, mean, std):
        """Prior moments -> (loc, scale) in unconstrained space (log-normal moment
        matching on (0, inf)); the marginal statistics where the moments are unusable."""
        if self.info.support is constraints.positive:
            v = torch.log1p((s / m) ** 2)
            m, s = torch.log(m) - 0.5 * v, v.sqrt()
        ok = torch.isfinite(m) & torch.isfinite(s) & (s > 0)
        return (torch.where(ok, m, mean).detach(), torch.where(ok, s, std).detach())

    # ------------------------------------------------ sequential families
    def _follows_prior(self):
        """A recursive or piecewise family whose elements are located relative to their
        prior *conditional* (given the elements before), e.g. h[t] ~ Normal(h[t-1], s):
        the head then learns the correction the observations call for, not h[t-1]."""
        return (not self.info.plate and self._moments_usable()
                and hasattr(self.prior, "element_moments"))

    def _family_info(self, x, j=None):
        """(loc, scale) of every element given the elements before, each (M, n, de); or
        of element j only, each (M, de)."""
        l, M = self.info, self.state.M
        m, s = self.prior.element_moments(x.reshape((M,) + tuple(self.prior.event_shape)), j)
        at = slice(None) if j is None else slice(j, j + 1)
        mean = getattr(self.net, f"lat_mean_{l.name}")[at]
        std = getattr(self.net, f"lat_std_{l.name}")[at]
        width = l.n if j is None else 1
        loc, scale = self._located(m.reshape(M, width, l.de), s.reshape(M, width, l.de),
                                   mean, std)
        return (loc, scale) if j is None else (loc[:, 0], scale[:, 0])

    def _head(self, h, j=None, info=None):
        """Proposal over instance j (or all instances, flattened, when j is None); ``info``
        overrides the prior facts (already selected for j)."""
        l = self.info
        if info is None:
            info = self.prior_info()
            if j is not None:
                info = tuple(x[:, j] for x in info)
            else:
                info = tuple(x.reshape((-1,) + x.shape[2:]) for x in info)
        head = self.net.heads[l.name]
        a = self._aligned(0, l.n) if j is None else self._aligned(j, 1)
        if a is not None:
            h = h + self.net.align_skip[l.name](a).reshape(h.shape)
        skip = self.state.skip
        if skip is not None:   # (M, H) -> one row per instance of h's (M * m, H)
            m = h.shape[0] // skip.shape[0]
            h = h + (skip if m == 1 else
                     skip.unsqueeze(1).expand(-1, m, -1).reshape(h.shape[0], -1))
        if l.family == "continuous":
            return head(h, info[0], info[1], l.support)
        if l.family in ("finite", "boolean"):
            return head(h, info[0])
        return head(h, info[0], info[1])

    def _value_emb(self, x, j0=0):
        """x: (M, m, de) -> (M, m, E) value embeddings (zero where absent)."""
        l = self.info
        f = self.net.features(l, x)
        if l.family in ("continuous", "count"):
            mean = getattr(self.net, f"lat_mean_{l.name}")[j0:j0 + x.shape[1]]
            std = getattr(self.net, f"lat_std_{l.name}")[j0:j0 + x.shape[1]]
            f = (f - mean) / std
        return self.net.value_emb[l.name](f)

    def _aligned(self, j0, m):
        """The standardised observations aligned with instances j0..j0+m-1:
        (M, m, width), or None when this latent has none."""
        l, st = self.info, self.state
        names = self.net.aligned.get(l.name)
        if not names:
            return None
        parts = []
        for o in names:
            x = st.raws[o]
            x = x.reshape(x.shape[0], l.n, -1)[:, j0:j0 + m]
            parts.append(x.expand(st.M, m, x.shape[-1]))
        return torch.cat(parts, -1)

    def _step_inputs(self, M, m, prev_val, prev_addr, prev_dist, j0=0):
        """Inputs for instances j0..j0+m-1: (M, m, step_in)."""
        net, l, C = self.net, self.info, self.net.config
        obs = self.state.obs.unsqueeze(1).expand(M, m, -1)
        a = self._aligned(j0, m)
        if a is not None:
            obs = obs + net.align_in[l.name](a)
        # the current site's address and type are the same for every trace and instance:
        # one embedding row, broadcast (cheaper than a lookup per instance, both ways)
        cur_a = net.addr_emb.weight[l.addr].expand(M, m, -1)
        cur_d = net.dist_emb.weight[l.dist].expand(M, m, -1)
        pos = torch.arange(j0, j0 + m, dtype=torch.get_default_dtype()) / max(l.n - 1, 1)
        pos = pos.reshape(1, m, 1).expand(M, m, 1)
        pres = torch.ones(M, m, 1) if self.present is None else \
            self.present[:, j0:j0 + m].unsqueeze(-1).to(torch.get_default_dtype())
        parts = [obs, net.addr_emb(prev_addr), cur_a, net.dist_emb(prev_dist), cur_d, pos, pres]
        if C.architecture == "lstm":
            parts.insert(1, prev_val)
        return torch.cat(parts, -1)

    def _run_core(self, inp, hc):
        if self.net.config.architecture == "lstm":
            if inp.shape[1] == 1:
                return self.net.lstm_step(inp, hc)
            out, hc = self.net.core(inp, hc)
            return out, hc
        return self.net.core(inp), hc

    # ------------------------------------------------------------ sampling/scoring
    def _score(self, x):
        """Teacher forcing: x (M, n, de) -> per-instance log q (M, n), end state."""
        st, l = self.state, self.info
        M, n = x.shape[0], l.n
        ve = self._value_emb(x)
        if self.present is not None:
            ve = ve * self.present.unsqueeze(-1).to(ve.dtype)
        prev_val = torch.cat([st.prev_val.unsqueeze(1), ve[:, :-1]], 1)
        prev_addr = torch.cat([st.prev_addr.unsqueeze(1),
                               torch.full((M, n - 1), l.addr, dtype=torch.long)], 1)
        prev_dist = torch.cat([st.prev_dist.unsqueeze(1),
                               torch.full((M, n - 1), l.dist, dtype=torch.long)], 1)
        inp = self._step_inputs(M, n, prev_val, prev_addr, prev_dist)
        out, hc = self._run_core(inp, st.hc)
        info = None
        if self._follows_prior():
            info = tuple(t.reshape(M * n, l.de) for t in self._family_info(x))
        q = self._head(out.reshape(M * n, -1), info=info)
        lq = q.log_prob(x.reshape(M * n, l.de)).reshape(M, n)
        return lq, hc, ve[:, -1]

    @torch.no_grad()
    def _sample(self):
        st, l = self.state, self.info
        M = st.M
        hc, prev_val = st.hc, st.prev_val
        prev_addr, prev_dist = st.prev_addr, st.prev_dist
        xs = []
        follows = self._follows_prior()
        buf = torch.zeros(M, l.n, l.de) if follows else None
        for j in range(l.n):
            inp = self._step_inputs(M, 1, prev_val.unsqueeze(1), prev_addr.unsqueeze(1),
                                    prev_dist.unsqueeze(1), j0=j)
            out, hc = self._run_core(inp, hc)
            q = self._head(out[:, 0], j, self._family_info(buf, j) if follows else None)
            x = q.sample().reshape(M, 1, l.de)
            if follows:
                buf[:, j] = x[:, 0]
            xs.append(x)
            prev_val = self._value_emb(x, j)[:, 0]
            if self.present is not None:
                prev_val = prev_val * self.present[:, j:j + 1].to(prev_val.dtype)
            prev_addr = torch.full((M,), l.addr, dtype=torch.long)
            prev_dist = torch.full((M,), l.dist, dtype=torch.long)
        x = torch.cat(xs, 1)
        return x

    def sample(self, sample_shape=torch.Size()):
        x = self._sample()
        l = self.info
        if l.family != "continuous":
            x = x.round().to(torch.get_default_dtype())
        return x.reshape(self.batch_shape + self.event_shape)

    def advance(self, value):
        """Score ``value`` and move the carried state past this site."""
        l = self.info
        x = value.reshape(self.state.M, l.n, l.de)
        lq, hc, last = self._score(x)
        if self.present is not None:
            lq = torch.where(self.present, lq, torch.zeros_like(lq))
        self._cache = (value, lq)
        st = self.state
        st.hc = hc
        st.prev_val = last
        st.prev_addr = torch.full((st.M,), l.addr, dtype=torch.long)
        st.prev_dist = torch.full((st.M,), l.dist, dtype=torch.long)

    def log_prob(self, value):
        if self._cache is None or self._cache[0] is not value:
            saved = (self.state.hc, self.state.prev_val, self.state.prev_addr,
                     self.state.prev_dist)
            self.advance(value)
            (self.state.hc, self.state.prev_val, self.state.prev_addr,
             self.state.prev_dist) = saved
        lq = self._cache[1]
        if self.info.plate and self.info.inst_shape:
            return lq.reshape(self.batch_shape)
        return lq.sum(-1).reshape(self.batch_shape)


class GuideSites:
    """Site handler of the guide: latents from proposals, observed from the data."""

    def __init__(self, net, layout: Layout, obs, state: _State):
        self.net, self.layout, self.obs, self.state = net, layout, obs, state

    def _observed(self, v, shape):
        x = self.obs[v.name]
        return x.expand((self.layout.B,) + tuple(x.shape[1:])).reshape(shape)

    def sample(self, rt, v, s, d, active, k):
        L = self.layout
        loops = rt.plans[id(s)].loops if k else []
        runtime_shape = (L.B,) + tuple(l.size for l in loops) + tuple(v.elem_shape)
        if v.kind == "observed":
            return self._observed(v, runtime_shape)
        info = self.net.by_name[v.name]
        present = None if active is None else \
            active.expand((L.B,) + tuple(active.shape[1:])).reshape(L.B, -1)
        batch = L.batch_shape(loops)
        q = SiteProposal(self.net, self.state, info, d, present, batch, tuple(v.elem_shape))
        with L.plates(loops):
            x = pyro.sample(v.name, q)
        q.advance(x)
        return x.reshape(runtime_shape)

    def family(self, rt, v, d):
        L = self.layout
        shape = (L.B,) + tuple(v.type.shape)
        if v.kind == "observed":
            x = self._observed(v, shape)
            d.log_prob(x)
            return x
        info = self.net.by_name[v.name]
        batch = L.batch_shape([]) if not L.batched else (L.B,) + (1,) * L.D
        q = SiteProposal(self.net, self.state, info, d, None, batch, tuple(v.type.shape))
        x = pyro.sample(v.name, q)
        q.advance(x)
        x = x.reshape(shape)
        d.log_prob(x)   # existence of the elements, for what reads them later
        return x


_GUIDE_NUMBERS = itertools.count()


class Guide(nn.Module):
    """The generated inference network, usable as a Pyro guide."""

    def __init__(self, compiled, config: Optional[NetworkConfig] = None,
                 obs_embeddings: Optional[dict] = None):
        super().__init__()
        self.compiled = compiled
        self.config = config or NetworkConfig()
        self.net = ProposalNetwork(compiled, self.config, obs_embeddings)
        # its own name in Pyro's param store, never reused in this process (an id() could
        # be, and pyro.module would then load another guide's stale weights)
        self._pyro_name = f"csis_dsl.{compiled.name}.{next(_GUIDE_NUMBERS)}"

    def forward(self, observations=None, num_traces: Optional[int] = None, **args):
        c = self.compiled
        if observations is None:
            raise ValueError("the guide needs observations: guide(observations={...})")
        if getattr(observations, "_validated", False):   # called by csis_dsl's engine
            obs = observations
        else:   # called by Pyro code (pyro.infer.CSIS, Importance, ...) or by hand
            obs = validate_observations(c.checked, observations, batch=num_traces)
            if c._guide is self:
                c._fit_statistics()
            # let Pyro's optimisers see the weights, under a name of this guide's own
            pyro.module(self._pyro_name, self)
        batched = num_traces is not None
        B = num_traces or 1
        layout = Layout(c, B, batched)
        state = _State(self.net, self.net.embed_observations(obs, B))
        rt = Runtime(c, B, GuideSites(self.net, layout, obs, state),
                     c.resolve_runtime_args(args))
        with layout.traces_plate():
            rt.run()
        return None
