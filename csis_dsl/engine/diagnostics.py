"""Diagnostics of importance weights and of the observations they were drawn for.

* Pareto k-hat (Vehtari et al., "Pareto smoothed importance sampling"): the shape of a
  generalised Pareto distribution fitted to the largest weights, computed by
  arviz-stats. Above min(1 - 1/log10(S), 0.7) the estimate is unreliable whatever the
  ESS says.
* Observations far outside the training simulations: the amortised proposal only knows
  data like the prior predictive's; beyond about 6 standard deviations of it the network
  extrapolates, and a proposal that collapses onto one point can report ESS = N.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import torch

FAR = 6.0       # standardised distance from the training simulations that warns


def pareto_k(log_weights: torch.Tensor) -> float:
    """Pareto k-hat of importance log weights (NaN when there are too few finite ones
    to fit a tail)."""
    lw = log_weights.detach().double().cpu()
    lw = lw[torch.isfinite(lw)]
    if lw.numel() < 10:
        return math.nan
    if float(lw.max() - lw.min()) < 1e-12:
        return -math.inf            # equal weights: no tail at all
    from arviz_stats.base import array_stats
    lw = np.asarray(lw - lw.max(), dtype=np.float64)
    tail = int(min(0.2 * lw.size, 3 * math.sqrt(lw.size)))
    if np.sort(lw)[-tail - 1] < -230:   # the tail weights vanish (< 1e-100): a few hold all
        return math.inf                # the mass, far beyond any finite fit
    try:
        with np.errstate(all="ignore"):
            _, k = array_stats.psislw(-lw, r_eff=1.0)   # it takes negated log ratios
    except ValueError:
        top = np.sort(lw)[-tail:]
        if float(top.max() - top.min()) < 1e-12:   # the largest weights are all equal (a
            return -math.inf                       # discrete latent): a bounded tail
        return math.inf         # the tail collapsed: a few weights hold all the mass
    k = float(k)
    return math.inf if math.isnan(k) else k


def k_threshold(num_samples: int) -> float:
    return min(1.0 - 1.0 / math.log10(max(num_samples, 11)), 0.7)


def far_observations(guide, observations) -> List[Tuple[str, float]]:
    """The observed variables (with their largest standardised distance) that lie
    further than FAR standard deviations from the training simulations."""
    emb = guide.net.embedding
    out = []
    for name, z in emb.standardise(observations).items():
        worst = float(z.abs().max()) if z.numel() else 0.0
        if worst > FAR:
            out.append((name, worst))
    return out
