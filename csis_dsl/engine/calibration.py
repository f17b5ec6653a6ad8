"""Simulation-based calibration (Talts et al. 2018, "Validating Bayesian inference
algorithms with simulation-based calibration").

Draw (theta, y) from the joint, infer p(theta | y) and take the rank of the true theta
among posterior draws. A calibrated inference gives ranks uniform over their range for
every latent element; a proposal too narrow gives a U-shaped rank histogram, one too
wide a hump, one biased a slope. Amortised inference makes this cheap: one network
answers for every simulated data set, all of them in one vectorised pass per chunk.

Two inferences are checked side by side: the importance-weighted posterior (what
``infer`` returns; ranks among draws resampled by weight) and the plain proposal
(ranks among unweighted proposal draws: is the network itself calibrated?). The
uniformity test is Kolmogorov-Smirnov on randomised ranks, Bonferroni-corrected over
the elements; the picture is the ECDF difference with the simultaneous band of
Sailynoja, Burkner & Vehtari (2022), computed by arviz-stats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .. import options as opt
from ..backend.observations import Observations
from .diagnostics import k_threshold, pareto_k
from .posterior import batched_importance, ess_of, masked
from .seeding import seeded

KINDS = ("posterior", "proposal")
UNRELIABLE = 0.2    # above this fraction of data sets with unreliable weights: cannot tell
CHUNK_TRACES = 200_000


@dataclass
class Calibration:
    """Rank statistics of ``num_datasets`` simulated data sets.

    ``ranks[kind]``: (num_datasets, elements) normalised ranks in (0, 1), NaN where an
    element does not exist; ``p_values[kind]``: the KS p-value of each element;
    ``verdict[kind]``: "calibrated" (no departure detected at ``alpha``),
    "miscalibrated", or for the weighted posterior "cannot tell" when the weights of
    more than UNRELIABLE of the data sets are unreliable (``unreliable``); ``coverage[kind]``: (elements, levels) the fraction of data sets whose
    true value lies in the central credible interval of each level."""
    model: str
    labels: List[str]
    ranks: Dict[str, np.ndarray]
    ess: np.ndarray
    pareto_k: np.ndarray
    num_samples: int
    num_ranks: int
    alpha: float
    levels: np.ndarray
    p_values: Dict[str, np.ndarray] = field(default_factory=dict)
    coverage: Dict[str, np.ndarray] = field(default_factory=dict)
    verdict: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        from scipy.stats import kstest
        for kind, u in self.ranks.items():
            p = np.full(u.shape[1], math.nan)
            cov = np.full((u.shape[1], len(self.levels)), math.nan)
            for j in range(u.shape[1]):
                x = u[:, j][~np.isnan(u[:, j])]
                if x.size >= 5:
                    p[j] = kstest(x, "uniform").pvalue
                    cov[j] = (np.abs(x[:, None] - 0.5) <= self.levels[None] / 2).mean(0)
            self.p_values[kind], self.coverage[kind] = p, cov
            tested = p[~np.isnan(p)]
            bad = tested.size and tested.min() * tested.size < self.alpha
            self.verdict[kind] = "miscalibrated" if bad else "calibrated"
            if not tested.size:
                self.verdict[kind] = "cannot tell"
        if "posterior" in self.ranks and self.unreliable > UNRELIABLE:
            self.verdict["posterior"] = "cannot tell"

    @property
    def unreliable(self) -> float:
        """The fraction of data sets whose importance weights cannot be trusted: a
        Pareto k-hat above the reliability threshold together with an ESS below half
        the samples (with nearly equal weights the k-hat of a short tail is noise)."""
        k = np.nan_to_num(self.pareto_k, nan=np.inf)
        bad = (k > k_threshold(self.num_samples)) & (self.ess < 0.5 * self.num_samples)
        return float(bad.mean())

    @property
    def num_datasets(self) -> int:
        return self.ess.shape[0]

    @property
    def passed(self) -> bool:
        """The importance-weighted posterior showed no miscalibration (and could be
        judged)."""
        return self.verdict.get("posterior") == "calibrated"

    def summary(self, max_elements: int = 20) -> str:
        rows = [f"simulation-based calibration of {self.model}: {self.num_datasets} data "
                f"sets, {self.num_samples} samples each, ranks among {self.num_ranks} "
                f"draws; median ESS {np.median(self.ess):.1f}",
                f"  weighted posterior: {self.verdict.get('posterior', '-')}"
                + (f" (the weights are unreliable, Pareto k-hat above "
                   f"{k_threshold(self.num_samples):.2f}, for {self.unreliable:.0%} of the "
                   "data sets: train longer or raise num_samples)"
                   if self.verdict.get("posterior") == "cannot tell" else ""),
                f"  plain proposal:     {self.verdict.get('proposal', '-')}",
                f"  (KS test of uniform ranks, Bonferroni over {len(self.labels)} "
                f"element(s), alpha {self.alpha})",
                f"{'element':<16}" + "".join(f"{'p ' + k[:8]:>14}{'cov90 ' + k[:4]:>14}"
                                             for k in self.ranks)]
        i90 = int(np.argmin(np.abs(self.levels - 0.9)))
        for j, label in enumerate(self.labels[:max_elements]):
            rows.append(f"{label:<16}" + "".join(
                f"{self.p_values[k][j]:>14.3g}{self.coverage[k][j, i90]:>14.3f}"
                for k in self.ranks))
        if len(self.labels) > max_elements:
            rows.append(f"... {len(self.labels) - max_elements} more elements")
        return "\n".join(rows)

    def to_dict(self) -> dict:
        def num(x):
            return None if not math.isfinite(x) else float(x)
        return {"model": self.model, "num_datasets": self.num_datasets,
                "num_samples": self.num_samples, "num_ranks": self.num_ranks,
                "alpha": self.alpha, "median_ess": float(np.median(self.ess)),
                "unreliable_weights": self.unreliable,
                "verdict": dict(self.verdict),
                "elements": {label: {k: {"p_value": num(self.p_values[k][j]),
                                         "coverage90": num(self.coverage[k][
                                             j, int(np.argmin(np.abs(self.levels - 0.9)))])}
                                     for k in self.ranks}
                             for j, label in enumerate(self.labels)}}

    def plot(self, path=None, max_elements: int = 12):
        from ..plots import plot_calibration
        return plot_calibration(self, path=path, max_elements=max_elements)

    def __repr__(self):
        return (f"<Calibration {self.model}: {self.num_datasets} data sets, "
                f"posterior {self.verdict.get('posterior')}, "
                f"proposal {self.verdict.get('proposal')}>")


def _labels(name: str, shape) -> List[str]:
    if not shape:
        return [name]
    return [f"{name}[{', '.join(map(str, ix))}]" for ix in np.ndindex(*shape)]


def _flat(env, names, B) -> torch.Tensor:
    """The latents of B traces as (B, elements), NaN where an element does not exist."""
    cols = []
    for n in names:
        x = masked(env[n].expand((B,) + tuple(env[n].shape[1:])), env.exists.get(n))
        cols.append(x.reshape(B, -1))
    return torch.cat(cols, 1)


def _ranks(truth: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Normalised randomised ranks (D, E) of truth (D, E) among draws (D, L, E): under
    calibration uniform on (0, 1); ties (discrete latents) split at random; NaN where
    the true element or every draw of it does not exist."""
    valid = ~torch.isnan(draws)
    n = valid.sum(1)
    t = truth.unsqueeze(1)
    less = ((draws < t) & valid).sum(1)
    equal = ((draws == t) & valid).sum(1)
    r = less + torch.floor(torch.rand(less.shape, dtype=torch.float64) * (equal + 1))
    u = (r + torch.rand(less.shape, dtype=torch.float64)) / (n + 1)
    return torch.where(torch.isnan(truth) | (n == 0), torch.full_like(u, math.nan), u)


def calibrate(model, num_datasets: int = 200, num_samples: int = 1000,
              seed: Optional[int] = None, num_ranks: int = 100, defensive: float = 0.1,
              alpha: float = 0.05, proposal: bool = True) -> Calibration:
    D = opt.integer("num_datasets", num_datasets, 5)
    S = opt.integer("num_samples", num_samples, 2)
    L = opt.integer("num_ranks", num_ranks, 1)
    seed = opt.optional_integer("seed", seed)
    alpha = opt.number("alpha", alpha, high=1.0)
    defensive = opt.number("defensive", defensive, low_open=False, high=1.0, high_open=True)
    guide = model.guide
    guide.fit_statistics()
    names = list(model.latents)
    labels = [lab for n in names for lab in _labels(n, model.checked.vars[n].type.shape)]
    ranks = {k: [] for k in (KINDS if proposal else KINDS[:1])}
    ess, khat = [], []
    with torch.no_grad(), seeded(seed):
        _, _, env = model.pyro_model.score(D)
        truth = _flat(env, names, D).double()
        sims = {n: env[n].expand((D,) + tuple(env[n].shape[1:])) for n in model.observed}
        chunk = max(1, CHUNK_TRACES // max(S, L))
        for lo in range(0, D, chunk):
            C = min(chunk, D - lo)

            def sets(k):
                return Observations({n: v[lo:lo + C].repeat_interleave(k, 0)
                                     for n, v in sims.items()})
            env_c, log_w = batched_importance(model, guide, sets(S), C, S, defensive)
            x = _flat(env_c, names, C * S).double().reshape(C, S, -1)
            pick = torch.multinomial(torch.softmax(log_w, -1).float(), L, replacement=True)
            draws = x.gather(1, pick.unsqueeze(-1).expand(C, L, x.shape[-1]))
            ranks["posterior"].append(_ranks(truth[lo:lo + C], draws))
            ess.append(ess_of(log_w))
            khat.extend(pareto_k(row) for row in log_w)
            if proposal:
                env_p, _ = batched_importance(model, guide, sets(L), C, L, 0.0)
                xp = _flat(env_p, names, C * L).double().reshape(C, L, -1)
                ranks["proposal"].append(_ranks(truth[lo:lo + C], xp))
    return Calibration(model=model.name, labels=labels,
                       ranks={k: torch.cat(v, 0).cpu().numpy() for k, v in ranks.items()},
                       ess=torch.cat(ess).cpu().numpy(), pareto_k=np.array(khat), num_samples=S, num_ranks=L, alpha=alpha,
                       levels=np.linspace(0.01, 0.99, 99))
