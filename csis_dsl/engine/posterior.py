"""Vectorised importance sampling and the weighted posterior it returns."""
from __future__ import annotations

import math
import warnings
from typing import Dict, Optional

import pyro.poutine as poutine
import torch

from ..backend.observations import Observations
from .seeding import seeded


def _per_trace(tr, B, names) -> torch.Tensor:
    total = torch.zeros(B)
    tr.compute_log_prob()
    for n in names:
        site = tr.nodes.get(n)
        if site is None or site["type"] != "sample":
            continue
        lp = site["log_prob"]
        lp = lp.expand((B,) + tuple(lp.shape[1:])) if lp.dim() and lp.shape[0] == 1 else lp
        total = total + (lp.reshape(B, -1).sum(1) if lp.dim() else lp.expand(B))
    return total


def importance(model, observations, num_samples=1000, proposal="guide",
               seed: Optional[int] = None) -> "Posterior":
    c = model
    obs = Observations.of(c.checked, observations, require_all=True)
    if proposal not in ("guide", "prior"):
        raise ValueError(f"proposal must be 'guide' or 'prior', got {proposal!r}")
    B = int(num_samples)
    with torch.no_grad(), seeded(seed):
        if proposal == "guide":
            gtr = poutine.trace(c.guide).get_trace(observations=obs, num_traces=B)
            mtr = poutine.trace(poutine.replay(c.pyro_model, trace=gtr)).get_trace(
                observations=obs, num_traces=B)
            log_q = _per_trace(gtr, B, c.latents)
            log_p = _per_trace(mtr, B, c.latents + c.observed)
            log_w = log_p - log_q
        else:
            mtr = poutine.trace(c.pyro_model).get_trace(observations=obs, num_traces=B)
            log_w = _per_trace(mtr, B, c.observed)
    env = mtr.nodes["_RETURN"]["value"]
    values = {n: env[n].expand((B,) + tuple(env[n].shape[1:]))
              for n in c.latents + c.deterministic}
    exists = {n: getattr(env, "exists", {}).get(n) for n in values}
    return Posterior(c, values, exists, log_w, obs, proposal)


class Posterior:
    """Weighted samples of the latents (and deterministic variables) given the
    observations."""

    def __init__(self, model, values, exists, log_weights, observations, proposal):
        self.model = model
        self._values = values
        self._exists = exists
        lw = torch.nan_to_num(log_weights.detach().double(), nan=-math.inf)
        self.log_weights = lw
        self.observations = dict(observations)
        self.proposal = proposal
        self.num_samples = lw.shape[0]
        finite = torch.isfinite(lw)
        if not bool(finite.any()):
            warnings.warn("every importance weight is zero (log weight -inf or NaN): the "
                          "proposal never proposed a value the model allows", RuntimeWarning)
            self.weights = torch.full_like(lw, 1.0 / lw.shape[0])
            self.log_evidence = -math.inf
            self.ess = 0.0
        else:
            self.log_evidence = float(torch.logsumexp(lw, 0) - math.log(lw.shape[0]))
            self.weights = torch.softmax(lw, 0)
            self.ess = float(1.0 / (self.weights ** 2).sum())
        if self.ess < 0.05 * self.num_samples:
            warnings.warn(f"effective sample size {self.ess:.1f} is below 5% of the "
                          f"{self.num_samples} samples: the estimates are unreliable (train "
                          "longer or draw more samples)", RuntimeWarning)

    @property
    def latents(self):
        return list(self.model.latents)

    def _check(self, name):
        if name not in self._values:
            import difflib
            m = difflib.get_close_matches(name, list(self._values), n=1)
            raise KeyError(f"no variable '{name}' in the posterior"
                           + (f"; did you mean '{m[0]}'?" if m else
                              f"; it has {list(self._values)}"))

    def values(self, name) -> torch.Tensor:
        """The raw draws (num_samples, *shape); NaN where an element does not exist."""
        self._check(name)
        x = self._values[name].to(torch.float64)
        ex = self._exists.get(name)
        if ex is not None:
            ex = ex.expand(x.shape[:ex.dim()]).reshape(ex.shape if ex.shape[0] == x.shape[0]
                                                       else x.shape[:ex.dim()])
            x = torch.where(ex.reshape(ex.shape + (1,) * (x.dim() - ex.dim())), x,
                            torch.full_like(x, math.nan))
        return x

    def _w(self, x):
        w = self.weights.reshape((-1,) + (1,) * (x.dim() - 1)).expand(x.shape)
        present = ~torch.isnan(x)
        w = torch.where(present, w, torch.zeros_like(w))
        return w / w.sum(0, keepdim=True).clamp(min=1e-300), torch.nan_to_num(x)

    def mean(self, name):
        w, x = self._w(self.values(name))
        return (w * x).sum(0)

    def var(self, name):
        w, x = self._w(self.values(name))
        m = (w * x).sum(0)
        return (w * (x - m) ** 2).sum(0)

    def std(self, name):
        return self.var(name).sqrt()

    def quantile(self, name, q):
        x = self.values(name)
        w, xv = self._w(x)
        flat_x = xv.reshape(xv.shape[0], -1)
        flat_w = w.reshape(w.shape[0], -1)
        order = flat_x.argsort(0)
        xs = flat_x.gather(0, order)
        cw = flat_w.gather(0, order).cumsum(0)
        qs = torch.as_tensor(q, dtype=torch.float64)
        out = []
        for qq in qs.reshape(-1):
            idx = (cw < qq).sum(0).clamp(max=xs.shape[0] - 1)
            out.append(xs.gather(0, idx.unsqueeze(0)).squeeze(0))
        res = torch.stack(out, 0).reshape(qs.shape + x.shape[1:])
        return res

    def sample(self, name, n=1000, seed=None):
        """n draws resampled by weight (multinomial resampling)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        idx = torch.multinomial(self.weights, n, replacement=True, generator=g)
        return self.values(name)[idx]

    def empirical(self, name):
        import pyro.distributions as dist
        return dist.Empirical(self.values(name).float(), self.log_weights.float())

    def probabilities(self, name) -> Dict[int, float]:
        """For a scalar discrete latent: P(value) for each value seen."""
        x = self.values(name).reshape(-1)
        out = {}
        for val in torch.unique(x[~torch.isnan(x)]).tolist():
            out[int(val)] = float(self.weights[x == val].sum())
        return out

    def summary(self, max_elements: int = 10) -> str:
        rows = [f"posterior of {self.model.name}: {self.num_samples} samples "
                f"(proposal: {self.proposal}), ESS {self.ess:.1f}, "
                f"log evidence {self.log_evidence:.3f}",
                f"{'variable':<16}{'mean':>10}{'std':>10}{'5%':>10}{'50%':>10}{'95%':>10}"]
        for name in self.latents + self.model.deterministic:
            v = self.model.checked.vars[name]
            m, s = self.mean(name), self.std(name)
            qs = self.quantile(name, [0.05, 0.5, 0.95])
            n = m.numel()
            for j in range(min(n, max_elements)):
                label = name if n == 1 else f"{name}[{j}]" if m.dim() == 1 else \
                    f"{name}{list(torch.unravel_index(torch.tensor(j), m.shape))}"
                rows.append(f"{label:<16}{m.reshape(-1)[j]:>10.4g}{s.reshape(-1)[j]:>10.4g}"
                            f"{qs[0].reshape(-1)[j]:>10.4g}{qs[1].reshape(-1)[j]:>10.4g}"
                            f"{qs[2].reshape(-1)[j]:>10.4g}")
            if n > max_elements:
                rows.append(f"{'':<16}... {n - max_elements} more elements")
            if v.discrete and n == 1:
                probs = self.probabilities(name)
                rows.append(f"{'':<16}P: " + ", ".join(f"{k}: {p:.3f}" for k, p in
                                                        sorted(probs.items())[:12]))
        return "\n".join(rows)

    def to_dict(self, max_elements=None):
        out = {"ess": self.ess, "num_samples": self.num_samples,
               "log_evidence": self.log_evidence, "proposal": self.proposal, "latents": {}}
        for name in self.latents:
            q = self.quantile(name, [0.05, 0.5, 0.95])
            d = {"mean": self.mean(name).tolist(), "std": self.std(name).tolist(),
                 "q05": q[0].tolist(), "q50": q[1].tolist(), "q95": q[2].tolist()}
            if self.model.checked.vars[name].discrete and self.mean(name).numel() == 1:
                d["probabilities"] = {str(k): p for k, p in self.probabilities(name).items()}
            out["latents"][name] = d
        return out

    def plot(self, path=None, names=None, prior_samples=2000):
        from ..plots import plot_posterior
        return plot_posterior(self, path=path, names=names, prior_samples=prior_samples)

    def plot_weights(self, path=None):
        from ..plots import plot_weights
        return plot_weights(self, path=path)

    def __repr__(self):
        return f"<Posterior {self.model.name}: {self.num_samples} samples, ESS {self.ess:.1f}>"
