"""Observation-targeted refinement: adapt a copy of the amortised proposal to one set of
observations before drawing the samples.

The update is the wake-phase proposal update of reweighted wake-sleep (Le et al. 2019):
draw K traces from the current proposal, weigh them by p(latents, obs) / q(latents |
obs), and take a gradient step on  -sum_k w_k log q(latents_k | obs)  with the
normalised weights held fixed. That is a stochastic gradient of KL(posterior || q), the
mass-covering direction importance sampling needs, and it works for discrete latents
as well as continuous ones.

Far from the posterior the weights are degenerate (one trace has them all), and a step
on them would collapse the proposal onto one point. So each step tempers the log
weights by the largest alpha in (0, 1] whose weights keep an effective sample size of
``min_ess`` of the K: the step then moves q towards q^(1 - alpha) p^alpha, a bridge
from the proposal to the posterior, and alpha reaches 1 as q approaches the posterior.

Whatever the refinement does, the samples it returns are weighted by the exact
p / q of the refined proposal, so the estimate stays asymptotically exact and the ESS
honest. The amortised network is not touched.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from ..backend.observations import Observations
from .seeding import seeded


def match_moments(net, drawn, w, rate):
    """Closed-form steps of every site's adapters towards the weighted draws (each
    family's ``adapt_step``): per instance, the weights of the traces where it exists,
    normalised.

    A chain located by its look-ahead messages is left to the gradient steps: its
    proposal is already the smoothing conditional given the values before it, and
    moment matching its marginals, with the mismatch of those values in the weights,
    would break that conditional (measured on the Nile model: ESS/N 0.09 with, 0.46
    without)."""
    for info in net.latents:
        if info.name in drawn.looked_ahead:
            continue
        x = drawn.proposed[info.name]
        K = x.shape[0]
        x = x.reshape(K, info.n, info.de)
        wi = w.detach().reshape(K, 1).expand(K, info.n)
        present = drawn.present.get(info.name)
        if present is not None:
            wi = wi * present.to(wi.dtype)
        wi = wi / wi.sum(0, keepdim=True).clamp(min=1e-30)
        ctx = drawn.contexts.get(info.name)
        net.families[info.name].adapt_step(x, wi, net.adapters[info.name], rate,
                                           None if ctx is None else ctx.expand(K, info.n, -1),
                                           present)


def tempered(log_w: torch.Tensor, min_ess: float) -> float:
    """The largest alpha in (0, 1] with ESS(softmax(alpha log_w)) >= min_ess (found on a
    log scale: far from the posterior, log weights can spread over many orders of
    magnitude)."""
    def ess(log_a):
        w = torch.softmax(10.0 ** log_a * log_w, 0)
        return float(1.0 / (w ** 2).sum())
    if ess(0.0) >= min_ess:
        return 1.0
    lo, hi = -40.0, 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ess(mid) >= min_ess else (lo, mid)
    return 10.0 ** lo


@dataclass
class Refinement:
    """A proposal adapted to one set of observations: ``guide`` (a copy of the model's,
    refined) and the trace of the refinement (ESS of each step's K draws, and the
    tempering used)."""
    model: object
    guide: object
    observations: Observations
    ess: List[float] = field(default_factory=list)
    alpha: List[float] = field(default_factory=list)
    draws: int = 0
    start_ess: float = 0.0     # ESS of the starting and the refined proposal on the same
    final_ess: float = 0.0     # number of fresh draws
    kept_start: bool = False   # the refined proposal was not better: the start is kept

    def infer(self, num_samples: int = 1000, seed: Optional[int] = None,
              defensive: float = 0.1, program="auto"):
        """Importance sampling with the refined proposal: a Posterior (``defensive`` and
        ``program``: see ``CompiledModel.infer``; the program's own proposal stays in
        the mixture where it gives more effective samples than the refined network, as
        when a short refinement of a network trained briefly has not caught up with it)."""
        from ..device import on
        from .posterior import importance
        with on(self.model.device):
            return importance(self.model, self.observations, num_samples, seed=seed,
                              guide=self.guide, refinement=self, defensive=defensive,
                              program=program)


def refine(model, observations, steps: int = 200, draws: int = 256, lr: float = 1e-3,
           min_ess: float = 0.3, seed: Optional[int] = None, progress: bool = False,
           guide=None, max_seconds: Optional[float] = None,
           adapt_rate: float = 0.5, search_below: float = 0.15) -> Refinement:
    """Refine a copy of ``guide`` (default: the model's) for ``observations``: ``steps``
    updates of ``draws`` traces each (fewer if ``max_seconds`` runs out first)."""
    obs = Observations.of(model.checked, observations, require_all=True)
    start = guide if guide is not None else model.guide
    guide = copy.deepcopy(start)
    params = [p for p in guide.parameters() if p.requires_grad]
    guide.net.add_adapters()
    opt = torch.optim.Adam(params, lr=lr)
    out = Refinement(model, guide, obs)
    bar = tqdm(range(int(steps)), disable=not progress, desc="refining", unit="step",
               dynamic_ncols=True)
    t0 = time.perf_counter()
    smooth, best = None, None
    with seeded(seed):
        for _ in bar:
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                break
            values, log_q, drawn = guide.propose(obs, draws, grad=True, present=True)
            with torch.no_grad():
                log_latent, log_obs, _ = model.pyro_model.score(draws, obs, values)
                log_w = (log_latent + log_obs - log_q.detach()).double()
                log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)
            if not bool(torch.isfinite(log_w).any()):
                continue            # nothing the model allows was proposed: draw again
            if not bool(torch.isfinite(log_q).all()):
                log_q = torch.where(torch.isfinite(log_q), log_q, log_q.detach().nan_to_num(0.0))
            alpha = tempered(log_w, min_ess * draws)
            w = torch.softmax(alpha * log_w, 0).to(log_q.dtype)
            keep = w > 0
            loss = -(w[keep] * log_q[keep]).sum()
            opt.zero_grad()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, 100.0)
            if torch.isfinite(norm):   # a draw at the edge of the support can give an
                opt.step()             # infinite gradient: skip that step, not the run
            full = torch.softmax(log_w, 0)
            ess_now = float(1.0 / (full ** 2).sum())
            if ess_now < search_below * draws:
                # far from the posterior (the search): closed-form moves of the
                # adapters towards the bridge; near it, the gradient steps alone
                match_moments(guide.net, drawn, w, adapt_rate)
            out.ess.append(ess_now)
            out.alpha.append(alpha)
            # the smoothed ESS (one step's is noisy): keep the state where it peaked,
            # since an unlucky step late in the run can undo what the earlier ones won
            smooth = ess_now if smooth is None else 0.7 * smooth + 0.3 * ess_now
            if best is None or smooth > best[0]:
                best = (smooth, {k: v.detach().clone() for k, v in guide.state_dict().items()})
            out.draws += draws
            bar.set_postfix(ess=f"{out.ess[-1]:.0f}/{draws}", alpha=f"{alpha:.2f}")
        bar.close()
        # never worse than where it started: the start, the end and the state where
        # the smoothed ESS peaked, compared on fresh draws from the mixture infer uses
        n = max(2048, 4 * draws)
        out.start_ess, out.final_ess = (ess_of(model, g, obs, n) for g in (start, guide))
        if best is not None and len(out.ess) > 1:
            end = {k: v.detach().clone() for k, v in guide.state_dict().items()}
            guide.load_state_dict(best[1])
            peak = ess_of(model, guide, obs, n)
            if peak > out.final_ess:
                out.final_ess = peak
            else:
                guide.load_state_dict(end)
    if out.final_ess < out.start_ess:
        out.guide, out.kept_start = start, True
    return out


@torch.no_grad()
def ess_of(model, guide, obs, n, defensive=0.1) -> float:
    """The ESS of n fresh draws from the mixture ``infer`` draws from with ``guide``:
    its defensive mixture with the program's own proposal at the share a pilot picks
    (:func:`.posterior.choose_program_share`), not of the network's proposal alone:
    where the pilot gives the program most of the draws (surgical mortality: 85%), the
    network alone says little about what infer will get, and a refined network better
    alone can be worse there."""
    from .posterior import choose_program_share, mixture_draws, shares_of
    shares = shares_of(choose_program_share(model, guide, obs, defensive), defensive)
    values, log_q, _ = mixture_draws(guide, obs, n, shares)
    log_latent, log_obs, _ = model.pyro_model.score(n, obs, values)
    log_w = (log_latent + log_obs - log_q).double()
    log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)
    if not bool(torch.isfinite(log_w).any()):
        return 0.0
    w = torch.softmax(log_w, 0)
    return float(1.0 / (w ** 2).sum())
