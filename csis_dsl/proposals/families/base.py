"""What every proposal family provides, and the static facts it is built from.

A family is an ``nn.Module`` per latent variable. The network gives it a hidden vector
per instance; the family turns it into a proposal distribution located relative to the
prior ("facts": the prior's location and scale, or its log-probabilities, in this trace),
exactly on the prior's support. Values are flat per instance: ``(rows, de)`` where
``de`` is the number of elements of one instance.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn

from ...catalogue.distributions import DISTRIBUTIONS
from ...frontend.checked import Var


class LatentInfo:
    """Static facts about one latent variable."""

    def __init__(self, addr: int, v: Var):
        self.name = v.name
        self.addr = addr
        self.dist_name = v.dist
        self.dist = sorted(DISTRIBUTIONS).index(v.dist) + 1   # id for an embedding
        self.family = DISTRIBUTIONS[v.dist].proposal
        self.plate = not v.is_family   # False: a family whose instances are its elements
        self.inst_shape = tuple(v.family_dims)
        self.elem_shape = tuple(v.elem_shape)
        self.n = int(math.prod(self.inst_shape))
        self.de = int(math.prod(self.elem_shape))
        self.support = v.support


class ProposalFamily(nn.Module):
    name = ""

    def __init__(self, info: LatentInfo, config):
        super().__init__()
        self.info = info

    @property
    def feat_dim(self) -> int:
        """The width of one instance's value features (what the next site reads)."""
        raise NotImplementedError

    def fit(self, x: torch.Tensor):
        """Statistics of prior simulations, x: (S, n, de)."""

    def facts(self, d, M: int, width: int, j0: int = 0) -> Tuple[torch.Tensor, ...]:
        """Where to place the proposal of instances j0 .. j0 + width - 1: tensors
        (M, width, ...) from the prior ``d`` (batch (M, width, *element batch)), or from
        the statistics when ``d`` is None."""
        raise NotImplementedError

    def features(self, x: torch.Tensor, j0: int = 0) -> torch.Tensor:
        """x: (M, m, de) values of instances j0.. -> (M, m, feat_dim), standardised."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, facts) -> "Proposal":
        """h: (rows, hidden); facts flattened to rows -> the proposal over (rows, de)."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared helpers
    def stats(self, name: str, M: int, width: int, j0: int):
        s = getattr(self, name)[j0:j0 + width]
        return s.unsqueeze(0).expand((M,) + tuple(s.shape))


class Proposal:
    """A proposal over flat values (rows, de): ``sample()`` and ``log_prob(x)`` -> (rows,)."""

    def sample(self) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def moments(d, M: int, width: int, de: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The prior's mean and standard deviation reshaped to (M, width, de), or None where
    the distribution has no closed form."""
    if d is None:
        return None
    try:
        return d.mean.reshape(M, width, de), d.stddev.reshape(M, width, de)
    except (NotImplementedError, AttributeError, RuntimeError):
        return None
