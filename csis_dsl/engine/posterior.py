"""Vectorised importance sampling and the weighted posterior it returns."""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Dict, Optional

import torch

from ..backend.observations import Observations
from .diagnostics import far_observations, k_threshold, pareto_k
from .seeding import seeded


COMPONENTS = ("network", "program", "broad", "broad program")
PILOT = 256          # draws of the pilot that sets the program's share (``infer``)
SHARES = 21          # the program shares it compares: 0, 0.05, ..., 1
EXTRAPOLATING = 0.02  # impossible pilot draws from which the network counts as extrapolating


def component(net, name: str):
    """The context in which the guide proposes from one component of a mixture:
    ``"network"`` the trained proposal; ``"program"`` the program's own (every family's
    output at its initial bias: the prior, or an informed site's local posterior, at its
    own width); ``"broad"`` and ``"broad program"`` each of those with every scale
    doubled (discrete sites: their prior)."""
    if name not in COMPONENTS:
        raise ValueError(f"no mixture component {name!r}; there are {COMPONENTS}")
    stack = contextlib.ExitStack()
    stack.enter_context(net.defensive_mixing(1.0 if name.startswith("broad") else 0.0))
    if name.endswith("program"):
        stack.enter_context(net.networkless())
    return stack


def mixture_draws(guide, obs, B: int, shares: Dict[str, float]):
    """B draws from the whole-trace mixture sum_c shares[c] q_c (shares > 0 normalised),
    log q of the mixture at each, and log q_c of each component used (name -> (B,)).
    The weights p / q_mix are bounded by p / (share_c q_c) for every component."""
    net = guide.net
    used = [c for c in COMPONENTS if shares.get(c, 0.0) > 0]
    if not used:
        raise ValueError("a mixture needs a component with a positive share")
    if len(used) == 1:
        with component(net, used[0]):
            values, log_q = guide.propose(obs, B)
        return values, log_q, {used[0]: log_q}
    total = sum(shares[c] for c in used)
    probs = torch.tensor([shares[c] / total for c in used], dtype=torch.float64)
    pick = torch.multinomial(probs, B, replacement=True)
    order = torch.argsort(pick, stable=True)
    parts, at = [], 0
    for k, n in enumerate(torch.bincount(pick, minlength=len(used)).tolist()):
        if n:
            with component(net, used[k]):
                parts.append(guide.propose(obs.take(order[at:at + n]), n)[0])
            at += n
    drawn = {k: torch.cat([q[k] for q in parts], 0) for k in parts[0]}
    values = {k: torch.empty_like(v).index_copy_(0, order.to(v.device), v)
              for k, v in drawn.items()}
    # a component whose density is NaN at another component's draw (a network that
    # extrapolates to a degenerate component) has none there: the draw keeps the density
    # the others give it. At its own draw a NaN stays, and the draw is weightless.
    each = {}
    for k, c in enumerate(used):
        with component(net, c):
            lq = guide.log_q(obs, values, B)
        elsewhere = torch.isnan(lq) & (pick.to(lq.device) != k)
        each[c] = lq.masked_fill(elsewhere, -math.inf)
    log_q = torch.logsumexp(torch.stack([each[c] + math.log(shares[c] / total)
                                         for c in used]), 0)
    return values, log_q, each


def defensive_draws(guide, obs, B: int, weight: float, mixing: str):
    """B draws from a defensive proposal, and log q of the mixture at each.

    ``mixing="trace"``: (1 - weight) q + weight q_broad over whole traces, q_broad being
    q with every site broadened (scales doubled; discrete sites: their prior) -- the
    weights are then bounded by p / (weight q_broad) whatever the dimension. ``"site"``:
    each site mixes on its own (cheaper: one pass; but in many dimensions almost every
    trace has some broad site)."""
    if not weight:
        return guide.propose(obs, B)
    if mixing == "site":
        with guide.net.defensive_mixing(weight):
            return guide.propose(obs, B)
    if mixing != "trace":
        raise ValueError(f"mixing must be 'trace' or 'site', got {mixing!r}")
    values, log_q, _ = mixture_draws(guide, obs, B, {"network": 1.0 - weight, "broad": weight})
    return values, log_q


def shares_of(program, defensive: float) -> Dict[str, float]:
    """The mixture infer draws from (``program`` a number, or a tensor of them for the
    pilot's grid): the trained network's proposal and the program's
    own at ``1 - program`` and ``program``, and their broadened selves in the same
    proportions at ``defensive`` in all. The broad part is the defensive one (weights
    bounded where a proposal is too narrow); it is split like the rest because a
    network that extrapolates is no better broadened: its draws would then land where
    the program's proposal rightly puts none and the posterior's density is high (the
    neck of a hierarchical funnel, say), each with an enormous weight."""
    rest = 1.0 - defensive
    return {"network": rest * (1.0 - program), "program": rest * program,
            "broad": defensive * (1.0 - program), "broad program": defensive * program}


@torch.no_grad()
def choose_program_share(model, guide, obs, defensive: float, n: int = PILOT) -> float:
    """The share of the program's own proposal that minimises the second moment of
    the importance weights (so maximises the expected ESS) on these observations,
    estimated from a pilot of n draws from an even mixture. Where the training
    simulations were unlike these observations the trained network extrapolates and
    can be far worse than the proposal the program gives by itself (exact local
    posteriors, Laplace fits, messages), and the pilot then moves the draws there;
    otherwise the share stays at or near 0. The second moment is convex in the shares
    (He & Owen 2014), and one share is compared on a grid; of those within 5% of the
    least, the smallest is taken (a share the network does not need costs ESS: the
    largest cost 1-6% of ESS/N on the real models of bench/real whose networks had
    learned the posterior). But where at least ``EXTRAPOLATING`` of the pilot's draws
    are impossible (log p = -inf, or no density), the network is extrapolating --
    degenerate components, a scale of 1e-30 -- and of those the largest is taken: such
    a network's rare far draws, whose weights a pilot of a few hundred does not see,
    carry a share of the mass in a run, and the estimate is off without k-hat showing
    it (surgical mortality on its real data: the group sd 0.45 posterior sd low with
    the network at 15%, ESS/N 0.56, k-hat 0.06)."""
    pilot = shares_of(0.5, defensive)
    values, log_pilot, each = mixture_draws(guide, obs, n, pilot)
    log_latent, log_obs, _ = model.pyro_model.score(n, obs, values)
    log_p = (log_latent + log_obs).double()
    ok = torch.isfinite(log_p) & torch.isfinite(log_pilot)
    if not bool(ok.any()):
        return 0.0
    beta = torch.linspace(0.0, 1.0, SHARES, dtype=torch.float64, device=log_p.device)
    terms = [torch.log(share).unsqueeze(1) + each[c].double()[ok]
             for c, share in shares_of(beta, defensive).items() if c in each]
    log_q = torch.logsumexp(torch.stack(terms), 0)                 # (shares, draws)
    log_second = torch.logsumexp(2 * log_p[ok] - log_q - log_pilot.double()[ok], -1)
    log_second = torch.nan_to_num(log_second, nan=math.inf)
    # the curve is flat near its minimum and the pilot is noisy: the smallest share
    # within 5% of the best estimate, or the largest where the network extrapolates
    near = torch.nonzero(log_second <= log_second.min() + math.log(1.05))
    extrapolating = float((~ok).double().mean()) >= EXTRAPOLATING
    return float(beta[int(near[-1] if extrapolating else near[0])])


def masked(x: torch.Tensor, exists: Optional[torch.Tensor]) -> torch.Tensor:
    """Draws (B, *shape) as float64 with NaN where ``exists`` (B or 1, *leading shape)
    says an element does not exist."""
    x = x.to(torch.float64)
    if exists is None:
        return x
    ex = exists.expand(x.shape[:exists.dim()])
    return torch.where(ex.reshape(ex.shape + (1,) * (x.dim() - ex.dim())), x,
                       torch.full_like(x, math.nan))


@torch.no_grad()
def batched_importance(model, guide, sets: Observations, Q: int, S: int,
                       defensive: float = 0.1, mixing: str = "trace"):
    """S importance draws for each of Q observation sets in one vectorised pass
    (``sets`` holds each set repeated S times, batch Q * S; ``guide=None`` proposes
    from the prior). Returns the model's :class:`Env` of the Q * S traces and the log
    weights (Q, S), NaN replaced by -inf."""
    B = Q * S
    if guide is None:
        _, log_w, env = model.pyro_model.score(B, sets)
    else:
        values, log_q = defensive_draws(guide, sets, B, defensive, mixing)
        log_latent, log_obs, env = model.pyro_model.score(B, sets, values)
        log_w = log_latent + log_obs - log_q
    log_w = log_w.double().reshape(Q, S)
    return env, torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)


def ess_of(log_w: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size along the last axis (0 where every weight is 0)."""
    w = torch.softmax(log_w, -1)
    ess = 1.0 / (w ** 2).sum(-1)
    return torch.where(torch.isfinite(log_w).any(-1), ess, torch.zeros_like(ess))


def systematic(weights: torch.Tensor, n: int, generator=None) -> torch.Tensor:
    """n indices drawn by systematic resampling (one uniform offset): each index
    appears floor or ceil of n x its weight times, so resampled averages match the
    weighted ones far more closely than multinomial resampling."""
    u = (torch.rand((), generator=generator, dtype=torch.float64)
         + torch.arange(n, dtype=torch.float64)) / n
    cdf = torch.cumsum(weights.double(), 0)
    cdf = cdf / cdf[-1]
    return torch.searchsorted(cdf, u).clamp(max=weights.shape[0] - 1)


def importance(model, observations, num_samples=1000, proposal="guide",
               seed: Optional[int] = None, guide=None, refinement=None,
               defensive: float = 0.0, mixing: str = "trace",
               program=0.0) -> "Posterior":
    """Importance sampling in one vectorised pass (no Pyro trace): log weights
    log p(latents, observations) - log q(latents | observations), with ``guide`` (the
    model's unless given, e.g. a refined copy) or the prior as the proposal. With
    ``defensive`` > 0 every site proposes from (1 - defensive) q + defensive q_broad,
    and q in the weights is that mixture's density. ``program`` (whole-trace mixing
    only): the share of the rest drawn from the program's own proposal instead of the
    trained network's, or ``"auto"``, set by a pilot (:func:`choose_program_share`)."""
    obs = Observations.of(model.checked, observations, require_all=True)
    if proposal not in ("guide", "prior"):
        raise ValueError(f"proposal must be 'guide' or 'prior', got {proposal!r}")
    guide = guide if guide is not None else (model.guide if proposal == "guide" else None)
    B = int(num_samples)
    shares = None
    with torch.no_grad(), seeded(seed):
        if proposal == "guide":
            if program == "auto":
                program = choose_program_share(model, guide, obs, defensive) \
                    if mixing == "trace" else 0.0
            if program and mixing != "trace":
                raise ValueError("a share of the program's own proposal needs whole-trace "
                                 "mixing (mixing='trace')")
            if mixing == "trace":
                shares = shares_of(float(program), defensive)
                values, log_q, _ = mixture_draws(guide, obs, B, shares)
            else:
                values, log_q = defensive_draws(guide, obs, B, defensive, mixing)
            log_latent, log_obs, env = model.pyro_model.score(B, obs, values)
            log_w = log_latent + log_obs - log_q
        else:
            _, log_w, env = model.pyro_model.score(B, obs)
    values = {n: env[n].expand((B,) + tuple(env[n].shape[1:]))
              for n in model.latents + model.deterministic}
    exists = {n: env.exists.get(n) for n in values}
    far = far_observations(guide, obs) if guide is not None and refinement is None else []
    return Posterior(model, values, exists, log_w, obs, proposal, refinement, far,
                     {c: w for c, w in shares.items() if w > 0} if shares else None)


class Posterior:
    """Weighted samples of the latents (and deterministic variables) given the
    observations, with the diagnostics of their weights: ``ess``, ``pareto_k``,
    ``log_evidence``; ``refinement`` when the proposal was refined for them."""

    def __init__(self, model, values, exists, log_weights, observations, proposal,
                 refinement=None, far=(), mixture=None):
        self.model = model
        # the whole-trace mixture the draws came from (component -> share; see
        # mixture_draws), None for a plain proposal
        self.mixture = mixture
        # the draws are kept on the CPU, wherever the model ran: a Posterior is for
        # analysis (numpy, ArviZ, plots)
        self._values = {n: v.cpu() for n, v in values.items()}
        self._exists = {n: None if e is None else e.cpu() for n, e in exists.items()}
        observations = {n: v.cpu() for n, v in dict(observations).items()}
        lw = log_weights.detach().double().cpu()
        lw = torch.where(torch.isnan(lw), torch.full_like(lw, -math.inf), lw)
        self.log_weights = lw
        self.observations = dict(observations)
        self.proposal = proposal
        self.refinement = refinement
        self.num_samples = lw.shape[0]
        self.far_observations = list(far)
        finite = torch.isfinite(lw)
        if not bool(finite.any()):
            warnings.warn("every importance weight is zero (log weight -inf or NaN): the "
                          "proposal never proposed a value the model allows given these "
                          "observations, so there is no estimate; check that the "
                          "observations are possible under the model", RuntimeWarning)
            self.weights = torch.full_like(lw, 1.0 / lw.shape[0])
            self.log_evidence = -math.inf
            self.ess = 0.0
        else:
            self.log_evidence = float(torch.logsumexp(lw, 0) - math.log(lw.shape[0]))
            self.weights = torch.softmax(lw, 0)
            self.ess = float(1.0 / (self.weights ** 2).sum())
        self.pareto_k = pareto_k(lw)
        self._warn()

    def _warn(self):
        hint = "train longer, refine for these observations (refine_steps=...) or draw " \
            "more samples"
        for name, z in self.far_observations:
            warnings.warn(f"observation '{name}' lies far outside the simulations the "
                          f"proposal was trained on ({z:.3g} standard deviations of the "
                          "prior predictive): the amortised proposal is extrapolating and "
                          "its ESS may look good while being wrong; refine for these "
                          "observations (refine_steps=...) and check the model", RuntimeWarning)
        if 0 < self.ess < 0.05 * self.num_samples:
            warnings.warn(f"effective sample size {self.ess:.1f} is below 5% of the "
                          f"{self.num_samples} samples: the estimates are unreliable "
                          f"({hint})", RuntimeWarning)
        if self.pareto_k > k_threshold(self.num_samples):
            warnings.warn(f"Pareto k-hat {self.pareto_k:.2f} is above "
                          f"{k_threshold(self.num_samples):.2f}: the importance weights "
                          f"have a heavy tail and the estimates are unreliable ({hint})",
                          RuntimeWarning)

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
        return masked(self._values[name], self._exists.get(name))

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

    def resample(self, n: Optional[int] = None, seed: Optional[int] = None) -> torch.Tensor:
        """Indices of n draws (default num_samples) resampled by weight,
        systematically, in random order."""
        n = self.num_samples if n is None else int(n)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        idx = systematic(self.weights, n, g)
        return idx[torch.randperm(n, generator=g)]

    def predictive(self, n: int = 1000, seed: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """Posterior predictive: n simulated observation sets, each from the model run
        forward with latents resampled from the weighted posterior. A dict from every
        observed variable to a tensor (n, *shape)."""
        from .predictive import predictive
        return predictive(self, n, seed)

    def plot_predictive(self, path=None, n: int = 1000, seed: Optional[int] = None):
        """The observed data over n posterior predictive draws: a histogram for a
        scalar or for counts, a 90% band and median for a series."""
        from ..plots import plot_predictive
        return plot_predictive(self, self.predictive(n, seed), path=path)

    def to_arviz(self, num_draws: Optional[int] = None, seed: Optional[int] = None):
        """An ArviZ DataTree (arviz-base): ``posterior`` holds num_draws (default
        num_samples) draws resampled by weight, ``observed_data`` the observations,
        ``importance`` the raw draws with their log weights; the ESS, Pareto k-hat and
        log evidence are attributes. Needs ``pip install csis_dsl[arviz]``."""
        from .interop import to_arviz
        return to_arviz(self, num_draws, seed)

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
        how = self.proposal + (f", refined {len(self.refinement.ess)} steps"
                               if self.refinement is not None else "")
        if self.mixture and len(self.mixture) > 1:
            how += ": " + ", ".join(f"{c} {w:.2f}" for c, w in self.mixture.items())
        rows = [f"posterior of {self.model.name}: {self.num_samples} samples "
                f"(proposal: {how}), ESS {self.ess:.1f}, Pareto k {self.pareto_k:.2f}, "
                f"log evidence {self.log_evidence:.3f}",
                f"{'variable':<16}{'mean':>10}{'std':>10}{'5%':>10}{'50%':>10}{'95%':>10}"]
        for name in self.latents + self.model.deterministic:
            v = self.model.checked.vars[name]
            m, s = self.mean(name), self.std(name)
            qs = self.quantile(name, [0.05, 0.5, 0.95])
            n = m.numel()
            for j in range(min(n, max_elements)):
                label = name if n == 1 else f"{name}[{j}]" if m.dim() == 1 else \
                    f"{name}[{', '.join(str(int(i)) for i in torch.unravel_index(torch.tensor(j), m.shape))}]"
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
        def num(x):        # JSON has no infinities
            return x if math.isfinite(x) else None
        out = {"ess": self.ess, "num_samples": self.num_samples,
               "pareto_k": num(self.pareto_k),
               "refine_steps": len(self.refinement.ess) if self.refinement else 0,
               "log_evidence": num(self.log_evidence), "proposal": self.proposal,
               "mixture": self.mixture, "latents": {}}
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
