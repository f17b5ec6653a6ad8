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
Laplace step, :meth:`~.families.continuous.ContinuousProposal.inform`). This module
evaluates it at candidate values of the site, finds its mode in the site's
unconstrained value by Newton steps on finite differences (each a few evaluations, no
differentiation through the inner fit), and hands the family the Gaussian it gives as a
message -- the form of the marginal locations (:mod:`.marginal`). Where the effects'
prior has correlations the proposal's location leaves out (a MultivariateNormal with a
full scale), the identity is approximate: it only locates the proposal, whose own
density is what the weights use, so they stay exact.
"""
from __future__ import annotations

import math

import torch

from ..backend.values import Stored
from ..errors import ModelRuntimeError
from .informing import gather_index, informing_loglik
from .marginal import site_message

STEPS = 4          # Newton steps at most (each two evaluations and a line search)
HALVINGS = 2       # step halvings tried by each step's line search
MAX_STEP = 3.0     # prior scales one step may move


class Collapsed:
    """The collapsed log-likelihood of one site, as a function of its unconstrained
    value: ``sp`` the site's :class:`~.site_proposal.SiteProposal`, ``observed`` and
    ``effects`` the static choice (:func:`.context.collapsible`)."""

    def __init__(self, sp, observed, effects):
        self.sp, self.effects = sp, effects
        net, rt = sp.net, sp.runtime
        self.informing = {z: net.inputs.informing[z] for z in effects}
        self.direct = [o for o in observed
                       if not any(o in names for names in self.informing.values())]
        self.gathered = {z: {o: gather_index(rt, o, e, net.families[z].info.n)
                             for o, e in net.inputs.gathers.get(z, {}).items()}
                         for z in effects}

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """log p(observations | site = transform(u), what was drawn before) with the
        effects integrated out, (M,), for u (M, 1)."""
        sp = self.sp
        rt, M, net, obs = sp.runtime, sp.state.M, sp.net, sp.state.observations
        x = sp.family.transform(u.reshape(M, 1, 1)).reshape((M,) + tuple(sp.info.elem_shape))
        overlay = {sp.info.name: Stored(x)}
        total = torch.zeros(M, dtype=u.dtype)
        for o in self.direct:
            lp = rt.stmt_log_prob(rt.checked.vars[o].stmts[0], obs[o], overlay)
            total = total + lp.reshape(M, -1).sum(-1)
        for z in self.effects:
            total = total + self._effect(z, overlay)
        return total

    def _effect(self, z, overlay):
        """log p(z's observations | overlay) with z integrated out, (M,)."""
        sp = self.sp
        rt, M, net, obs = sp.runtime, sp.state.M, sp.net, sp.state.observations
        fam = net.families[z]
        info = fam.info
        v = rt.checked.vars[z]
        st = v.stmts[0]
        loops = rt.plan.loops_of(st)
        if rt.active_mask(st, loops, None, overlay) is not None:
            raise ValueError("a guarded effect")        # (collapsible() keeps them out)
        d = rt.dist_for(st, loops, None, None, overlay, elem_shape=v.elem_shape)
        shape = (M,) + tuple(info.inst_shape) + tuple(info.elem_shape)

        def loglik(cand):
            stored = Stored(cand.reshape(shape))
            return informing_loglik(rt, self.informing[z], obs, {**overlay, z: stored}, M,
                                    cand.shape[1], info.n, self.gathered[z],
                                    whole=info.n == 1)
        fitted = fam.inform(fam.facts(d, M, info.n), loglik)
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


@torch.no_grad()
def collapsed_message(sp, observed, effects, loc0, scale0, start=None):
    """The Gaussian message (precision, information), (M, 1) each, that moves the site's
    prior N(loc0, scale0^2) (unconstrained, (M, 1)) to the Laplace approximation of its
    collapsed marginal posterior; None where it cannot be evaluated."""
    rt = sp.runtime
    saved = (rt.invalid.clone(), rt.problem)
    try:
        F = Collapsed(sp, observed, effects)
        prec0 = scale0 ** -2

        def objective(u):
            f = F(u).reshape(loc0.shape) - 0.5 * prec0 * (u - loc0) ** 2
            return torch.nan_to_num(f, nan=-math.inf)
        u = loc0.clone() if start is None else torch.where(torch.isfinite(start), start, loc0)
        h = 0.1 * scale0
        f0 = objective(u)
        H = None
        for _ in range(STEPS):
            fp, fm = objective(u + h), objective(u - h)
            g, H = (fp - fm) / (2 * h), (fp - 2 * f0 + fm) / h ** 2
            ok = torch.isfinite(g) & torch.isfinite(H)
            concave = ok & (H < 0)
            step = torch.where(concave, -g / H.clamp(max=-1e-12), torch.sign(g) * scale0)
            step = torch.where(ok, step, torch.zeros_like(step))
            step = step.clamp(-MAX_STEP * scale0, MAX_STEP * scale0)
            moved = torch.zeros_like(ok)
            for _ in range(HALVINGS + 1):
                todo = ~moved & (step != 0)
                if not bool(todo.any()):
                    break
                f1 = objective(u + step)
                better = todo & (f1 > f0)
                u = torch.where(better, u + step, u)
                f0 = torch.where(better, f1, f0)
                moved = moved | better
                step = torch.where(moved, step, 0.5 * step)
            # the next differences at the scale of the posterior found
            sd = torch.where(concave, (-H).clamp(min=1e-12).rsqrt(), scale0)
            h = torch.minimum(0.1 * scale0, 0.5 * sd).clamp(min=1e-3 * scale0)
            converged = ~moved | (step.abs() < 0.1 * sd)
            if bool(converged.all()):
                break
        else:
            converged = torch.zeros_like(u, dtype=torch.bool)
        if not bool(converged.all()):
            # the curvature where the steps ended (after a small last step, the one
            # measured before it serves)
            fp, fm = objective(u + h), objective(u - h)
            H = (fp - 2 * f0 + fm) / h ** 2
        usable = torch.isfinite(H) & (H < 0) & torch.isfinite(u) & torch.isfinite(f0)
        # no narrower than a thousandth of the prior scale (finite differences at a
        # kink, or float noise, can claim any curvature)
        P = torch.where(usable, (-H).clamp(max=1e6 * prec0), prec0).reshape(-1, 1, 1)
        return site_message(u, P, loc0, scale0, 1, usable.reshape(-1))
    except (ModelRuntimeError, RuntimeError, ValueError):
        return None
    finally:
        rt.invalid, rt.problem = saved
