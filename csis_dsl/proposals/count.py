"""Unbounded counts (Poisson, Geometric, NegativeBinomial): a discretised mixture of
logistics on {0, 1, 2, ...}: P(k) = F(k + 1/2) - F(k - 1/2) with all the mass below 1/2
given to 0. An exact discrete distribution with unbounded support (no relaxation)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DiscretizedLogisticMixture:
    def __init__(self, logits, loc, scale):
        self.logits, self.loc, self.scale = logits, loc, scale   # (M, dim, K)

    def sample(self):
        with torch.no_grad():
            comp = torch.distributions.Categorical(logits=self.logits).sample()
            loc = self.loc.gather(-1, comp.unsqueeze(-1)).squeeze(-1)
            scale = self.scale.gather(-1, comp.unsqueeze(-1)).squeeze(-1)
            u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
            x = loc + scale * (torch.log(u) - torch.log1p(-u))
            return x.round().clamp(min=0)

    def log_prob(self, k):
        k = k.unsqueeze(-1).to(self.loc.dtype)
        inv = 1.0 / self.scale
        hi = (k + 0.5 - self.loc) * inv
        lo = (k - 0.5 - self.loc) * inv
        log_cdf_hi = F.logsigmoid(hi)
        log_cdf_lo = F.logsigmoid(lo)
        # log(sigmoid(hi) - sigmoid(lo)), stable: log_cdf_hi + log1p(-exp(lo_cdf - hi_cdf))
        diff = log_cdf_hi + torch.log1p(-torch.exp(torch.clamp(log_cdf_lo - log_cdf_hi,
                                                               max=-1e-6)))
        lp = torch.where(k <= 0, log_cdf_hi, diff)
        lp = torch.logsumexp(lp + torch.log_softmax(self.logits, -1), -1)
        return lp.sum(-1)


class CountHead(nn.Module):
    def __init__(self, hidden: int, dim: int, k: int):
        super().__init__()
        self.dim, self.k = dim, k
        self.out = nn.Linear(hidden, dim * k * 3)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            b = self.out.bias.view(dim, k, 3)
            b.zero_()
            b[..., 1] = torch.linspace(-1.0, 1.0, k) if k > 1 else 0.0

    def forward(self, h, mean, std):
        """mean, std: (M, dim) of the prior (or of prior simulations)."""
        raw = self.out(h).view(h.shape[0], self.dim, self.k, 3)
        loc = mean.unsqueeze(-1) + std.unsqueeze(-1) * raw[..., 1]
        scale = (std.unsqueeze(-1) * 0.6) * (F.softplus(raw[..., 2]) + 1e-2)
        return DiscretizedLogisticMixture(raw[..., 0], loc, scale)
