"""Continuous supports: a mixture of K Normals in unconstrained space, pushed through
``biject_to(support)`` so the proposal's support is exactly the prior's (real line,
(0, inf), [a, b], one-sided truncations, the simplex by stick breaking). Components are
located and scaled relative to the prior's own location and scale. Components are
diagonal, except for MultivariateNormal priors, whose components get a full
covariance (a learned Cholesky factor), so correlated posteriors are proposed jointly."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import (Categorical, Independent, MixtureSameFamily,
                                 MultivariateNormal, Normal, TransformedDistribution,
                                 biject_to, constraints)


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

    def forward(self, h, loc_u, scale_u, support):
        """h: (M, H); loc_u, scale_u: (M, udim) -> a distribution over (M, dim)."""
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
        base = MixtureSameFamily(Categorical(logits=logits), comp, validate_args=False)
        t = transform_for(support)
        return UnconstrainedMixture(base, t, self.dim)


def transform_for(support):
    return biject_to(support)


class UnconstrainedMixture:
    """The pushed-forward mixture; values are flat (M, dim)."""

    def __init__(self, base, transform, dim):
        self.base, self.t, self.dim = base, transform, dim
        self.d = TransformedDistribution(base, [transform], validate_args=False) \
            if transform.event_dim else \
            TransformedDistribution(base, [IndependentTransform(transform)],
                                    validate_args=False)

    def sample(self):
        with torch.no_grad():
            return self.d.sample()

    def log_prob(self, x):
        x = clamp_to_support(x, self.t)
        return self.d.log_prob(x)


def IndependentTransform(t):
    from torch.distributions.transforms import IndependentTransform as IT
    return IT(t, 1)


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
