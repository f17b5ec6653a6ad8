"""The proposal for one latent site (all its instances), as a Pyro distribution.

The network carries a recurrent state from site to site within one run of the guide
(:class:`GuideState`). ``sample`` draws the site instance by instance; ``log_prob`` of a
given value scores it by teacher forcing. Where the proposal is located comes from the
site's family (:mod:`.families`): for a statement, from its prior in this trace; for a
family produced in order, from the prior of each element given the elements before.
"""
from __future__ import annotations

from typing import Optional

import pyro.distributions as pdist
import torch
from torch.distributions import constraints

from .families import LatentInfo
from .network import ProposalNetwork


class GuideState:
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

    def moved_past(self, info: LatentInfo, hc, last_value_emb):
        self.hc = hc
        self.prev_val = last_value_emb
        self.prev_addr = torch.full((self.M,), info.addr, dtype=torch.long)
        self.prev_dist = torch.full((self.M,), info.dist, dtype=torch.long)

    def saved(self):
        return (self.hc, self.prev_val, self.prev_addr, self.prev_dist)

    def restore(self, saved):
        self.hc, self.prev_val, self.prev_addr, self.prev_dist = saved


class SiteProposal(pdist.TorchDistribution):
    """``prior`` is the site's distribution in the interpreter's layout (a statement's,
    or a :class:`~csis_dsl.backend.family.FamilyDist`)."""

    def __init__(self, net: ProposalNetwork, state: GuideState, info: LatentInfo, prior,
                 present: Optional[torch.Tensor], batch_shape, event_shape):
        self.net, self.state, self.info, self.prior = net, state, info, prior
        self.family = net.families[info.name]
        self.present = present            # (M, n) bool or None
        self._cache = None
        self._facts = None
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self.info.support

    # ------------------------------------------------------------ prior facts
    def facts(self, x=None, j=None):
        """The family's facts for every instance (M, n, ...), or for instance j
        (M, 1, ...). A family produced in order reads the elements of ``x`` before."""
        l, M = self.info, self.state.M
        if l.plate:
            if self._facts is None:
                self._facts = self.family.facts(self.prior, M, l.n)
            return self._facts if j is None else tuple(f[:, j:j + 1] for f in self._facts)
        width, base = (l.n, 0) if j is None else (1, j)
        out = [f.clone() for f in self.family.facts(None, M, width, base)]
        for a, b, d, active in self.prior.pieces_at(x.reshape((M,) + tuple(self.event_shape)), j):
            f = self.family.facts(d, M, b - a, a)
            for k, t in enumerate(f):
                at = slice(a - base, b - base)
                if active is None:
                    out[k][:, at] = t
                else:
                    m = active.reshape(active.shape + (1,) * (t.dim() - 2))
                    out[k][:, at] = torch.where(m, t, out[k][:, at])
        return tuple(out)

    def _head(self, h, facts, j0, m):
        """Proposal over instances j0 .. j0 + m - 1 (rows M * m) from hidden h (M * m, H)."""
        l = self.info
        a = self._aligned(j0, m)
        if a is not None:
            h = h + self.net.align_skip[l.name](a).reshape(h.shape)
        skip = self.state.skip
        if skip is not None:   # (M, H) -> one row per instance of h's (M * m, H)
            h = h + (skip if m == 1 else
                     skip.unsqueeze(1).expand(-1, m, -1).reshape(h.shape[0], -1))
        flat = tuple(f.reshape((-1,) + tuple(f.shape[2:])) for f in facts)
        return self.family(h, flat)

    def _value_emb(self, x, j0=0):
        """x: (M, m, de) -> (M, m, E) value embeddings."""
        return self.net.value_emb[self.info.name](self.family.features(x, j0))

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
            return self.net.core(inp, hc)
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
        q = self._head(out.reshape(M * n, -1), self.facts(x), 0, n)
        lq = q.log_prob(x.reshape(M * n, l.de)).reshape(M, n)
        return lq, hc, ve[:, -1]

    @torch.no_grad()
    def _sample(self):
        st, l = self.state, self.info
        M = st.M
        hc, prev_val = st.hc, st.prev_val
        prev_addr, prev_dist = st.prev_addr, st.prev_dist
        buf = torch.zeros(M, l.n, l.de)
        for j in range(l.n):
            inp = self._step_inputs(M, 1, prev_val.unsqueeze(1), prev_addr.unsqueeze(1),
                                    prev_dist.unsqueeze(1), j0=j)
            out, hc = self._run_core(inp, hc)
            q = self._head(out[:, 0], self.facts(buf, j), j, 1)
            x = q.sample().reshape(M, 1, l.de)
            buf[:, j] = x[:, 0]
            prev_val = self._value_emb(x, j)[:, 0]
            if self.present is not None:
                prev_val = prev_val * self.present[:, j:j + 1].to(prev_val.dtype)
            prev_addr = torch.full((M,), l.addr, dtype=torch.long)
            prev_dist = torch.full((M,), l.dist, dtype=torch.long)
        return buf

    def sample(self, sample_shape=torch.Size()):
        return self._sample().reshape(self.batch_shape + self.event_shape)

    def advance(self, value):
        """Score ``value`` and move the carried state past this site."""
        l = self.info
        x = value.reshape(self.state.M, l.n, l.de).to(torch.get_default_dtype())
        lq, hc, last = self._score(x)
        if self.present is not None:
            lq = torch.where(self.present, lq, torch.zeros_like(lq))
        self._cache = (value, lq)
        self.state.moved_past(l, hc, last)

    def log_prob(self, value):
        if self._cache is None or self._cache[0] is not value:
            saved = self.state.saved()
            self.advance(value)
            self.state.restore(saved)
        lq = self._cache[1]
        if self.info.plate and self.info.inst_shape:
            return lq.reshape(self.batch_shape)
        return lq.sum(-1).reshape(self.batch_shape)
