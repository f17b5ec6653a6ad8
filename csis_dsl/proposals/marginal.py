"""Marginal Laplace: the observations a site shares with latents proposed after it.

A site's informed proposal (:mod:`.families.continuous`) is located by the
observations that depend on it -- but only those that read nothing proposed after it
(:func:`.context.informs`). In a regression written with one scalar per coefficient::

    intercept ~ Normal(0, 1000);  slope ~ Normal(0, 1000);  sigma ~ HalfNormal(100);
    for n in range(N) { observe y[n] ~ Normal(intercept + slope * x[n], sigma); }

every observation reads ``slope`` and ``sigma``, proposed after ``intercept``: the
intercept's proposal had nothing to go on but the network, which has only seen the
posteriors of prior simulations (Old Faithful: amortised ESS 0, means 7 sd off).

The proposal ``intercept`` should match is its marginal posterior given what was drawn
before it: p(intercept | y) = integral of p(intercept, slope, sigma | y) over the later
latents. This module computes its Laplace approximation: Newton steps on the joint
log density of the site and the later latents (each prior as the Gaussian the proposal
locates itself with, in the family's unconstrained space, times the observations'
likelihood), and the site's marginal from the joint precision at the mode. It is
handed to the family as a Gaussian *message* (the site's marginal divided by its
prior), the same form as a chain's look-ahead (:mod:`.lookahead`).

The later latents' modes are kept as *hints*: the next site of the block (``slope``,
then ``sigma``) starts its own Newton steps there, not at its prior, so it needs one or
two steps where the first needed several.

A message only locates the proposal; the proposal's own density is what is scored, so
the importance weights stay exact either way. For a linear-Gaussian likelihood with
known scale the marginal is exact; with an unknown scale (``sigma`` among the later
latents) it is a Laplace approximation in log sigma, which the network corrects.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch

from ..backend.repeat import in_runs, repeat_rows
from .families.continuous import hessian, local_fit, prior_terms
from .quadrature import fit_objective, one_at_a_time

STEPS = 6           # Newton steps at most (each a pass over the observations with its
                    # gradient and Hessian)
REFIT_STEPS = 2     # ... from the conditional of an earlier site's fit
HALVINGS = 3        # step halvings tried by each step's line search (objective only)
MAX_STEP = 5.0      # prior scales a step may move any coordinate outside a quadratic block
PROFILE_STEPS = 3   # Newton steps at most of a profile (from the joint mode, at its scale)


def _evaluate(loglik, z, sizes, loc, prec, with_hessian=True, priors=None):
    """The objective (log prior + log-likelihood) at z (M, D), and with
    ``with_hessian`` its gradient, the Hessian of the log-likelihood (the families'
    :func:`local_fit` and :func:`hessian`) and the prior's curvature (M, D); None where
    the likelihood does not depend on z. Each variable's prior is the Gaussian
    N(loc, 1 / prec), or its exact log density where ``priors`` gives one
    (:func:`prior_terms`)."""
    def joint(t):
        return loglik(list(t.split(sizes, -1)))
    prior = -0.5 * prec * (z - loc) ** 2
    pg, pc = -prec * (z - loc), prec
    if priors is not None and any(p is not None for p in priors):
        zs, precs = z.split(sizes, -1), prec.split(sizes, -1)
        vals, grads, curvs = list(prior.split(sizes, -1)), list(pg.split(sizes, -1)), \
            list(pc.expand_as(z).split(sizes, -1))
        for k, p in enumerate(priors):
            if p is not None:
                lp, g, c = prior_terms(p, zs[k], precs[k])
                vals[k], grads[k], curvs[k] = lp.unsqueeze(-1), g, c
        prior, pg, pc = torch.cat(vals, -1), torch.cat(grads, -1), torch.cat(curvs, -1)
    prior = prior.sum(-1)
    if not with_hessian:
        with torch.no_grad():
            return joint(z) + prior
    fit = local_fit(joint, lambda t: t, z)
    if fit is None:
        return None
    ll, g, hvp = fit
    return ll + prior, g + pg, hessian(hvp, z, joint=True), pc.expand_as(z)


def joint_mode(loglik: Callable, locs: List[torch.Tensor], scales: List[torch.Tensor],
               start: Optional[List[Optional[torch.Tensor]]] = None, steps: int = STEPS,
               exact: Optional[List[bool]] = None,
               priors: Optional[List[Optional[Callable]]] = None,
               ) -> Optional[Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """The mode of N(locs, scales^2) x likelihood over several variables together, and
    the precision there.

    ``locs``, ``scales``: one (M, d_k) per variable, its prior in unconstrained space;
    ``loglik(us)``: the log-likelihood (M,) at unconstrained values ``us`` (one (M, d_k)
    each; the caller maps them to the support). ``start``: where to begin, per variable
    (None: its prior location). Each step is a saddle-free Newton step (directions of
    positive curvature count with their absolute curvature, so that a point where a
    location and a scale interact -- a regression's coefficients and its noise far from
    their mode -- is not left along a direction of tiny prior precision), at most
    ``MAX_STEP`` prior scales in any coordinate, halved until it improves the objective
    (objective evaluations only). In the returned precision, directions of positive
    curvature are dropped.

    ``exact``: per variable, whether the likelihood is a quadratic in those variables
    together given the others (:func:`~csis_dsl.middle.affine.quadratic_block`: a
    regression's coefficients given its noise scale). The first step then moves those
    alone, to their exact conditional mode, and no step is clamped in them.

    ``priors``: per variable, its exact log prior density at unconstrained values
    (M, 1) -> (M,), or None (the Gaussian N(loc, scale^2)): the steps then climb the
    exact objective, with the prior's own curvature (at least a tenth of the
    Gaussian's, :func:`~.families.continuous.prior_terms`).

    Returns (the mode split per variable, the joint precision (M, D, D), where (M,) the
    fit is usable), or None where the likelihood does not depend on the variables."""
    sizes = [t.shape[-1] for t in locs]
    exact = exact or [False] * len(locs)
    q = torch.cat([torch.full((k,), bool(e)) for k, e in zip(sizes, exact)])
    block_first = bool(q.any()) and not bool(q.all())
    loc, scale = torch.cat(locs, -1), torch.cat(scales, -1)
    prec = scale ** -2
    M, D = loc.shape
    z = loc.clone()
    if start is not None and any(s is not None for s in start):
        z = torch.cat([s.reshape(M, -1) if s is not None else l for s, l in zip(start, locs)], -1)
        z = torch.where(torch.isfinite(z), z, loc)
    fit = _evaluate(loglik, z, sizes, loc, prec, priors=priors)
    if fit is None:
        return None
    obj, grad, H, curv = fit
    fine = torch.isfinite(obj) & torch.isfinite(grad).all(-1) & torch.isfinite(H).flatten(1).all(-1)
    if not bool(fine.all()) and not torch.equal(z, loc):     # a bad start: the prior's
        fit0 = _evaluate(loglik, loc, sizes, loc, prec, priors=priors)
        if fit0 is not None:
            bad = ~fine
            z = torch.where(bad.unsqueeze(-1), loc, z)
            obj = torch.where(bad, fit0[0], obj)
            grad = torch.where(bad.unsqueeze(-1), fit0[1], grad)
            H = torch.where(bad.reshape(M, 1, 1), fit0[2], H)
            curv = torch.where(bad.unsqueeze(-1), fit0[3], curv)
    stalled = torch.zeros(M, dtype=torch.bool)
    for it in range(steps + 1):
        ok = torch.isfinite(obj) & torch.isfinite(grad).all(-1) & torch.isfinite(H).flatten(1).all(-1)
        diag = torch.diag_embed(curv)          # the prior's curvature
        Hs = -0.5 * (H + H.transpose(-1, -2))
        Hs = torch.where(ok.reshape(M, 1, 1), Hs, torch.zeros_like(Hs))
        lam, V = torch.linalg.eigh(Hs)
        Vt = V.transpose(-1, -2)
        P = diag + (V * lam.clamp(min=0.0).unsqueeze(-2)) @ Vt
        if it == steps:
            break
        g = torch.where(ok.unsqueeze(-1), grad, torch.zeros_like(grad))
        if it == 0 and block_first:      # the quadratic block alone, to its exact mode
            idx = q.nonzero().squeeze(-1)
            sub = diag[:, idx][:, :, idx] + Hs[:, idx][:, :, idx]
            step = torch.zeros_like(g)
            step[:, idx] = torch.linalg.solve_ex(sub, g[:, idx].unsqueeze(-1))[0].squeeze(-1)
        else:
            P_step = diag + (V * lam.abs().unsqueeze(-2)) @ Vt
            step = torch.linalg.solve_ex(P_step, g.unsqueeze(-1))[0].squeeze(-1)
        step = torch.where(torch.isfinite(step), step, torch.zeros_like(step))
        if not bool(q.all()):
            ratio = (step.abs() / (MAX_STEP * scale))[:, ~q].amax(-1, keepdim=True)
            step = step / ratio.clamp(min=1.0)
        # done where the step is under 0.03 posterior sds (the Newton decrement), or
        # where no step improved the objective (its float resolution near the mode)
        dec = (step.unsqueeze(-2) @ P @ step.unsqueeze(-1)).reshape(M)
        todo = ok & (dec >= 1e-3) & ~stalled
        if not bool(todo.any()):
            break
        t, moved = line_search(lambda x: _evaluate(loglik, x, sizes, loc, prec, False, priors),
                               z, step, obj, todo, HALVINGS + 1)
        stalled = stalled | (todo & ~moved)
        if not bool(moved.any()):
            break
        z_new = z + torch.where(moved, t, torch.zeros_like(t)).unsqueeze(-1) * step
        fit = _evaluate(loglik, z_new, sizes, loc, prec, priors=priors)
        keep = moved & torch.isfinite(fit[0])
        z = torch.where(keep.unsqueeze(-1), z_new, z)
        obj = torch.where(keep, fit[0], obj)
        grad = torch.where(keep.unsqueeze(-1), fit[1], grad)
        H = torch.where(keep.reshape(M, 1, 1), fit[2], H)
        curv = torch.where(keep.unsqueeze(-1), fit[3], curv)
    ok = torch.isfinite(obj)
    if not bool(ok.any()):
        return None
    return list(z.split(sizes, -1)), P, ok


def exact_mode(loglik: Callable, locs: List[torch.Tensor], scales: List[torch.Tensor],
               ) -> Optional[Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """:func:`joint_mode` where the log-likelihood is known to be a quadratic in all
    the variables together (:func:`~csis_dsl.middle.affine.quadratic_block`): one
    Newton step from the prior's location is the exact mode -- one gradient and its
    Hessian, no search, no second pass. Returns what :func:`joint_mode` returns."""
    sizes = [t.shape[-1] for t in locs]
    loc, scale = torch.cat(locs, -1), torch.cat(scales, -1)
    prec = scale ** -2
    fit = _evaluate(loglik, loc, sizes, loc, prec)
    if fit is None:
        return None
    obj, grad, H, _ = fit
    P = torch.diag_embed(prec) - 0.5 * (H + H.transpose(-1, -2))
    L, bad = torch.linalg.cholesky_ex(P)
    ok = (bad == 0) & torch.isfinite(obj) & torch.isfinite(grad).all(-1)
    g = torch.where(ok.unsqueeze(-1), grad, torch.zeros_like(grad))
    L = torch.where(ok.reshape(ok.shape + (1, 1)), L, torch.diag_embed(scale.reciprocal()))
    z = loc + torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
    P = torch.where(ok.reshape(ok.shape + (1, 1)), P, torch.diag_embed(prec))
    if not bool(ok.any()):
        return None
    return list(z.split(sizes, -1)), P, ok


def line_search(objective: Callable, z: torch.Tensor, step: torch.Tensor, obj: torch.Tensor,
                todo: torch.Tensor, tries: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Backtracking per row: the step (M, D) from z, halved up to ``tries`` - 1 times
    where ``objective`` (M,) does not improve on ``obj``; only rows ``todo``. Returns
    (the fraction t (M,) of the step taken, where (M,) it improved)."""
    M = z.shape[0]
    t = torch.where(todo, torch.ones(M, dtype=z.dtype), torch.zeros(M, dtype=z.dtype))
    moved = torch.zeros(M, dtype=torch.bool)
    for _ in range(tries):
        trial = objective(z + t.unsqueeze(-1) * step)
        moved = moved | (todo & ~moved & torch.isfinite(trial) & (trial > obj))
        t = torch.where(moved, t, 0.5 * t)
        if bool((moved | ~todo).all()):
            break
    return t, moved


def site_message(mode: torch.Tensor, P: torch.Tensor, loc0: torch.Tensor,
                 scale0: torch.Tensor, d: int, usable: Optional[torch.Tensor] = None,
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian factor (precision, information), (M, d) each, that turns the site's
    prior N(loc0, scale0^2) (its first d coordinates of the joint) into the marginal
    of the joint Laplace approximation N(mode, P^-1): its precision less the prior's
    (negative where the fit, made with the exact prior, is wider than the Gaussian
    matched to it: a half-normal scale's long reach towards 0), and a location at the
    marginal's mode; none (zeros) where not ``usable``."""
    cov = torch.linalg.inv_ex(P)[0][..., :d, :d].diagonal(dim1=-2, dim2=-1)
    return gaussian_message(mode[..., :d], cov, loc0, scale0, usable)


def gaussian_message(mean: torch.Tensor, var: torch.Tensor, loc0: torch.Tensor,
                     scale0: torch.Tensor, usable: Optional[torch.Tensor] = None,
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian factor (precision, information), (M, d) each, that turns the prior
    N(loc0, scale0^2) into N(mean, var) (elementwise); zeros where not ``usable``."""
    prior = scale0 ** -2
    marg = var.reciprocal()
    lam = marg - prior
    info = mean * marg - prior * loc0
    ok = torch.isfinite(lam) & torch.isfinite(info) & (var > 0)
    if usable is not None:
        ok = ok & usable.unsqueeze(-1)
    return torch.where(ok, lam, torch.zeros_like(lam)), torch.where(ok, info, torch.zeros_like(info))


def block_profile(loglik: Callable, mode: torch.Tensor, P: torch.Tensor,
                  locs: List[torch.Tensor], scales: List[torch.Tensor],
                  site_prior: Optional[Callable] = None, runtime=None, chunk: int = 1,
                  ) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The marginal of a scalar site (the first coordinate of the joint fit (mode, P))
    whose later variables are a quadratic block given it (a regression's noise scale,
    then its coefficients): the block integrated out exactly -- at each value u of the
    site, its conditional mode by one Newton step (exact: a quadratic) and the log
    determinant of its precision --

        log p(u | y) = max_b log p(u, b, y) - 1/2 log det(-d2/db2 log p(u, b, y)) + c,

    then fitted by :func:`.quadrature.fit_objective` (its moments by quadrature). The
    joint fit's marginal (its mode and curvature in u) is that of the joint mode, which
    with few observations per coefficient sits at too small a scale (the block's
    determinant is missing: a location-scale model of n observations has sigma^-n
    where the marginal has sigma^-(n-1)) and is too narrow for its skewed, long-tailed
    posterior. Its long tail (sigma^-(n-k) in log sigma: exponential) is heavier than
    the moments' Gaussian, whose weights then grow without bound out there (Pareto
    k-hat ~1 on Student's sleep data): the variance is widened by the moments' ratio
    to the Laplace fit's (1.1 there; 1.00 with hundreds of observations).
    ``site_prior(u)`` (M, 1) -> (M,): the site's exact prior log density in the
    unconstrained value (with the Jacobian), in place of its Gaussian, or None.
    ``runtime``: the runtime ``loglik`` and ``site_prior`` read, which then take up to
    ``chunk`` points per row in one run of its traces repeated (K M rows, block k a
    copy of the M: :func:`..backend.repeat.in_runs`); without it, one at a time.
    Returns (mean (M, 1), precision (M, 1, 1), usable (M,)), or None."""
    sizes = [t.shape[-1] for t in locs]
    loc, scale = torch.cat(locs, -1), torch.cat(scales, -1)
    prec = scale ** -2

    def objective(u, K=1):             # u (K M, 1), block k the k-th point of each row
        mode_, P_, loc_, prec_ = (repeat_rows(t, K, mode.shape[0]) for t in (mode, P, loc, prec))
        z = conditional_mean(mode_, P_, torch.cat([u, mode_[:, 1:]], -1), [0])
        fit = _evaluate(loglik, z, sizes, loc_, prec_)
        if fit is None:
            return torch.full(u.shape[:1], -math.inf, dtype=u.dtype)
        obj, g, H, _ = fit
        A = torch.diag_embed(prec_[:, 1:]) - 0.5 * (H + H.transpose(-1, -2))[:, 1:, 1:]
        L, bad = torch.linalg.cholesky_ex(A)
        step = torch.cholesky_solve(g[:, 1:].unsqueeze(-1), L).squeeze(-1)
        f = obj + 0.5 * (g[:, 1:] * step).sum(-1) - L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        if site_prior is not None:
            f = f + 0.5 * prec_[:, 0] * (u[:, 0] - loc_[:, 0]) ** 2 + site_prior(u)
        return torch.where(bad == 0, f, torch.full_like(f, -math.inf))   # NaN: undefined
    sd = torch.linalg.inv_ex(P)[0][:, :1, 0].clamp(min=1e-30).sqrt()     # the joint fit's
    points = one_at_a_time(objective) if runtime is None else \
        (lambda u: in_runs(runtime, u, chunk, objective))
    return fit_objective(points, mode[:, :1], locs[0], scales[0], widen=True, sd=sd,
                         steps=PROFILE_STEPS)


def conditional_mean(mode: torch.Tensor, P: torch.Tensor, values: torch.Tensor,
                     known) -> torch.Tensor:
    """The mean (M, D) of N(mode, P^-1) given the coordinates ``known`` (indices) at
    ``values`` (M, D; the others ignored): the known ones are the values, the others
    mode_u - P_uu^-1 P_uk (values_k - mode_k)."""
    D = mode.shape[-1]
    k = torch.tensor(sorted(known), dtype=torch.long)
    u = torch.tensor([i for i in range(D) if i not in set(known)], dtype=torch.long)
    out = values.clone()
    if u.numel() == 0:
        return out
    shift = P[:, u][:, :, k] @ (values[:, k] - mode[:, k]).unsqueeze(-1)
    du = torch.linalg.solve_ex(P[:, u][:, :, u], shift)[0].squeeze(-1)
    cu = mode[:, u] - du
    out[:, u] = torch.where(torch.isfinite(cu), cu, mode[:, u])
    return out
