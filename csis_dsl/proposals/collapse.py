"""Collapsed locations: a hyperparameter located with its group effects integrated out.

In a hierarchical model the observations are read through group effects proposed after
the hyperparameters (eight schools: ``theta[j] ~ Normal(mu, tau)``, ``y[j] ~
Normal(theta[j], sigma[j])``; Grunfeld: the firm effects ``ab`` and the noise
``sigma``). The effects are informed exactly once the hyperparameters are drawn (their
likelihood is a quadratic: :mod:`..middle.affine`), but the hyperparameters themselves
had only the network, which has seen only prior simulations.

The posterior a hyperparameter's proposal should match is its marginal given what was
drawn before it, with the effects integrated out. Where the effects are Gaussian given
the rest, that integral is exact by Besag's candidate identity at their conditional
mode z*:

    log p(y | theta) = log p(y | z*, theta) + log p(z* | theta) - log q(z* | y, theta),

q the effects' informed proposal location (their exact conditional: the family's
Laplace step, :meth:`~.families.continuous.ContinuousProposal.inform`). Where the
effects are not Gaussian given the rest (a random effect on log-odds, read through
binomial counts), q is their Laplace approximation and the identity is the Laplace
approximation of the marginal, as in INLA and lme4's glmer. This module evaluates it
at candidate values of the site -- and of the later hyperparameters the effects' priors
or their observations read (eight schools' ``tau`` when ``mu`` is proposed; a
regression's coefficients), which are fitted jointly -- finds the mode in their
unconstrained values by saddle-free Newton steps on finite differences (a few
evaluations each, no differentiation through the inner fit), and places the site at
its marginal of the Gaussian it gives -- the form of the marginal locations
(:mod:`.marginal`), whose hints the later hyperparameters then start from.

Three things decide whether that Gaussian is where the posterior is (surgical
mortality: a group sd under a half-normal prior, one hospital with no deaths):

* the priors are the exact ones, in the unconstrained values with their Jacobians --
  not the Gaussians matched to their moments that the families locate with: the log of
  a half-normal scale reaches far towards 0, where the lognormal matched to it has
  almost nothing, and the fit put the sd 0.6 posterior sd high;
* the identity holds at the effects' conditional mode, so a Laplace fit of an effect
  that is not Gaussian gets the Newton steps to reach it (``EFFECT_STEPS``; two left
  the location 0.26 sd low);
* for one or two numbers the fit's mean and covariance are its moments by adaptive
  Gauss-Hermite quadrature around the Laplace fit (:func:`_moments`), not its mode and
  curvature, which leave a skewed marginal's long tail too light.

Where the
effects' prior has correlations the proposal's location leaves out (a
MultivariateNormal with a full scale), the identity is approximate too: it only locates
the proposal, whose own density is what the weights use, so they stay exact.
"""
from __future__ import annotations

import math

import torch

from ..backend.values import Stored
from ..errors import ModelRuntimeError
from .informing import gather_index, informing_loglik

STEPS = 8          # Newton steps at most (each 2D + D(D - 1) / 2 evaluations and a
                   # line search, D the sites fitted jointly)
HALVINGS = 2       # step halvings tried by each step's line search
MAX_STEP = 3.0     # prior scales one step may move
EFFECT_STEPS = 3   # Newton steps at most of the effects' conditional mode (the identity
                   # holds at the mode: a Laplace fit short of it misjudges the integral)
GRID = {1: 7, 2: 5}  # nodes per dimension of the quadrature of a collapsed posterior's
                     # moments, by its dimension (none beyond)
SPREAD = 4.0         # the most the quadrature's variance may differ from the Laplace
                     # fit's, in any direction, for its moments to be used


class Collapsed:
    """The collapsed log-likelihood of one site, as a function of its unconstrained
    value: ``sp`` the site's :class:`~.site_proposal.SiteProposal`, ``observed`` and
    ``effects`` the static choice (:func:`.context.collapsible`)."""

    def __init__(self, sp, observed, effects, later=(), M=None, observations=None):
        self.sp, self.effects = sp, effects
        # the rows fitted and their observations: the site's, or fewer (distinct rows)
        self.M = sp.state.M if M is None else M
        self.obs = sp.state.observations if observations is None else observations
        # the site, then the later hyperparameters fitted jointly with it
        self.names = [sp.info.name] + list(later)
        self.fams = [sp.net.families[n] for n in self.names]
        self.sizes = [f.udim for f in self.fams]       # the columns of each in u
        net, rt = sp.net, sp.runtime
        self.informing = {z: net.inputs.informing[z] for z in effects}
        self.direct = [o for o in observed
                       if not any(o in names for names in self.informing.values())]
        self.gathered = {z: {o: gather_index(rt, o, e, net.families[z].info.n)
                             for o, e in net.inputs.gathers.get(z, {}).items()}
                         for z in effects}

    def _at(self, u: torch.Tensor):
        """Each fitted site's value at unconstrained u (M, D): {name: (its columns of u
        (M, 1, udim), the transformed value)} and the overlay of the sites' values."""
        at, overlay = {}, {}
        for n, fam, part in zip(self.names, self.fams, u.split(self.sizes, -1)):
            part = part.reshape(self.M, 1, fam.udim)
            x = fam.transform(part)
            at[n] = part, x
            overlay[n] = Stored(x.reshape((self.M,) + tuple(fam.info.elem_shape)))
        return at, overlay

    def __call__(self, u: torch.Tensor, prior: bool = False) -> torch.Tensor:
        """log p(observations | the site and the later hyperparameters at
        transform(u), what was drawn before) with the effects integrated out, (M,), for
        u (M, D) (each one's unconstrained values in turn); with ``prior``, plus their
        exact prior log density (:meth:`_log_prior`)."""
        rt, M, obs = self.sp.runtime, self.M, self.obs
        at, overlay = self._at(u)
        total = torch.zeros(M, dtype=u.dtype)
        for o in self.direct:
            lp = rt.stmt_log_prob(rt.checked.vars[o].stmts[0], obs[o], overlay)
            total = total + lp.reshape(M, -1).sum(-1)
        for z in self.effects:
            total = total + self._effect(z, overlay)
        if prior:
            total = total + self._log_prior(at, overlay)
        return total

    def log_prior(self, u: torch.Tensor) -> torch.Tensor:
        """The exact prior log density of the fitted sites at unconstrained u (M, D)."""
        return self._log_prior(*self._at(u))

    def _log_prior(self, at, overlay) -> torch.Tensor:
        """The exact prior log density of the site and the later hyperparameters at their
        values ``at`` (:meth:`_at`), the transforms' Jacobians included, (M,): not the
        Gaussian matched to the prior's moments, which misplaces a skewed posterior (a
        group sd under a half-normal prior: its log reaches far towards 0, where the
        lognormal matched to it has almost nothing)."""
        rt, M = self.sp.runtime, self.M
        total = 0.0
        for n, fam in zip(self.names, self.fams):
            part, x = at[n]
            lp = rt.stmt_log_prob(rt.checked.vars[n].stmts[0], overlay[n].t, overlay)
            jac = fam.transform.log_abs_det_jacobian(part, x)
            total = total + lp.reshape(M, -1).sum(-1) + jac.reshape(M, -1).sum(-1)
        return total

    def _effect(self, z, overlay):
        """log p(z's observations | overlay) with z integrated out, (M,)."""
        sp = self.sp
        rt, M, net, obs = sp.runtime, self.M, sp.net, self.obs
        fam = net.families[z]
        info = fam.info
        v = rt.checked.vars[z]
        st = v.stmts[0]
        loops = rt.plan.loops_of(st)
        if rt.active_mask(st, loops, None, overlay) is not None:
            raise ValueError("an effect under a guard")    # not integrated: the
                                                           # site's own location instead
        d = rt.dist_for(st, loops, None, None, overlay, elem_shape=v.elem_shape)
        shape = (M,) + tuple(info.inst_shape) + tuple(info.elem_shape)

        def loglik(cand):
            stored = Stored(cand.reshape(shape))
            return informing_loglik(rt, self.informing[z], obs, {**overlay, z: stored}, M,
                                    cand.shape[1], info.n, self.gathered[z],
                                    whole=info.n == 1,
                                    recompute=net.inputs.recompute.get(z, ()))
        fitted = fam.inform(fam.facts(d, M, info.n), loglik, steps=EFFECT_STEPS)
        mode = fitted[0]                                        # (M, n, de): the real line
        if len(fitted) > 4:                                     # joint: precision factor L
            log_det = fitted[4].diagonal(dim1=-2, dim2=-1).log().sum(-1)
        else:
            log_det = -fitted[1].log().sum(-1)
        log_q = log_det - 0.5 * info.de * math.log(2 * math.pi)           # (M, n)
        lp = d.log_prob(mode.reshape(tuple(d.batch_shape) + tuple(d.event_shape)))
        with torch.no_grad():
            ll = loglik(mode)
        return (ll.reshape(M, -1).sum(-1) + lp.reshape(M, -1).sum(-1)
                - log_q.reshape(M, -1).sum(-1))


def hermite_nodes(k: int, dtype=torch.float64):
    """The k nodes and log weights of Gauss-Hermite quadrature (weight exp(-x^2)), by
    Golub and Welsch: the eigenvalues of the Jacobi matrix of the Hermite polynomials,
    and sqrt(pi) times the squared first components of its eigenvectors."""
    off = torch.arange(1, k, dtype=torch.float64).div(2.0).sqrt()
    lam, V = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    log_w = 0.5 * math.log(math.pi) + 2 * V[0].abs().log()
    return lam.to(dtype), log_w.to(dtype)


def _curvature(objective, u, f0, h):
    """Central differences of the objective at u (M, D): gradient (M, D) and Hessian
    (M, D, D), steps h (M, D); 1 + 2D + D(D - 1) / 2 evaluations less the one given."""
    M, D = u.shape
    eye = torch.eye(D, dtype=u.dtype)
    plus, minus = [], []
    for i in range(D):
        e = eye[i] * h
        plus.append(objective(u + e))
        minus.append(objective(u - e))
    g = torch.stack([(plus[i] - minus[i]) / (2 * h[:, i]) for i in range(D)], -1)
    H = torch.zeros(M, D, D, dtype=u.dtype)
    for i in range(D):
        H[:, i, i] = (plus[i] - 2 * f0 + minus[i]) / h[:, i] ** 2
        for j in range(i):
            fij = objective(u + eye[i] * h + eye[j] * h)
            H[:, i, j] = H[:, j, i] = (fij - plus[i] - plus[j] + f0) / (h[:, i] * h[:, j])
    return g, H


def _precision(H, prec0):
    """The saddle-free precision of a Hessian (M, D, D): its eigenvalues' magnitudes,
    at least a thousandth and at most 10^6 times the prior's (finite differences at a
    kink, or float noise, can claim any curvature), and where it was concave."""
    lam, V = torch.linalg.eigh(-0.5 * (H + H.transpose(-1, -2)))
    floor = 1e-3 * prec0.min(-1, keepdim=True).values
    concave = (lam > 0).all(-1)
    lam = lam.abs().clamp(min=floor, max=1e6 * prec0.max(-1, keepdim=True).values)
    return (V * lam.unsqueeze(-2)) @ V.transpose(-1, -2), concave


def _moments(objective, u, P, f0, usable):
    """The mean and precision of a collapsed posterior of D <= 2 dimensions by adaptive
    Gauss-Hermite quadrature around its Laplace fit (u, P) (M, D), (M, D, D) (a product
    grid, in the coordinates the fit's covariance whitens): the Gaussian with its
    moments, not its curvature at the mode, which a skewed marginal (a location whose
    spread grows with a group sd) leaves too light in its long tail. The Laplace fit is
    kept where the quadrature is not finite, or strays from it (a variance SPREAD times
    its own in some direction, a mean 2 of its sds away): its weight then sits on a few
    nodes and says nothing about the moments."""
    M, D = u.shape
    x, log_w = hermite_nodes(GRID[D], u.dtype)
    grid = torch.cartesian_prod(*[x] * D).reshape(-1, D)             # (K^D, D)
    lw = torch.cartesian_prod(*[log_w] * D).reshape(-1, D).sum(-1)
    L = torch.linalg.cholesky_ex(torch.cholesky_inverse(torch.linalg.cholesky_ex(P)[0]))[0]
    z = u.unsqueeze(1) + math.sqrt(2.0) * grid @ L.transpose(-1, -2)    # (M, K^D, D)
    f = torch.stack([objective(z[:, k]) for k in range(grid.shape[0])], -1)
    w = torch.softmax(torch.nan_to_num(f - f0.unsqueeze(-1), nan=-math.inf)
                      + lw + (grid ** 2).sum(-1), -1).unsqueeze(-1)   # (M, K^D, 1)
    w = torch.nan_to_num(w, nan=0.0)
    # the moments in the whitened coordinates (the Laplace fit: mean 0, covariance I)
    shift = (w * grid).sum(1) * math.sqrt(2.0)                       # (M, D)
    dev = math.sqrt(2.0) * grid - shift.unsqueeze(1)
    white = (w * dev).transpose(-1, -2) @ dev                        # (M, D, D)
    lam = torch.linalg.eigvalsh(white)
    ok = usable & torch.isfinite(lam).all(-1) & (lam > 1 / SPREAD).all(-1) \
        & (lam < SPREAD).all(-1) & (shift.norm(dim=-1) < 2.0)
    white = torch.where(ok[:, None, None], white, torch.eye(D, dtype=u.dtype))
    shift = torch.where(ok.unsqueeze(-1), shift, torch.zeros_like(shift))
    mean = u + (shift.unsqueeze(1) @ L.transpose(-1, -2)).squeeze(1)
    prec, bad = torch.linalg.inv_ex(L @ white @ L.transpose(-1, -2))
    ok = ok & (bad == 0) & torch.isfinite(prec).flatten(1).all(-1)
    return torch.where(ok.unsqueeze(-1), mean, u), torch.where(ok[:, None, None], prec, P)


@torch.no_grad()
def collapsed_fit(sp, observed, effects, loc0, scale0, start=None, later=(),
                  later_facts=(), observations=None):
    """The Laplace approximation of the site's collapsed posterior jointly with the later
    hyperparameters ``later``: the site's prior N(loc0, scale0^2) (unconstrained, (M, d))
    and theirs (their (loc, scale) in ``later_facts``) times the likelihood with the
    effects integrated out. Returns (mode (M, D), precision (M, D, D), usable (M,)), the
    site's d coordinates first; None where it cannot be evaluated. ``start`` (M, D):
    where the fit starts (NaN: at the prior location). ``observations``: those of the
    M rows, where they are fewer than the site's (the runtime then runs M traces)."""
    rt = sp.runtime
    saved = (rt.invalid.clone(), rt.problem)
    try:
        F = Collapsed(sp, observed, effects, later, loc0.shape[0], observations)
        loc = torch.cat([loc0] + [f[0] for f in later_facts], -1)       # (M, D)
        scale = torch.cat([scale0] + [f[1] for f in later_facts], -1)
        prec0 = scale ** -2
        u = loc.clone()
        if start is not None:
            u = torch.where(torch.isfinite(start), start, loc)
        # the exact prior where it can be evaluated at the start, its Gaussian otherwise
        try:
            exact = bool(torch.isfinite(F.log_prior(u)).all())
        except (ModelRuntimeError, RuntimeError, ValueError):
            exact = False

        def objective(u):
            f = F(u, prior=True) if exact else F(u) - 0.5 * (prec0 * (u - loc) ** 2).sum(-1)
            return torch.nan_to_num(f, nan=-math.inf)
        h = 0.1 * scale
        f0 = objective(u)
        converged = torch.zeros(u.shape[0], dtype=torch.bool)
        for _ in range(STEPS):
            g, H = _curvature(objective, u, f0, h)
            ok = torch.isfinite(g).all(-1) & torch.isfinite(H).flatten(1).all(-1)
            g = torch.where(ok.unsqueeze(-1), g, torch.zeros_like(g))
            H = torch.where(ok[:, None, None], H, -torch.diag_embed(prec0))
            P, concave = _precision(H, prec0)
            step = torch.linalg.solve(P, g.unsqueeze(-1)).squeeze(-1)
            step = step / (step.abs() / (MAX_STEP * scale)).amax(-1, keepdim=True).clamp(min=1.0)
            moved = torch.zeros_like(ok)
            for _ in range(HALVINGS + 1):
                todo = ~moved & (step != 0).any(-1)
                if not bool(todo.any()):
                    break
                f1 = objective(u + step)
                better = todo & (f1 > f0)
                u = torch.where(better.unsqueeze(-1), u + step, u)
                f0 = torch.where(better, f1, f0)
                moved = moved | better
                step = torch.where(moved.unsqueeze(-1), step, 0.5 * step)
            # the next differences at the scale of the posterior found
            sd = torch.linalg.inv(P).diagonal(dim1=-2, dim2=-1).clamp(min=1e-30).sqrt()
            wide = h
            h = torch.minimum(0.1 * scale, 0.5 * sd).clamp(min=1e-3 * scale)
            # found once the step is short and the curvature was measured at the scale of
            # the posterior (from a good start, the first differences span many of its
            # sds, where the cross terms of a scale and a location are not quadratic)
            converged = (~moved | (step.abs() < 0.1 * sd).all(-1)) & (wide <= 2 * h).all(-1)
            if bool(converged.all()):
                break
        if not bool(converged.all()):
            # the curvature where the steps ended (after a small last step, the one
            # measured before it serves)
            g, H = _curvature(objective, u, f0, h)
            P, concave = _precision(H, prec0)
        usable = concave & torch.isfinite(u).all(-1) & torch.isfinite(f0)
        P = torch.where(usable[:, None, None], P, torch.diag_embed(prec0))
        if u.shape[1] in GRID:
            u, P = _moments(objective, u, P, f0, usable)
        return u, P, usable
    except (ModelRuntimeError, RuntimeError, ValueError):
        return None
    finally:
        rt.invalid, rt.problem = saved
