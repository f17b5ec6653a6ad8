"""How the network's inputs are put on a common scale: robust statistics of prior
simulations, and a squash of what lies far outside them.

A model with heavy-tailed observations (a Student-t likelihood whose degrees of
freedom are a latent, a Cauchy error) simulates values that span many orders of
magnitude: y = 8e18 beside y = 0.2. Standardised with the simulations' mean and sd,
the typical observation becomes ~1e-17 (the sd is the outliers') and the outlier ~10
-- the network sees nothing of the first and, through its layers, outputs of 1e13 for
the second, whose gradients overflow (training stopped as "diverged"). The median and
the interquartile range do not move with the tails, and a logarithmic squash beyond
``KNEE`` robust sds keeps every input finite and of moderate size while leaving the
bulk of the data, where the posterior's dependence on it is learnt, untouched
(linear).
"""
from __future__ import annotations

from typing import Tuple

import torch

KNEE = 10.0     # robust sds within which inputs stay linear (logarithmic beyond)
IQR_SD = 1.3489795  # the interquartile range of a standard Normal, in sds


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
    """(centre, scale), (k,) each, of simulations x (S, k): the median, and the
    interquartile range in Normal sds -- or, where that is 0 (a count or a binary value
    that is mostly one number), the sd of the finite values; at least ``floor``; 0 and
    1 where a column has no finite value."""
    x = x.reshape(x.shape[0], -1)
    q25, q50, q75 = _quantiles(x, (0.25, 0.5, 0.75))
    scale = (q75 - q25) / IQR_SD
    finite = torch.isfinite(x)
    xf = torch.where(finite, x, torch.zeros_like(x))
    count = finite.sum(0)
    n = count.clamp(min=1).to(x.dtype)
    mean = xf.sum(0) / n
    sd = (torch.where(finite, (x - mean) ** 2, torch.zeros_like(x)).sum(0)
          / (n - 1).clamp(min=1)).sqrt()
    scale = torch.where(scale > 0, scale, sd)
    scale = torch.where(torch.isfinite(scale) & (count > 0), scale.clamp(min=floor),
                        torch.ones_like(scale))
    centre = torch.where(torch.isfinite(q50), q50, torch.zeros_like(q50))
    return centre, scale


def squash(z: torch.Tensor, knee: float = KNEE) -> torch.Tensor:
    """Standardised values z, unchanged within +-knee, logarithmic beyond (continuous,
    with a continuous slope): knee + log(1 + |z| - knee), signed; finite everywhere
    (NaN to 0, infinities to the largest float's image)."""
    z = torch.nan_to_num(z, nan=0.0)
    far = z.abs() > knee
    a = z.abs().clamp(min=knee, max=torch.finfo(z.dtype).max)
    out = torch.sign(z) * (knee + torch.log1p(a - knee))
    return torch.where(far, out, z)
