"""Continuous supports: a mixture of K diagonal Normals in unconstrained space, pushed
through ``biject_to(support)`` so the proposal's support is exactly the prior's (real
line, (0, inf), [a, b], one-sided truncations, the simplex by stick breaking).
Components are located and scaled relative to the prior's own location and scale."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import (Categorical, Independent, MixtureSameFamily, Normal,
                                 TransformedDistribution, biject_to, constraints)


class MixtureHead(nn.Module):
    def __init__(self, hidden: int, dim: int, unconstrained_dim: int, k: int):
        super().__init__()
        self.dim, self.udim, self.k = dim, unconstrained_dim, k
        self.out = nn.Linear(hidden, k * (1 + 2 * unconstrained_dim))
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            b = self.out.bias.view(k, 1 + 2 * unconstrained_dim)
            b.zero_()
            b[:, 1:1 + unconstrained_dim] = torch.linspace(-1.0, 1.0, k).unsqueeze(-1) \
                if k > 1 else 0.0
            b[:, 1 + unconstrained_dim:] = -0.5

    def forward(self, h, loc_u, scale_u, support):
        """h: (M, H); loc_u, scale_u: (M, udim) -> a distribution over (M, dim)."""
        raw = self.out(h).view(h.shape[0], self.k, 1 + 2 * self.udim)
        logits = raw[..., 0]
        loc = loc_u.unsqueeze(1) + scale_u.unsqueeze(1) * raw[..., 1:1 + self.udim]
        scale = scale_u.unsqueeze(1) * (F.softplus(raw[..., 1 + self.udim:]) + 1e-3)
        base = MixtureSameFamily(Categorical(logits=logits),
                                 Independent(Normal(loc, scale), 1), validate_args=False)
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
