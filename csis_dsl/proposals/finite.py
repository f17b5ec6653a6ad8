"""Finite supports (Bernoulli, Categorical, Binomial): a Categorical over exactly the
prior's support, its logits the prior's log-probabilities plus a learned correction."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributions import Categorical, Independent


class CategoricalHead(nn.Module):
    def __init__(self, hidden: int, dim: int, k: int):
        super().__init__()
        self.dim, self.k = dim, k
        self.out = nn.Linear(hidden, dim * k)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            self.out.bias.zero_()

    def forward(self, h, prior_logp):
        """prior_logp: (M, dim, k), -inf outside the prior's support."""
        logits = prior_logp + self.out(h).view(h.shape[0], self.dim, self.k)
        logits = torch.where(torch.isfinite(prior_logp), logits,
                             torch.full_like(logits, -float("inf")))
        return Independent(Categorical(logits=logits, validate_args=False), 1)
