"""How the network's inputs are put on a common scale: robust statistics of prior
simulations, and a squash of what lies far outside them.

A model with heavy-tailed observations (a Student-t likelihood whose degrees of
freedom are a latent, a Cauchy error) simulates values that span many orders of
magnitude: y = 8e18 beside y = 0.2. Standardised with the simulations' mean and sd,
the typical observation becomes ~1e-17 (the sd is the outliers') and the outlier ~10
-- the network sees nothing of the first and, through its layers, outputs of 1e13 for
the second, whose gradients overflow (training stopped as "diverged"). Where the tails
are that heavy (the sd more than ``HEAVY`` times that of the values winsorised at their
1% and 99% quantiles, or not finite) the winsorised mean and sd are used, which do not
move with the tails; elsewhere the plain mean and sd, as before -- on light-tailed data
the winsorised ones gained nothing and changed what training reached (the coal HMM's
amortised ESS/N after 50 steps: 0.007 and 0.004 on two of five seeds, against
0.55-0.75 on all five with the plain ones). A logarithmic squash beyond ``KNEE`` sds
keeps every input finite and of moderate size while leaving the bulk of the data,
where the posterior's dependence on it is learnt, untouched (linear).
"""
from __future__ import annotations

from typing import Tuple

import torch

KNEE = 10.0     # (winsorised) sds within which inputs stay linear (logarithmic beyond)
WINSOR = 0.01  # the share of simulations at each end clipped for the statistics
HEAVY = 2.0    # plain sd / winsorised sd beyond which the tails count as heavy (a
               # Normal's is 1.05, a Poisson's or a Student-t(3)'s about 1.1-1.3)


def _quantiles(x: torch.Tensor, qs) -> torch.Tensor:
    """Column quantiles (len(qs), k) of x (S, k) over its finite values (NaN where a
    column has none), by sorting: no size limit (torch.quantile has one)."""
    x = torch.where(torch.isfinite(x), x, torch.full_like(x, float("nan")))
    s = x.sort(0).values                      # NaNs last
    n = torch.isfinite(s).sum(0)              # finite values per column
    out = []
    for q in qs:
        pos = q * (n - 1).clamp(min=0).to(x.dtype)
        lo, hi = pos.floor().long(), pos.ceil().long()
        a = s.gather(0, lo.unsqueeze(0)).squeeze(0)
        b = s.gather(0, hi.unsqueeze(0)).squeeze(0)
        v = a + (b - a) * (pos - lo.to(x.dtype))
        out.append(torch.where(n > 0, v, torch.full_like(v, float("nan"))))
    return torch.stack(out)


@torch.no_grad()
def robust_statistics(x: torch.Tensor, floor: float = 1e-3) -> Tuple[torch.Tensor, torch.Tensor]:
    """(centre, scale), (k,) each, of simulations x (S, k), over the finite values: the
    plain mean and sd where the tails are light, the mean and sd winsorised at the 1%
    and 99% quantiles where they are heavy (the plain sd more than ``HEAVY`` times the
    winsorised one, or not finite). Where the winsorised sd is 0 (a rare event: a count
    or a binary value that is almost always one number) the plain sd; at least
    ``floor``; 0 and 1 where a column has no finite value. Not the median and the IQR:
    on counts they jump between integers from one column to the next by sampling noise
    (coal-mining disasters: medians of 1 and 2 for years the prior treats alike), which
    the network then has to learn around."""
    dtype = x.dtype
    # in float64: the pumps model's prior simulates counts near 1e37, whose squares
    # overflow float32 -- the sds came out infinite, and the statistics a mean of 1e30
    # with an sd of 1, so that its real counts (1 to 22) were reported 1.8e30 sds away
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    lo, hi = _quantiles(x, (WINSOR, 1.0 - WINSOR))
    finite = torch.isfinite(x)
    count = finite.sum(0)
    n = count.clamp(min=1).to(x.dtype)

    def moments(v):
        v = torch.where(finite, v, torch.zeros_like(v))
        mean = v.sum(0) / n
        var = torch.where(finite, (v - mean) ** 2, torch.zeros_like(v)).sum(0)
        return mean, (var / (n - 1).clamp(min=1)).sqrt()
    w_centre, w_scale = moments(torch.minimum(torch.maximum(x, lo), hi))
    centre, scale = moments(x)
    heavy = (w_scale > 0) & ~(scale <= HEAVY * w_scale)
    centre = torch.where(heavy, w_centre, centre)
    scale = torch.where(heavy, w_scale, scale)
    ok = count > 0
    scale = torch.where(torch.isfinite(scale) & ok, scale.clamp(min=floor), torch.ones_like(scale))
    centre = torch.where(torch.isfinite(centre) & ok, centre, torch.zeros_like(centre))
    return centre.to(dtype), scale.to(dtype)


def squash(z: torch.Tensor, knee: float = KNEE) -> torch.Tensor:
    """Standardised values z, unchanged within +-knee, logarithmic beyond (continuous,
    with a continuous slope): knee + log(1 + |z| - knee), signed; finite everywhere
    (NaN to 0, infinities to the largest float's image)."""
    z = torch.nan_to_num(z, nan=0.0)
    far = z.abs() > knee
    a = z.abs().clamp(min=knee, max=torch.finfo(z.dtype).max)
    out = torch.sign(z) * (knee + torch.log1p(a - knee))
    return torch.where(far, out, z)
