"""Distributions the interpreter builds around the catalogue's: truncation (inverse-CDF
sampling, renormalised density), one site defined in exclusive branches (``Switch``),
a batch reshape for the Pyro layout (``Reshaped``), and sorted iid draws for the
ordered types (``OrderStatistics``)."""
from __future__ import annotations

import math

import pyro.distributions as pdist
import torch
from pyro.distributions import TorchDistribution, constraints


def _cdf(base, x):
    """The CDF, with x clamped into the support first (Gamma's CDF is NaN below 0)."""
    lb = getattr(base.support, "lower_bound", None)
    x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    if lb is not None:
        x = torch.clamp(x, min=float(lb) if not torch.is_tensor(lb) else lb)
    return base.cdf(x)


def _icdf_by_bisection(base, p, low, high, iters=60):
    """Inverse CDF for distributions whose CDF torch provides but whose inverse it does
    not (Gamma, InverseGamma, Chi2): vectorised bracketing, then bisection."""
    p = p.detach()
    lb = getattr(base.support, "lower_bound", 0.0)
    lo = torch.as_tensor(low if low is not None else lb, dtype=p.dtype).expand(p.shape).clone()
    if high is not None:
        hi = torch.as_tensor(high, dtype=p.dtype).expand(p.shape).clone()
    else:
        hi = lo.abs() + 1.0
        for _ in range(200):        # double until the bracket holds p
            short = _cdf(base, hi) < p
            if not bool(short.any()):
                break
            hi = torch.where(short, hi * 2.0, hi)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = _cdf(base, mid) < p
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


class Truncated(pdist.TorchDistribution):
    """``base`` restricted to [low, high] (either may be None), by inverse-CDF sampling
    (torch's inverse CDF where it has one, bisection on the CDF otherwise)."""
    has_rsample = True

    def __init__(self, base, low=None, high=None, validate_args=False):
        self.base = base
        self.low, self.high = low, high
        lo_cdf = _cdf(base, low) if low is not None else torch.zeros_like(base.mean)
        hi_cdf = _cdf(base, high) if high is not None else torch.ones_like(base.mean)
        self._lo_cdf, self._hi_cdf = lo_cdf, hi_cdf
        self._log_z = torch.log(torch.clamp(hi_cdf - lo_cdf, min=1e-30))
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @constraints.dependent_property
    def support(self):
        if self.low is not None and self.high is not None:
            return constraints.interval(self.low, self.high)
        if self.low is not None:
            return constraints.greater_than(self.low)
        if self.high is not None:
            return constraints.less_than(self.high)
        return self.base.support

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self._lo_cdf.dtype, device=self._lo_cdf.device)
        eps = torch.finfo(u.dtype).eps
        p = (self._lo_cdf + u * (self._hi_cdf - self._lo_cdf)).clamp(eps, 1 - eps)
        try:
            x = self.base.icdf(p)
        except NotImplementedError:
            x = _icdf_by_bisection(self.base, p, self.low, self.high)
        if self.low is not None:
            x = torch.maximum(x, torch.as_tensor(self.low, dtype=x.dtype))
        if self.high is not None:
            x = torch.minimum(x, torch.as_tensor(self.high, dtype=x.dtype))
        return x

    def log_prob(self, value):
        lp = self.base.log_prob(value) - self._log_z
        inside = torch.ones_like(lp, dtype=torch.bool)
        if self.low is not None:
            inside = inside & (value >= self.low)
        if self.high is not None:
            inside = inside & (value <= self.high)
        return torch.where(inside, lp, torch.full_like(lp, -float("inf")))

    @property
    def mean(self):  # used only to locate proposals; a rough value suffices
        m = self.base.mean
        if self.low is not None:
            m = torch.maximum(m, torch.as_tensor(self.low, dtype=m.dtype))
        if self.high is not None:
            m = torch.minimum(m, torch.as_tensor(self.high, dtype=m.dtype))
        return m


class Switch(pdist.TorchDistribution):
    """One site defined in several exclusive branches: ``dists[k]`` where ``index == k``."""

    def __init__(self, index, dists, validate_args=False):
        self.index, self.dists = index, dists
        d0 = dists[0]
        super().__init__(d0.batch_shape, d0.event_shape, validate_args=False)

    @property
    def support(self):
        return self.dists[0].support

    def _select(self, values):
        idx = self.index
        out = values[0]
        for k in range(1, len(values)):
            cond = (idx == k).reshape(idx.shape + (1,) * (out.dim() - idx.dim()))
            out = torch.where(cond, values[k], out)
        return out

    def sample(self, sample_shape=torch.Size()):
        return self._select([d.sample(sample_shape) for d in self.dists])

    def log_prob(self, value):
        return self._select([d.log_prob(value) for d in self.dists])

    @property
    def mean(self):
        return self._select([d.mean for d in self.dists])


class Reshaped(pdist.TorchDistribution):
    """``base`` with its batch shape reshaped (same number of elements)."""

    def __init__(self, base, batch_shape, validate_args=False):
        self.base = base
        super().__init__(torch.Size(batch_shape), base.event_shape, validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self.base.support

    @property
    def has_rsample(self):
        return self.base.has_rsample

    def _to_base(self, value):
        n = len(self.event_shape)
        lead = value.shape[:value.dim() - n - len(self.batch_shape)]
        return value.reshape(lead + self.base.batch_shape + self.base.event_shape)

    def sample(self, sample_shape=torch.Size()):
        x = self.base.sample(sample_shape)
        return x.reshape(sample_shape + self.batch_shape + self.event_shape)

    def rsample(self, sample_shape=torch.Size()):
        x = self.base.rsample(sample_shape)
        return x.reshape(sample_shape + self.batch_shape + self.event_shape)

    def log_prob(self, value):
        lp = self.base.log_prob(self._to_base(value))
        return lp.reshape(lp.shape[:lp.dim() - len(self.base.batch_shape)] + self.batch_shape)

    @property
    def mean(self):
        return self.base.mean.reshape(self.batch_shape + self.event_shape)


class OrderStatistics(TorchDistribution):
    """``ordered[K] x ~ D``: the K iid draws of ``base`` (batch (..., K)), sorted. Its
    density on increasing vectors is K! prod p(x_k) (zero elsewhere)."""
    arg_constraints = {}

    def __init__(self, base, positive: bool = False):
        self.base = base
        self.k = base.batch_shape[-1]
        self._support = constraints.positive_ordered_vector if positive \
            else constraints.ordered_vector
        super().__init__(base.batch_shape[:-1], torch.Size((self.k,)), validate_args=False)

    @property
    def support(self):
        return self._support

    def sample(self, sample_shape=torch.Size()):
        return self.base.sample(sample_shape).sort(-1).values

    def log_prob(self, value):
        lp = self.base.log_prob(value).sum(-1) + math.lgamma(self.k + 1)
        ok = (value[..., 1:] > value[..., :-1]).all(-1)
        return torch.where(ok, lp, torch.full_like(lp, -math.inf))
