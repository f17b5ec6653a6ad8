"""Laplace fits of a low-dimensional log density known only by its values.

A collapsed hyperparameter (:mod:`.collapse`: the group effects integrated out by
Besag's identity) or a scale with a quadratic block after it (:mod:`.marginal`: the
block integrated out exactly) has an objective -- its unconstrained value's log
posterior, up to a constant -- that is one number per row and costs an inner fit per
evaluation: differentiating through that fit is neither cheap nor stable. So the fit
here uses evaluations only: saddle-free Newton steps on central differences with a
backtracking line search, the curvature measured again at the scale of the posterior
found, and, for one or two numbers, the moments by adaptive Gauss-Hermite quadrature
around the Laplace fit (a skewed marginal's mean and spread, not its mode and
curvature). Every step runs on all M rows at once, and the points it needs together
(a step's differences, its line search, the quadrature's nodes) are evaluated in one
call: an objective takes K points per row, u (K, M, D) -> (K, M) (the collapsed
objective runs its K M evaluations as one vectorised run, :mod:`..backend.repeat`;
:func:`one_at_a_time` makes one of a single point do).

From a vague prior's location (BUGS's N(0, 1e5) means and Gamma(0.001, 0.001)
precisions, whose logs have a prior sd of 1000) the objective is far from quadratic and
undefined over most of the prior's range: a value that is NaN or +inf counts as
undefined, differences that reach there are measured again narrower, a step that
overshoots is tried down to 1/512 of its length, a fit of few rows whose joint step
fails sweeps one coordinate at a time, and the precision is bounded by what the
differences can measure rather than by the prior's scale.
"""
from __future__ import annotations

import math

import torch

STEPS = 8          # Newton steps at most (each 2D + D(D - 1) / 2 evaluations and a
                   # line search, D the numbers fitted jointly)
HALVINGS = 2       # step halvings tried by each step's line search
MAX_STEP = 3.0     # prior scales one step may move
GRID = {1: 7, 2: 5}  # nodes per dimension of the quadrature of a posterior's moments, by
                     # its dimension (none beyond)
SPREAD = 4.0         # the most the quadrature's variance may differ from the Laplace
                     # fit's, in any direction, for its moments to be used
SWEEP_ROWS = 64      # the most rows a fit may have for a coordinate sweep (:func:`_sweep`)
NARROWER = 3         # times the differences of a coordinate are narrowed where undefined


def one_at_a_time(objective):
    """An objective of one point per row, u (M, D) -> (M,), as one of K points per row
    (K, M, D) -> (K, M), evaluated point by point."""
    return lambda u: torch.stack([objective(p) for p in u])


@torch.no_grad()
def fit_objective(objective, u, loc, scale, widen: bool = False, sd=None, steps: int = STEPS):
    """The Laplace fit, with the moments of one or two numbers, of the log density
    ``objective`` (K points per row, u (K, M, D) -> (K, M), -inf where not defined:
    :func:`one_at_a_time` makes one of a single point do) from ``u``, with prior
    locations and scales ``loc``, ``scale`` (M, D) (the step bounds and the precision
    floor). Returns (mean (M, D), precision (M, D, D), usable (M,)); where not usable
    the precision is the prior's. ``widen``: as :func:`moments`. ``sd`` (M, D): the
    posterior's scale where it is known roughly (a joint fit's), for the first
    differences (otherwise a tenth of the prior's, and the curvature measured again at
    the scale found). ``steps``: Newton steps at most."""
    objective = _defined(objective)
    prec0 = scale ** -2
    h = 0.1 * scale if sd is None else torch.minimum(0.1 * scale, 0.5 * sd).clamp(min=1e-5 * scale)
    f0 = objective(u.unsqueeze(0))[0]
    converged = torch.zeros(u.shape[0], dtype=torch.bool)
    for _ in range(steps):
        g, H, h = _curvature(objective, u, f0, h)
        ok = torch.isfinite(g).all(-1) & torch.isfinite(H).flatten(1).all(-1)
        g = torch.where(ok.unsqueeze(-1), g, torch.zeros_like(g))
        H = torch.where(ok[:, None, None], H, -torch.diag_embed(prec0))
        P, concave = _precision(H, prec0, h)
        step = torch.linalg.solve(P, g.unsqueeze(-1)).squeeze(-1)
        step = step / (step.abs() / (MAX_STEP * scale)).amax(-1, keepdim=True).clamp(min=1.0)
        long = (step.abs() > h).any(-1)
        before = u, f0
        # (several numbers: one round of halvings; where it fails, the sweep below)
        u, f0, step, moved = _line_search(objective, u, f0, step, h, again=u.shape[1] == 1)
        # the quadratic model failed where a step longer than the differences improved
        # nothing: from a vague prior's location, a sweep of one coordinate at a time
        # (in a fit of few rows: it costs about one and a half of these steps on every
        # row evaluated, and the fits of many rows are those of training batches)
        stuck = long & ~moved & torch.isfinite(before[1])
        if u.shape[1] > 1 and u.shape[0] <= SWEEP_ROWS and bool(stuck.any()):
            v, f1, swept = _sweep(objective, *before, h, scale)
            won = stuck & swept & (f1 > f0)
            step = torch.where(won.unsqueeze(-1), v - before[0], step)
            u = torch.where(won.unsqueeze(-1), v, u)
            f0 = torch.where(won, f1, f0)
            moved = moved | won
        # the next differences at the scale of the posterior found
        sd = torch.linalg.inv(P).diagonal(dim1=-2, dim2=-1).clamp(min=1e-30).sqrt()
        wide = h
        h = torch.minimum(0.1 * scale, 0.5 * sd).clamp(min=1e-5 * scale)
        # found once the step is short and the curvature was measured at the scale of
        # the posterior (from a good start, the first differences span many of its
        # sds, where the cross terms of a scale and a location are not quadratic), and
        # was concave (a saddle's precision, its magnitudes, can make any step look
        # short)
        converged = (~moved | (step.abs() < 0.1 * sd).all(-1)) & (wide <= 2 * h).all(-1) \
            & concave
        if bool(converged.all()):
            break
    if not bool(converged.all()):
        # the curvature where the steps ended (after a small last step, the one
        # measured before it serves)
        g, H, h = _curvature(objective, u, f0, h)
        P, concave = _precision(H, prec0, h)
    usable = concave & torch.isfinite(u).all(-1) & torch.isfinite(f0)
    P = torch.where(usable[:, None, None], P, torch.diag_embed(prec0))
    if u.shape[1] in GRID:
        u, P = moments(objective, u, P, f0, usable, widen)
    return u, P, usable


def _sweep(objective, u, f0, h, scale):
    """Newton steps one coordinate at a time (each on its own central difference, with
    the line search), for rows where the joint step improved nothing: from a vague
    prior's location the cross terms mislead it (dyes' grand mean 1527 prior sds of
    0.015 away while both precisions are at 1: the joint step moved the mean by 0.01).
    A location's objective is then a quadratic in it alone, and one step takes it
    there. Returns (u, f0, moved (M,))."""
    moved = torch.zeros_like(f0, dtype=torch.bool)
    for i in range(u.shape[1]):
        def along(v, i=i, base=u):          # v (K, M, 1): coordinate i of u replaced
            w = base.expand(v.shape[:1] + base.shape).clone()
            w[..., i] = v[..., 0]
            return objective(w)
        ui, hi, si = u[:, i:i + 1], h[:, i:i + 1], scale[:, i:i + 1]
        g, H, hi = _curvature(along, ui, f0, hi)
        ok = torch.isfinite(g).all(-1) & torch.isfinite(H).flatten(1).all(-1)
        P, _ = _precision(torch.where(ok[:, None, None], H, -torch.diag_embed(si ** -2)),
                          si ** -2, hi)
        step = torch.where(ok.unsqueeze(-1), g / P[:, :, 0], torch.zeros_like(g))
        step = step.clamp(-MAX_STEP * si, MAX_STEP * si)
        vi, f0, _, now = _line_search(along, ui, f0, step, hi)
        u = torch.cat([u[:, :i], vi, u[:, i + 1:]], -1)
        moved = moved | now
    return u, f0, moved


def _line_search(objective, u, f0, step, h, again=True):
    """The step (M, D) and its halvings, all evaluated in one call: each row moves by
    the longest of them that improves the objective. Where none does and the step is
    longer than the differences ``h`` (M, D) it was measured with in some coordinate,
    one more call (``again``) tries it 8, 64 and 512 times shorter: from a vague prior's location
    the objective is far from quadratic (a precision's log, where the data's spread
    makes it grow as exp(u)), and the Newton step overshoots by orders of magnitude.
    Returns (u, f0, the step taken (where none was, the last fraction tried), moved
    (M,))."""
    M = u.shape[0]
    todo = (step != 0).any(-1)
    if not bool(todo.any()):
        return u, f0, step, torch.zeros_like(todo)
    rows = torch.arange(M)
    moved = torch.zeros_like(todo)
    taken = torch.zeros_like(f0)
    for k, frac in enumerate((0.5 ** torch.arange(HALVINGS + 1, dtype=u.dtype),
                              0.125 ** torch.arange(1, 4, dtype=u.dtype))):
        if k and not again:
            break
        if k:
            todo = todo & ~moved & (step.abs() > h).any(-1)
            if not bool(todo.any()):
                break
        cand = u + frac[:, None, None] * step                         # (K, M, D)
        f1 = objective(cand)                                          # (K, M)
        better = (f1 > f0) & todo
        now = better.any(0)
        first = better.to(torch.int8).argmax(0)                       # the longest
        u = torch.where(now.unsqueeze(-1), cand[first, rows], u)
        f0 = torch.where(now, f1[first, rows], f0)
        taken = torch.where(now, frac[first], torch.where(moved, taken, 0.5 * frac[-1]))
        moved = moved | now
    return u, f0, step * taken.unsqueeze(-1), moved


def hermite_nodes(k: int, dtype=torch.float64):
    """The k nodes and log weights of Gauss-Hermite quadrature (weight exp(-x^2)), by
    Golub and Welsch: the eigenvalues of the Jacobi matrix of the Hermite polynomials,
    and sqrt(pi) times the squared first components of its eigenvectors."""
    off = torch.arange(1, k, dtype=torch.float64).div(2.0).sqrt()
    lam, V = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    log_w = 0.5 * math.log(math.pi) + 2 * V[0].abs().log()
    return lam.to(dtype), log_w.to(dtype)


def _defined(objective):
    """The objective with every value that is not a finite number or -inf (NaN, +inf:
    a degenerate point, where Besag's identity divides by an effect's zero precision)
    taken as -inf, undefined: a +inf once became float32's largest number and won every
    comparison (a vague prior's precision stepped to exp(-3000))."""
    def defined(u):
        f = objective(u)
        return torch.where(torch.isnan(f) | (f == math.inf), torch.full_like(f, -math.inf), f)
    return defined


def _curvature(objective, u, f0, h):
    """Central differences of the objective at u (M, D): gradient (M, D), Hessian
    (M, D, D) and the steps h (M, D) they used. A coordinate whose differences reach
    where the objective is undefined (overflow: a log precision 100 units up, from a
    vague prior's scale of 1000) is measured again a tenth as wide, up to ``NARROWER``
    times, where the value at u is defined."""
    g, H = _differences(objective, u, f0, h)
    for _ in range(NARROWER):
        bad = ~(torch.isfinite(H).all(-1) & torch.isfinite(g)) & torch.isfinite(f0).unsqueeze(-1)
        if not bool(bad.any()):
            break
        h = torch.where(bad, 0.1 * h, h)
        g2, H2 = _differences(objective, u, f0, h)
        redo = bad.any(-1)
        g = torch.where(redo.unsqueeze(-1), g2, g)
        H = torch.where(redo[:, None, None], H2, H)
    return g, H, h


def _differences(objective, u, f0, h):
    """Central differences of the objective at u (M, D): gradient (M, D) and Hessian
    (M, D, D), steps h (M, D); 1 + 2D + D(D - 1) / 2 evaluations less the one given, in
    one call."""
    M, D = u.shape
    eye = torch.eye(D, dtype=u.dtype)
    pairs = [(i, j) for i in range(D) for j in range(i)]
    shifts = torch.cat([eye, -eye] + [(eye[i] + eye[j]).unsqueeze(0) for i, j in pairs])
    f = objective(u + shifts.unsqueeze(1) * h)             # (2D + D(D - 1) / 2, M)
    plus, minus = f[:D], f[D:2 * D]
    g = ((plus - minus) / (2 * h.t())).t()
    H = torch.diag_embed(((plus - 2 * f0 + minus) / h.t() ** 2).t())
    for k, (i, j) in enumerate(pairs):
        H[:, i, j] = H[:, j, i] = (f[2 * D + k] - plus[i] - plus[j] + f0) / (h[:, i] * h[:, j])
    return g, H


def _precision(H, prec0, h):
    """The saddle-free precision of a Hessian (M, D, D) measured by differences h
    (M, D): its eigenvalues' magnitudes, at least a thousandth of the prior's, and at
    most 10^6 times the prior's or 10^8 / h^2 where that is more (finite differences
    at a kink, or float noise, can claim any curvature; one 10^4 times finer than the
    differences is beyond what they measure), and where it was concave. (The prior's
    bound alone held a vague prior's posterior at a thousandth of its sd: dyes' grand
    mean, N(0, 1e5) a priori, 21 a posteriori.)"""
    lam, V = torch.linalg.eigh(-0.5 * (H + H.transpose(-1, -2)))
    floor = 1e-3 * prec0.min(-1, keepdim=True).values
    concave = (lam > 0).all(-1)
    most = torch.maximum(1e6 * prec0.max(-1, keepdim=True).values,
                         1e8 / h.min(-1, keepdim=True).values ** 2)
    lam = lam.abs().clamp(min=floor)
    lam = torch.minimum(lam, most)
    return (V * lam.unsqueeze(-2)) @ V.transpose(-1, -2), concave


def moments(objective, u, P, f0, usable, widen: bool = False):
    """The mean and precision of a collapsed posterior of D <= 2 dimensions by adaptive
    Gauss-Hermite quadrature around its Laplace fit (u, P) (M, D), (M, D, D) (a product
    grid, in the coordinates the fit's covariance whitens): the Gaussian with its
    moments, not its curvature at the mode, which a skewed marginal (a location whose
    spread grows with a group sd) leaves too light in its long tail. The Laplace fit is
    kept where the quadrature is not finite, or strays from it (a variance SPREAD times
    its own in some direction, a mean 2 of its sds away): its weight then sits on a few
    nodes and says nothing about the moments. ``widen``: each direction where the
    moments' variance exceeds the Laplace fit's is widened by that ratio again (a
    proposal's tail allowance)."""
    M, D = u.shape
    x, log_w = hermite_nodes(GRID[D], u.dtype)
    grid = torch.cartesian_prod(*[x] * D).reshape(-1, D)             # (K^D, D)
    lw = torch.cartesian_prod(*[log_w] * D).reshape(-1, D).sum(-1)
    L = torch.linalg.cholesky_ex(torch.cholesky_inverse(torch.linalg.cholesky_ex(P)[0]))[0]
    z = u.unsqueeze(1) + math.sqrt(2.0) * grid @ L.transpose(-1, -2)    # (M, K^D, D)
    f = objective(z.transpose(0, 1)).t()                             # (M, K^D)
    w = torch.softmax(torch.nan_to_num(f - f0.unsqueeze(-1), nan=-math.inf)
                      + lw + (grid ** 2).sum(-1), -1).unsqueeze(-1)   # (M, K^D, 1)
    w = torch.nan_to_num(w, nan=0.0)
    # the moments in the whitened coordinates (the Laplace fit: mean 0, covariance I)
    shift = (w * grid).sum(1) * math.sqrt(2.0)                       # (M, D)
    dev = math.sqrt(2.0) * grid - shift.unsqueeze(1)
    white = (w * dev).transpose(-1, -2) @ dev                        # (M, D, D)
    lam, V = torch.linalg.eigh(white)
    ok = usable & torch.isfinite(lam).all(-1) & (lam > 1 / SPREAD).all(-1) \
        & (lam < SPREAD).all(-1) & (shift.norm(dim=-1) < 2.0)
    if widen:
        # where the moments are wider than the Laplace fit the marginal is skewed, its
        # long tail heavier than the Gaussian of its moments: widened by that ratio once
        # more (a scale's marginal with few data, 1.1 -> 1.2; with many, 1.00 -> 1.00)
        white = (V * (lam * lam.clamp(min=1.0)).unsqueeze(-2)) @ V.transpose(-1, -2)
    white = torch.where(ok[:, None, None], white, torch.eye(D, dtype=u.dtype))
    shift = torch.where(ok.unsqueeze(-1), shift, torch.zeros_like(shift))
    mean = u + (shift.unsqueeze(1) @ L.transpose(-1, -2)).squeeze(1)
    prec, bad = torch.linalg.inv_ex(L @ white @ L.transpose(-1, -2))
    ok = ok & (bad == 0) & torch.isfinite(prec).flatten(1).all(-1)
    return torch.where(ok.unsqueeze(-1), mean, u), torch.where(ok[:, None, None], prec, P)
