"""Continuous supports: a mixture of K Normals in unconstrained space, pushed through
``biject_to(support)`` so the proposal's support is exactly the prior's (real line,
(0, inf), [a, b], one-sided truncations, the simplex by stick breaking). Components are
located and scaled relative to the prior's own location and scale (in a family
produced in order, the prior given the elements before). Components are diagonal,
except for MultivariateNormal priors, whose components get a full covariance (a
learned Cholesky factor), so correlated posteriors are proposed jointly."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import (Categorical, Independent, MixtureSameFamily,
                                 MultivariateNormal, Normal, TransformedDistribution,
                                 biject_to, constraints)
from torch.distributions.transforms import IndependentTransform

from .base import Proposal, ProposalFamily, moments


class MixtureHead(nn.Module):
    def __init__(self, hidden: int, dim: int, unconstrained_dim: int, k: int,
                 full_covariance: bool = False):
        super().__init__()
        self.dim, self.udim, self.k = dim, unconstrained_dim, k
        self.full = full_covariance and unconstrained_dim > 1
        self.n_tril = unconstrained_dim * (unconstrained_dim - 1) // 2 if self.full else 0
        self.per = 1 + 2 * unconstrained_dim + self.n_tril
        self.out = nn.Linear(hidden, k * self.per)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            b = self.out.bias.view(k, self.per)
            b.zero_()
            b[:, 1:1 + unconstrained_dim] = torch.linspace(-1.0, 1.0, k).unsqueeze(-1) \
                if k > 1 else 0.0
            b[:, 1 + unconstrained_dim:1 + 2 * unconstrained_dim] = -0.5
        if self.full:
            self.register_buffer("tril_idx", torch.tril_indices(unconstrained_dim,
                                                                unconstrained_dim, -1))

    def forward(self, h, loc_u, scale_u):
        """h: (M, H); loc_u, scale_u: (M, udim) -> a mixture over (M, udim)."""
        u = self.udim
        raw = self.out(h).view(h.shape[0], self.k, self.per)
        logits = raw[..., 0]
        loc = loc_u.unsqueeze(1) + scale_u.unsqueeze(1) * raw[..., 1:1 + u]
        diag = F.softplus(raw[..., 1 + u:1 + 2 * u]) + 1e-3
        if self.full:
            # L = diag(prior scale) @ (diag(softplus) + strictly lower part)
            tril = torch.diag_embed(diag)
            tril[..., self.tril_idx[0], self.tril_idx[1]] = raw[..., 1 + 2 * u:]
            comp = MultivariateNormal(loc, scale_tril=scale_u.unsqueeze(1).unsqueeze(-1) * tril,
                                      validate_args=False)
        else:
            comp = Independent(Normal(loc, scale_u.unsqueeze(1) * diag), 1)
        return MixtureSameFamily(Categorical(logits=logits), comp, validate_args=False)


class PushedMixture(Proposal):
    """The unconstrained mixture pushed through the support's bijection; values are
    flat (rows, dim)."""

    def __init__(self, base, transform):
        self.t = transform
        t = transform if transform.event_dim else IndependentTransform(transform, 1)
        self.d = TransformedDistribution(base, [t], validate_args=False)

    def sample(self):
        with torch.no_grad():
            return self.d.sample()

    def log_prob(self, x):
        return self.d.log_prob(clamp_to_support(x, self.t))


def clamp_to_support(x, t):
    """Keep float32 boundary values (a Beta draw of exactly 1.0) inside the open support."""
    dom = t.codomain
    tiny = 1e-6
    if hasattr(dom, "lower_bound") and hasattr(dom, "upper_bound"):
        lo, hi = dom.lower_bound, dom.upper_bound
        span = (torch.as_tensor(hi) - torch.as_tensor(lo)) * tiny
        return torch.minimum(torch.maximum(x, lo + span), hi - span)
    if hasattr(dom, "lower_bound"):
        return torch.maximum(x, torch.as_tensor(dom.lower_bound) + 1e-30)
    if hasattr(dom, "upper_bound"):
        return torch.minimum(x, torch.as_tensor(dom.upper_bound) - 1e-30)
    if dom is constraints.simplex:
        x = x.clamp(min=1e-30)
        return x / x.sum(-1, keepdim=True)
    return x


class ContinuousProposal(ProposalFamily):
    name = "continuous"

    def __init__(self, info, config):
        super().__init__(info, config)
        self.transform = biject_to(info.support)
        self.udim = info.de - 1 if info.support is constraints.simplex else info.de
        self.head = MixtureHead(config.hidden, info.de, self.udim, config.mixture_components,
                                full_covariance=info.dist_name == "MultivariateNormal")
        self.register_buffer("mean", torch.zeros(info.n, self.udim))
        self.register_buffer("std", torch.ones(info.n, self.udim))
        # the prior's moments locate the proposal where they are one number per
        # element on the real line or (0, inf) (log-normal moment matching there)
        self.moments_usable = self.udim == info.de and \
            info.support in (constraints.real, constraints.positive)

    @property
    def feat_dim(self):
        return self.udim

    def unconstrained(self, x):
        """x: (..., de) -> (..., udim) in unconstrained space."""
        u = self.transform.inv(clamp_to_support(x, self.transform))
        return u.reshape(x.shape[:-1] + (self.udim,))

    @torch.no_grad()
    def fit(self, x):
        u = self.unconstrained(x)
        m, s = u.mean(0), u.std(0).clamp(min=1e-3)
        ok = torch.isfinite(m) & torch.isfinite(s)
        self.mean.copy_(torch.where(ok, m, torch.zeros_like(m)))
        self.std.copy_(torch.where(ok, s, torch.ones_like(s)))

    def facts(self, d, M, width, j0=0):
        mean, std = self.stats("mean", M, width, j0), self.stats("std", M, width, j0)
        mom = moments(d, M, width, self.info.de) if self.moments_usable else None
        if mom is None:
            return mean.detach(), std.detach()
        m, s = mom
        if self.info.support is constraints.positive:
            v = torch.log1p((s / m) ** 2)
            m, s = torch.log(m) - 0.5 * v, v.sqrt()
        ok = torch.isfinite(m) & torch.isfinite(s) & (s > 0)
        return torch.where(ok, m, mean).detach(), torch.where(ok, s, std).detach()

    def features(self, x, j0=0):
        u = torch.nan_to_num(self.unconstrained(x), 0.0, 10.0, -10.0)
        m = x.shape[1]
        return (u - self.mean[j0:j0 + m]) / self.std[j0:j0 + m]

    def forward(self, h, facts):
        loc, scale = facts
        return PushedMixture(self.head(h, loc, scale), self.transform)


FAMILY = ContinuousProposal
