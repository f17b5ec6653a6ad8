"""Partner effects: a plate site and the later effects of the same instances that its
observations read, fitted jointly per instance.

A varying intercept and slope written as separate scalars (``alpha[i] + beta[i] *
x[t]``, the BUGS Rats growth curves; ``alpha[g[n]] + beta[g[n]] * x[n]``) are read by
the same observations: the intercept, proposed first, cannot be located by them alone,
since they read the slope, not drawn yet. Which sites have partners is static
(:func:`.context.partnered`). Given what is drawn before the group, its instances are
independent, so one joint Laplace fit with the instances as its rows
(:func:`.marginal.joint_mode`; :func:`.marginal.exact_mode` where the observations are
Gaussian and affine in the whole group) gives each instance's joint Gaussian:

* the site takes its marginal of it (:meth:`.site_proposal.SiteProposal._paired`), the
  partners are then informed by their observations given the site drawn;
* a hyperparameter above them integrates the whole group out at once
  (:meth:`.collapse.Collapsed._group`: Besag's identity at the joint mode).
"""
from __future__ import annotations

from ..backend.values import Stored
from .informing import informing_loglik
from .marginal import exact_mode, joint_mode


class GroupFit:
    """The group ``names`` (the site, then its partners) of ``M`` traces, its priors
    read with ``overlay`` replacing stored variables (a hyperparameter's candidate
    values), and the log density of its observations ``obs`` per instance (the
    deterministic values ``dets`` between them recomputed from the group's values)."""

    def __init__(self, rt, families, names, obs, observations, gathered, M, overlay=None,
                 dets=()):
        self.rt, self.names, self.obs, self.M = rt, list(names), obs, M
        self.dets = dets            # deterministic values in between, recomputed
        self.observations, self.gathered = observations, gathered
        self.overlay = overlay or {}
        self.fams = [families[r] for r in self.names]
        self.n = self.fams[0].info.n
        self.stmts, self.locs, self.scales = [], [], []
        for r, fam in zip(self.names, self.fams):
            v = rt.checked.vars[r]
            st = v.stmts[0]
            d = rt.dist_for(st, rt.plan.loops_of(st), None, None, self.overlay,
                            elem_shape=v.elem_shape)
            f = fam.facts(d, M, self.n)
            self.stmts.append(st)
            self.locs.append(f[0].reshape(M * self.n, -1))
            self.scales.append(f[1].reshape(M * self.n, -1))
        self.shapes = [(M,) + tuple(f.info.inst_shape) + tuple(f.info.elem_shape)
                       for f in self.fams]

    def values(self, us):
        """Unconstrained values, one (M n, udim) each, as (M, n, udim) parts and the
        overlay of the group's values."""
        parts = [u.reshape(self.M, self.n, -1) for u in us]
        return parts, {r: Stored(f.transform(u).reshape(shape))
                       for r, f, u, shape in zip(self.names, self.fams, parts, self.shapes)}

    def loglik(self, us):
        """The log density (M n,) of each instance's observations, a row each."""
        _, vals = self.values(us)
        return informing_loglik(self.rt, self.obs, self.observations,
                                {**self.overlay, **vals}, self.M, self.n, self.n,
                                self.gathered, recompute=self.dets).reshape(self.M * self.n)

    def fit(self, exact, steps=None):
        """The joint mode and precision per instance, as :func:`.marginal.joint_mode`
        gives them (rows M n); ``exact``: per member, whether the observations are a
        quadratic in it with the others."""
        if all(exact):              # a quadratic: one Newton step is its exact mode
            return exact_mode(self.loglik, self.locs, self.scales)
        kw = {} if steps is None else {"steps": steps}
        return joint_mode(self.loglik, self.locs, self.scales, exact=exact, **kw)
