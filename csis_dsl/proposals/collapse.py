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
  Gauss-Hermite quadrature around the Laplace fit (:func:`.quadrature.moments`), not its mode and
  curvature, which leave a skewed marginal's long tail too light.

Where the
effects' prior has correlations the proposal's location leaves out (a
MultivariateNormal with a full scale), the identity is approximate too: it only locates
the proposal, whose own density is what the weights use, so they stay exact.
"""
from __future__ import annotations

import math

import torch

from ..backend.repeat import in_runs, points_per_run, repeat_each
from ..backend.values import Stored
from ..errors import ModelRuntimeError
from .context import leaders
from .informing import gather_index, informing_loglik
from .partners import GroupFit
from .quadrature import fit_objective

EFFECT_STEPS = 4   # Newton steps at most of the effects' conditional mode (the identity
                   # holds at the mode: a Laplace fit short of it misjudges the integral),
COLD_STEPS = 8     # from their priors' locations at a fit's first evaluation; the later
                   # ones start at the modes it found (``Collapsed.starts``)


class Collapsed:
    """The collapsed log-likelihood of one site, as a function of its unconstrained
    value: ``sp`` the site's :class:`~.site_proposal.SiteProposal`, ``observed`` and
    ``effects`` the static choice (:func:`.context.collapsible`)."""

    def __init__(self, sp, observed, effects, later=(), M=None, observations=None):
        self.sp, self.effects = sp, effects
        # the effects' conditional modes at the first evaluation, one point per row
        # (z -> (M, n, udim)): where every later evaluation's inner fit starts (the
        # same start whether the points come one at a time or stacked). A vague
        # hyperprior puts the effects' prior locations far from their conditional
        # modes (the pumps' beta ~ Gamma(0.1, 1): log rates 3 to 30 units above), and
        # Newton's steps on counts with a log link approach from above by at most one
        # unit each: from there, 3 steps left the collapsed likelihood 1 to 100 nats
        # off; 8 were within 0.03 of the exact one, but 8 at every evaluation doubled
        # a surgical mortality training step. From the first evaluation's modes, 4
        # steps are within 0.03 nats 2 units of log beta away (3 left 0.3). ``warm``:
        # the Collapsed of one point per row whose modes one of K points starts from
        self.starts, self.warm = {}, None
        # the rows fitted and their observations: the site's, or fewer (distinct rows)
        self.M = sp.state.M if M is None else M
        self.obs = sp.state.observations if observations is None else observations
        # the site, then the later hyperparameters fitted jointly with it
        self.names = [sp.info.name] + list(later)
        self.fams = [sp.net.families[n] for n in self.names]
        self.sizes = [f.udim for f in self.fams]       # the columns of each in u
        net, rt = sp.net, sp.runtime
        # effects integrated out together with later ones of the same instances (a
        # varying intercept and slope: :func:`.context.partnered`), by their leader
        lead = leaders(net.inputs.partners)
        self.groups = {z: net.inputs.partners[z] for z in effects if lead.get(z) == z}
        grouped = {p for found in self.groups.values() for p in found.partners}
        self.informing = {z: net.inputs.informing[z] for z in effects
                          if z not in self.groups and z not in grouped}
        in_groups = {o for found in self.groups.values() for o in found.observed}
        self.direct = [o for o in observed if o not in in_groups and
                       not any(o in names for names in self.informing.values())]
        self.group_index = {z: {o: gather_index(rt, o, e, net.families[z].info.n)
                                for o, e in found.gathers.items()}
                            for z, found in self.groups.items()}
        self.gathered = {z: {o: gather_index(rt, o, e, net.families[z].info.n)
                             for o, e in net.inputs.gathers.get(z, {}).items()}
                         for z in self.informing}

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
        for z in self.informing:
            total = total + self._effect(z, overlay)
        for z in self.groups:
            total = total + self._group(z, overlay)
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
        rt = self.sp.runtime
        return sum(fam.prior_log_density(rt, rt.checked.vars[n].stmts[0], *at[n], overlay)
                   for n, fam in zip(self.names, self.fams))

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
        # the fit with each instance's exact prior where the matched Gaussian is not it
        # (a Gamma effect): the identity holds at the exact conditional mode
        base = self if self.warm is None else self.warm
        start = base.starts.get(z)
        if start is not None and base is not self:
            start = start.repeat(M // base.M, 1, 1)           # K blocks of the M rows
        fitted = fam.inform(fam.facts(d, M, info.n), loglik, start=start,
                            steps=COLD_STEPS if start is None else EFFECT_STEPS,
                            prior=fam.instance_prior(d, M))
        mode = fitted[0]                            # (M, n, udim): unconstrained values
        if base is self and z not in self.starts:
            self.starts[z] = mode.detach()
        if len(fitted) > 4:                                     # joint: precision factor L
            log_det = fitted[4].diagonal(dim1=-2, dim2=-1).log().sum(-1)
        else:
            log_det = -fitted[1].log().sum(-1)
        log_q = log_det - 0.5 * mode.shape[-1] * math.log(2 * math.pi)     # (M, n)
        # q is a density of the unconstrained values: so is the prior's term, the
        # transform's Jacobian included (a Gamma effect's log: without it the identity
        # was off by the sum of the effects' logs at their modes, which moves with the
        # hyperparameters)
        lp = fam.log_prior_at(d, mode, M)
        with torch.no_grad():
            ll = loglik(fam.transform(mode))
        return (ll.reshape(M, -1).sum(-1) + lp.sum(-1) - log_q.reshape(M, -1).sum(-1))

    def _group(self, z, overlay):
        """log p(the group's observations | overlay) with effect ``z`` and its partners
        integrated out together, (M,): Besag's identity at their joint conditional mode
        per instance (:class:`.partners.GroupFit`; exact for a linear-Gaussian
        likelihood), with their exact priors and the fit's Gaussian as q."""
        rt, M = self.sp.runtime, self.M
        found = self.groups[z]
        group = GroupFit(rt, self.sp.net.families, [z] + found.partners, found.observed,
                         self.obs, self.group_index[z], M, overlay, found.between)
        fit = group.fit(found.exact, steps=EFFECT_STEPS)
        if fit is None:
            raise ValueError("the effects' joint fit failed")
        modes, P, _ = fit
        parts, vals = group.values(modes)
        total = group.loglik(modes).reshape(M, -1).sum(-1)
        for f, st, part in zip(group.fams, group.stmts, parts):
            total = total + f.prior_log_density(rt, st, part, f.transform(part),
                                                {**overlay, **vals})
        L, bad = torch.linalg.cholesky_ex(P)
        log_q = L.diagonal(dim1=-2, dim2=-1).log().sum(-1) - 0.5 * P.shape[-1] * math.log(2 * math.pi)
        log_q = torch.where(bad == 0, log_q, torch.full_like(log_q, math.nan))
        return total - log_q.reshape(M, -1).sum(-1)


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
    with rt.scratch():
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

            evaluate = _stacked(F, rt, lambda K, obs: Collapsed(
                sp, observed, effects, later, K * F.M, obs), exact)

            def objective(u):                 # (K, M, D) -> (K, M)
                # (NaN and +inf are undefined to the fit, as -inf)
                f = evaluate(u)
                return f if exact else f - 0.5 * (prec0 * (u - loc) ** 2).sum(-1)
            return fit_objective(objective, u, loc, scale)
        except (ModelRuntimeError, RuntimeError, ValueError):
            return None


def _stacked(F, rt, make, prior: bool):
    """``F`` (a :class:`Collapsed` of M rows) at K points per row, u (K, M, D) -> (K, M),
    as one vectorised run of K M traces (:func:`..backend.repeat.in_runs`; ``make(K,
    observations)``: the Collapsed of those K M rows) where
    :func:`..backend.repeat.points_per_run` allows. ``prior``: with the exact prior
    density."""
    M = F.M
    chunk = points_per_run(M, F.obs)
    made = {1: F}

    def evaluate(u, K):
        if K not in made:
            made[K] = make(K, repeat_each(dict(F.obs), K, M))
            made[K].warm = F
        return made[K](u, prior=prior)
    return lambda u: in_runs(rt, u, chunk, evaluate)
