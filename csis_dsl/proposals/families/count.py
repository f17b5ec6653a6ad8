"""Unbounded counts (Poisson, Geometric, NegativeBinomial): a discretised mixture of
logistics on {0, 1, 2, ...}: P(k) = F(k + 1/2) - F(k - 1/2) with all the mass below 1/2
given to 0. An exact discrete distribution with unbounded support (no relaxation),
located at the prior's mean and scaled by its standard deviation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...catalogue.distributions import Categorical
from .base import (_log1m, affine_match, linear, moments, OutputLayer, Proposal,
                   ProposalFamily)


class DiscretizedLogisticMixture(Proposal):
    def __init__(self, logits, loc, scale):
        self.logits, self.loc, self.scale = logits, loc, scale   # (rows, dim, K)

    def sample(self):
        with torch.no_grad():
            comp = Categorical(logits=self.logits, validate_args=False).sample()
            loc = self.loc.gather(-1, comp.unsqueeze(-1)).squeeze(-1)
            scale = self.scale.gather(-1, comp.unsqueeze(-1)).squeeze(-1)
            u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
            x = loc + scale * (torch.log(u) - torch.log1p(-u))
            return x.round().clamp(min=0)

    def log_prob(self, k):
        k = k.unsqueeze(-1).to(self.loc.dtype)
        inv = 1.0 / self.scale
        log_cdf_hi = F.logsigmoid((k + 0.5 - self.loc) * inv)
        log_cdf_lo = F.logsigmoid((k - 0.5 - self.loc) * inv)
        # log(sigmoid(hi) - sigmoid(lo)), stable: log_cdf_hi + log1p(-exp(lo_cdf - hi_cdf))
        diff = log_cdf_hi + torch.log1p(-torch.exp(torch.clamp(log_cdf_lo - log_cdf_hi,
                                                               max=-1e-6)))
        lp = torch.where(k <= 0, log_cdf_hi, diff)
        lp = torch.logsumexp(lp + torch.log_softmax(self.logits, -1), -1)
        return lp.sum(-1)


class CountProposal(ProposalFamily):
    name = "count"

    def __init__(self, info, config):
        super().__init__(info, config)
        k, de = config.count_components, info.de
        self.k = k
        b = torch.zeros(de, k, 3)
        b[..., 1] = torch.linspace(-1.0, 1.0, k) if k > 1 else 0.0
        self.out = OutputLayer(config.hidden, de * k * 3, b)
        self.register_buffer("mean", torch.zeros(info.n, de))
        self.register_buffer("std", torch.ones(info.n, de))

    @property
    def feat_dim(self):
        return self.info.de

    @torch.no_grad()
    def fit(self, x):
        x = x.to(torch.get_default_dtype())
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0).clamp(min=1e-3))

    def facts(self, d, M, width, j0=0):
        mom = moments(d, M, width, self.info.de)
        m, s = mom if mom is not None else \
            (self.stats("mean", M, width, j0), self.stats("std", M, width, j0))
        return m.detach(), s.clamp(min=0.5).detach()

    def features(self, x, j0=0):
        m = x.shape[1]
        f = torch.log1p(x.to(torch.get_default_dtype()).clamp(min=0))
        return (f - self.mean[j0:j0 + m]) / self.std[j0:j0 + m]

    def adapter_shapes(self, context: int = 0):
        return {"shift": (self.info.de,), "log_factor": (self.info.de,)}

    @torch.no_grad()
    def adapt_step(self, x, w, params, rate, ctx=None, present=None):
        affine_match(x.to(w.dtype), w, params["shift"], params["log_factor"], rate,
                     present=present)

    def forward(self, h, facts, adapt=None, defensive=0.0):
        mean, std = facts
        raw = linear(self.out, h).view(h.shape[0], self.info.de, self.k, 3)
        loc = mean.unsqueeze(-1) + std.unsqueeze(-1) * raw[..., 1]
        scale = (std.unsqueeze(-1) * 0.6) * (F.softplus(raw[..., 2]) + 1e-2)
        if adapt is not None:       # a refinement's affine map of the counts' scale
            factor = torch.exp(adapt["log_factor"]).unsqueeze(-1)
            loc = loc * factor + adapt["shift"].unsqueeze(-1)
            scale = scale * factor
        logits = raw[..., 0]
        if defensive:       # (1 - defensive) q + defensive q with twice the scales
            logits = torch.cat([torch.log_softmax(logits, -1) + _log1m(defensive),
                                torch.log_softmax(logits, -1) + math.log(defensive)], -1)
            loc, scale = torch.cat([loc, loc], -1), torch.cat([scale, 2 * scale], -1)
        return DiscretizedLogisticMixture(logits, loc, scale)


FAMILY = CountProposal
