"""The proposal for one latent site (all its instances), as a Pyro distribution.

The network carries a recurrent state from site to site within one run of the guide
(:class:`GuideState`). A statement's instances (the iterations of a plate) are proposed
together in one call; a family produced in order is proposed element by element, each
element reading the one before. ``log_prob`` of a given value scores it by teacher
forcing in one call either way. Where the proposal is located comes from the site's
family (:mod:`.families`): for a statement, from its prior in this trace; for a family
produced in order, from the prior of each element given the elements before.
"""
from __future__ import annotations

import itertools
import math
from typing import Optional

import pyro.distributions as pdist
import torch
from torch.distributions import constraints

from ..backend.repeat import points_per_run, repeat_each
from ..backend.values import Stored
from ..catalogue.supports import is_dependent
from ..errors import ModelRuntimeError
from .families import LatentInfo
from .families.base import place
from .collapse import collapsed_fit
from .informing import gather_index, informing_loglik
from .marginal import (REFIT_STEPS, STEPS, block_profile, conditional_mean, gaussian_message,
                       joint_mode, site_message)
from .summed import summed_loglik
from .network import ProposalNetwork, first_flags, positions
from .partners import GroupFit


def _exchangeable(fams, locs, scales) -> bool:
    """Whether the components of a mixture in a joint fit are exchangeable under their
    priors: no vector on the real line or (0, inf) among the fit's latents has elements
    with different prior locations or scales (``real[K] mu ~ Normal(0, 5)``). Their
    posterior is then symmetric under relabelling -- K! modes, and the fit's start, at
    the symmetric point, a saddle -- which one Gaussian cannot locate; the network alone
    proposes them. Components told apart by their priors (``Normal([1.5, 5.5], 1)``)
    or by an ordered support are fitted."""
    vectors = [(l, s) for f, l, s in zip(fams, locs, scales)
               if l.shape[-1] > 1 and getattr(f, "moments_usable", False)]
    return bool(vectors) and all(
        bool((l == l[:, :1]).all()) and bool((s == s[:, :1]).all()) for l, s in vectors)


class GuideState:
    """The recurrent state carried from site to site within one guide run."""

    def __init__(self, net: ProposalNetwork, embedded, observations=None):
        C = net.config
        self.obs, self.skip, self.raws = embedded
        self.observations = observations   # the given values (what informs proposals)
        self.M = M = self.obs.shape[0]
        self.hc = None                    # None: the zero state, before the first site
        self.pending = None
        self.prev_val = None              # None: zeros (no site drawn yet)
        self.prev_addr = 0                # the previous site's address and distribution
        self.prev_dist = 0                # ids: the same in every trace (a static graph)
        self.hints = {}                   # latent -> (M, d): where a joint fit made
                                          # before it was proposed puts it (:mod:`.marginal`)
        self.block = None                 # the last joint fit: (names, sizes, mode, precision)

    def moved_past(self, info: LatentInfo, summary):
        self.hc = self.pending
        self.prev_val = summary
        self.prev_addr = info.addr
        self.prev_dist = info.dist


class SiteProposal(pdist.TorchDistribution):
    """``prior`` is the site's distribution in the interpreter's layout (a statement's,
    or a :class:`~csis_dsl.backend.family.FamilyDist`); ``env`` what the interpreter
    has computed so far (the values of the site's context)."""

    def __init__(self, net: ProposalNetwork, state: GuideState, info: LatentInfo, prior,
                 env, present: Optional[torch.Tensor], batch_shape, event_shape,
                 runtime=None):
        self.net, self.state, self.info, self.prior = net, state, info, prior
        self.runtime = runtime
        self.informing = net.inputs.informing.get(info.name, []) \
            if runtime is not None and state.observations is not None else []
        # informing observations that read the instances through a data index
        self.gathers = net.inputs.gathers.get(info.name, {}) if self.informing else {}
        self._gather_index = {}
        # observations shared with latents proposed later (and those latents)
        self.ahead = net.inputs.ahead.get(info.name) \
            if runtime is not None and state.observations is not None else None
        # later effects of the same instances, fitted jointly with it per instance
        self.partners = net.inputs.partners.get(info.name) \
            if runtime is not None and state.observations is not None else None
        # group effects proposed later, integrated out exactly (:mod:`.collapse`)
        self.collapse = net.inputs.collapse.get(info.name) \
            if runtime is not None and state.observations is not None else None
        self.family = net.families[info.name]
        self.present = present            # (M, n) bool or None
        M, n = state.M, info.n
        self.h = net.step(state, info)
        self.env = env
        self._inputs = None
        self._cache = None
        self._facts = None
        self._messages = None
        self._const_inputs = None
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self.info.support

    # ------------------------------------------------------------ per-instance inputs
    def _instance_inputs(self, keep=None):
        """(context, aligned observations) of every instance, or of the instances
        ``keep``; each (M, m, width) or None."""
        net, l, M = self.net, self.info, self.state.M
        return (net.inputs.context_features(l.name, self.env, net.families, M, l.n, keep),
                net.inputs.aligned_observations(l.name, self.state.raws, M, l.n, keep))

    def _all_inputs(self):
        if self._inputs is None:
            ctx, align = self._instance_inputs()
            smooth = None if self.info.plate else self.net.smooth(self.info, align, ctx)
            self._inputs = (ctx, align, smooth)
        return self._inputs

    @property
    def ctx(self):
        return self._all_inputs()[0]

    @property
    def align(self):
        return self._all_inputs()[1]

    @property
    def smooth(self):
        return self._all_inputs()[2]

    # ------------------------------------------------------------ prior facts
    def facts(self, x=None, j=None, keep=None):
        """The family's facts for every instance (M, n, ...), or for instance j
        (M, 1, ...), or for the instances ``keep`` (a LongTensor, (M, len(keep), ...)).
        A family produced in order reads the elements of ``x`` before."""
        l, M = self.info, self.state.M
        if keep is not None:                        # (a plate's instances)
            if self.informing and self._facts is None and self._single_loop_informing():
                # only the kept instances' observations are read
                facts = tuple(f[:, keep] for f in self.family.facts(self.prior, M, l.n))
                return self.family.inform(facts, lambda c: self._loglik(c, keep=keep))
            return tuple(f[:, keep] for f in self.facts())
        if l.plate:
            if self._facts is None:
                self._facts = self.family.facts(self.prior, M, l.n)
                if self.ahead is not None:
                    self._facts = self._marginal(self._facts)
                elif self.collapse is not None:
                    self._facts = self._collapsed(self._facts)
                elif self.partners is not None:
                    self._facts = self._paired(self._facts)
                elif self.informing:
                    self._facts = self.family.inform(self._facts, self._loglik,
                                                     start=self._hint(),
                                                     prior=self._own_prior(self._facts))
            return self._facts if j is None else tuple(f[:, j:j + 1] for f in self._facts)
        facts = self._family_facts(x, j)
        if self.informing:
            message = self._message()
            if message is not None:
                message = tuple(t if j is None else t[:, j:j + 1] for t in message)
                facts = self.family.inform(facts, lambda c: self._loglik(c, x, j), message)
            else:
                facts = self.family.inform(facts, lambda c: self._loglik(c, x, j))
        return facts

    def _own_prior(self, facts):
        """The exact log prior density of this site's instances for its family's Laplace
        fit (:meth:`~.families.continuous.ContinuousProposal.laplace`), at unconstrained
        values (M, n, 1) -> (M, n), from its prior in this trace
        (:meth:`~.families.continuous.ContinuousProposal.instance_prior`); None where
        the family's matched Gaussian is the prior itself, or for a family."""
        if self.runtime is None or self.runtime.checked.vars[self.info.name].is_family:
            return None
        return self.family.instance_prior(self.prior, self.state.M)

    def _hint(self):
        """Where a joint fit for an earlier site puts this one (M, 1, de), or None."""
        self._condition_hints()
        h = self.state.hints.get(self.info.name)
        return None if h is None or self.info.n != 1 else h.reshape(self.state.M, 1, -1)

    def _condition_hints(self):
        """Where the last joint fit included this site, its Gaussian conditioned on the
        values drawn since (the site that made the fit, at least) gives the hints of the
        members not drawn yet: a start for their own fits near their conditional mode."""
        block = self.state.block
        if block is None or self.info.name not in block[0]:
            return
        names, sizes, mode, P = block
        M, env = self.state.M, self.env
        drawn = [k for k, n in enumerate(names) if n != self.info.name and n in env]
        if not drawn:
            return
        parts = list(mode.split(sizes, -1))
        for k in drawn:
            fam = self.net.families[names[k]]
            x = env[names[k]].t.to(mode.dtype)
            x = x.expand((M,) + tuple(x.shape[1:])).reshape(M, fam.info.n, -1)
            parts[k] = fam.unconstrained(x).reshape(M, -1)
        edges = list(itertools.accumulate(sizes, initial=0))
        cond = conditional_mean(mode, P, torch.cat(parts, -1), [
            i for k in drawn for i in range(edges[k], edges[k + 1])])
        for k, n in enumerate(names):
            if k not in drawn:
                self.state.hints[n] = cond.split(sizes, -1)[k]
        self.state.block = None

    def _marginal(self, facts):
        """The facts moved by the site's marginal posterior given what was drawn before
        it: a joint Laplace fit with the later latents its observations read
        (:mod:`.marginal`), handed to the family as a Gaussian message. Leaves the
        later latents' modes as hints for their own proposals."""
        obs, later, exact, summed, dets = self.ahead
        rt, M, net = self.runtime, self.state.M, self.net
        names = [self.info.name] + list(later)
        fams = [self.family] + [net.families[r] for r in later]
        locs, scales = [facts[0].reshape(M, -1)], [facts[1].reshape(M, -1)]
        with rt.scratch():
            try:
                for loc, scale in self._later_priors(later):
                    locs.append(loc)
                    scales.append(scale)
                mixture = summed or any(rt.checked.vars[o].dist == "Mixture" for o in obs)
                if mixture and _exchangeable(fams, locs, scales) and not self._told_apart(obs):
                    return facts
                in_sums = {o for s in summed for o in s.observed}
                stmts = [(o, rt.checked.vars[o].stmts[0]) for o in obs if o not in in_sums]
                self._condition_hints()
                start = [self.state.hints.get(n) for n in names]
                # rows with the same inputs have the same fit: fitted once (the first site
                # at inference, where every draw shares the observations)
                rows, inverse = self._distinct_rows(names, summed, obs, dets, locs, scales, start)
                R = M if rows is None else rows.numel()
                observations = self.state.observations
                if rows is not None:
                    observations = self._rows_only(rows)
                    locs, scales = [t[rows] for t in locs], [t[rows] for t in scales]
                    start = [None if t is None else t[rows] for t in start]
                shapes = [tuple(net.by_name[n].inst_shape) + tuple(net.by_name[n].elem_shape)
                          for n in names]

                memo, copies = {}, {}

                def loglik(us):
                    # R rows, or K R under repeat (block k a copy: a profile's K points)
                    rows = us[0].shape[0]
                    if rows // R not in copies:
                        copies[rows // R] = repeat_each(dict(observations), rows // R, R)
                    seen = copies[rows // R]
                    overlay = {n: Stored(fam.transform(u.reshape(rows, fam.info.n, -1)).reshape(
                        (rows,) + shape)) for n, fam, u, shape in zip(names, fams, us, shapes)}
                    for dname in dets:      # the deterministic values they read, recomputed
                        overlay[dname] = Stored(rt.assigned(rt.checked.vars[dname].stmts[0],
                                                            overlay=overlay))
                    total = 0.0
                    for o, st in stmts:
                        lp = rt.stmt_log_prob(st, seen[o], overlay)
                        total = total + lp.reshape(rows, -1).sum(-1)
                    if summed:          # the allocations or chains after the site, summed out
                        total = total + summed_loglik(rt, summed, observations, overlay, R,
                                                      net.families, memo)
                    return total
                # the exact priors of the scalars whose priors read only args
                priors = [self._exact_prior_of(n, t) for n, t in zip(names, locs)]
                # from a conditional of an earlier fit, a few steps finish the job
                fit = joint_mode(loglik, locs, scales, start, exact=exact, priors=priors,
                                 steps=REFIT_STEPS if start[0] is not None else STEPS)
                profile = None
                if fit is not None and self._profiled(locs, exact, summed):
                    try:
                        profile = block_profile(loglik, torch.cat(fit[0], -1), fit[1], locs,
                                                scales, self._exact_prior(locs[0], rows is None),
                                                runtime=rt,
                                                chunk=points_per_run(R, observations, obs))
                    except (ModelRuntimeError, RuntimeError, ValueError):
                        profile = None          # the joint fit's marginal serves
                if fit is not None and rows is not None:
                    locs, scales = [t[inverse] for t in locs], [t[inverse] for t in scales]
                    fit = ([t[inverse] for t in fit[0]], fit[1][inverse], fit[2][inverse])
                    profile = None if profile is None else tuple(t[inverse] for t in profile)
            except (ModelRuntimeError, RuntimeError, ValueError):
                fit = None
        if fit is None:
            return facts
        modes, P, usable = fit
        mode = torch.cat(modes, -1)
        self._keep_fit(names, [t.shape[-1] for t in locs], mode, P, usable, locs)
        return self._placed(facts, mode, P, usable, locs[0], scales[0], profile)

    def _paired(self, facts):
        """The facts of a plate's instances moved to their marginal posterior given what
        was drawn before, with the later effects of the same instances that their
        observations read integrated out (:mod:`.partners`: a varying slope after a
        varying intercept), from the group's joint fit per instance -- exact where the
        observations are Gaussian and affine in the group. The partners are then
        informed given the site's drawn values by their own observations."""
        found = self.partners
        rt, M, n = self.runtime, self.state.M, self.info.n
        with rt.scratch():
            try:
                gathered = {o: gather_index(rt, o, e, n) for o, e in found.gathers.items()}
                fit = GroupFit(rt, self.net.families, [self.info.name] + found.partners,
                               found.observed, self.state.observations, gathered, M,
                               dets=found.between).fit(found.exact)
            except (ModelRuntimeError, RuntimeError, ValueError):
                fit = None
        if fit is None:
            return facts
        modes, P, usable = fit
        k = self.family.udim
        cov = torch.linalg.inv_ex(P)[0][:, :k, :k]
        return self.family.located_each(facts, modes[0].reshape(M, n, k),
                                        cov.reshape(M, n, k, k), usable.reshape(M, n))

    def _profiled(self, locs, exact, summed) -> bool:
        """Whether this site's marginal is its profile with a quadratic block integrated
        out (:func:`.marginal.block_profile`): a scalar whose later latents are all in
        the block, itself not."""
        return (len(locs) > 1 and locs[0].shape[-1] == 1 and self.info.n == 1
                and self.family.informable and not exact[0] and all(exact[1:])
                and not summed)

    def _exact_prior(self, at, all_rows: bool):
        """The site's exact prior log density at unconstrained values u (R, 1), the
        transform's Jacobian included, (R,) -- or None where it cannot be evaluated (at
        ``at``, (R, 1)), or where the fit runs on R distinct rows of the M and the prior
        reads more than args (what was drawn before is stored for all M)."""
        if not all_rows and not self._prior_reads_only_args(self.info.name):
            return None
        return self._log_prior(self.info.name, at)

    def _prior_reads_only_args(self, name: str) -> bool:
        """Whether latent ``name``'s prior statement (its parameters and guards) reads
        only args: the same prior in every row of a fit."""
        checked = self.runtime.checked
        v = checked.vars[name]
        return all(checked.vars[r].kind == "arg" for r in v.reads | v.control)

    # priors whose matched Gaussian (:meth:`~.families.continuous.ContinuousProposal.
    # located`) is the prior itself
    GAUSSIAN_PRIORS = {"Normal", "LogNormal"}

    def _exact_prior_of(self, name: str, at):
        """What a Laplace fit of latent ``name`` uses as its prior, where that is not
        the Gaussian its family locates with: the exact log density at unconstrained
        values u (R, 1) -> (R,) (:meth:`_log_prior`) of a scalar outside any plate whose
        prior reads only args and is not Gaussian in its unconstrained space; else
        None."""
        fam = self.net.families[name] if name in self.net.families else None
        v = self.runtime.checked.vars[name]
        if fam is None or not getattr(fam, "informable", False) or fam.udim != 1 \
                or fam.info.n != 1 or v.is_family or (v.dist in self.GAUSSIAN_PRIORS and
                                                      v.stmts[0].dist.trunc is None) \
                or not self._prior_reads_only_args(name):
            return None
        return self._log_prior(name, at)

    def _log_prior(self, name: str, at):
        """Latent ``name``'s exact prior log density at unconstrained values u (R, 1),
        the transform's Jacobian included, (R,); None where it is not finite (or cannot
        be evaluated) at ``at`` (R, 1)."""
        rt, fam = self.runtime, self.net.families[name]
        stmt = rt.checked.vars[name].stmts[0]

        def log_prior(u):
            part = u.reshape(u.shape[0], 1, fam.udim)
            return fam.prior_log_density(rt, stmt, part, fam.transform(part), {})
        try:
            probe = log_prior(at)
        except (ModelRuntimeError, RuntimeError, ValueError):
            return None
        return log_prior if bool(torch.isfinite(probe).all()) else None

    def _placed(self, facts, mode, P, usable, loc0, scale0, profile=None):
        """The facts of this site at its marginal of a joint fit N(mode, P^-1) (M, D)
        whose first coordinates are its own (its prior N(loc0, scale0^2), (M, d)): a
        scalar as a Gaussian message to its family (the ``profile``'s (mean, precision,
        usable) where it is usable); a vector, a simplex, a plate's instances placed at
        the fit's marginal for each."""
        M, d = loc0.shape
        if d == 1 and self.info.n == 1 and self.family.informable:
            lam, info = site_message(mode, P, loc0, scale0, 1, usable)
            if profile is not None:
                mean, prec, ok = profile
                plam, pinfo = gaussian_message(mean, prec.reshape(M, 1).reciprocal(), loc0,
                                               scale0, ok)
                lam = torch.where(ok.unsqueeze(-1), plam, lam)
                info = torch.where(ok.unsqueeze(-1), pinfo, info)
            return self.family.inform(facts, None, (lam.reshape(M, 1, 1), info.reshape(M, 1, 1)))
        cov = torch.linalg.inv_ex(P)[0][:, :d, :d]
        return self.family.located_at(facts, mode[:, :d], cov, usable)

    def _told_apart(self, obs) -> bool:
        """Whether a vector drawn before this site that ``obs`` read (a mixture's
        locations, when its scales are proposed) already tells its components apart."""
        rt, fams = self.runtime, self.net.families
        for o in obs:
            v = rt.checked.vars[o]
            for r in v.reads | v.control:
                if r in self.env and rt.checked.vars[r].kind == "latent" and r in fams \
                        and fams[r].info.de > 1 and getattr(fams[r], "moments_usable", False):
                    return True
        return False

    def _distinct_rows(self, names, summed, obs, dets, locs, scales, start):
        """Where the joint fit's inputs repeat across the M rows -- the statements it
        evaluates read only data, the fitted latents, the summed ones and the
        deterministic values it recomputes, and the rows' priors, starts and
        observations are equal -- the first row of each distinct input (R,) and each
        row's (M,) place among them; (None, None) where every row is its own (or nearly
        so: the fit is then run on all rows)."""
        rt, M = self.runtime, self.state.M
        own = set(names) | {s.name for s in summed} | set(obs) | set(dets)
        for n in list(obs) + [s.name for s in summed] + list(dets):
            v = rt.checked.vars[n]
            if any(rt.checked.vars[r].kind != "arg" and r not in own for r in v.reads | v.control):
                return None, None
        parts = locs + scales + [t for t in start if t is not None] + [
            t.reshape(t.shape[0], -1).expand(M, -1).to(locs[0].dtype)
            for o, t in self.state.observations.items() if o in set(obs) | {
                k for s in summed for k in s.observed} and t.shape[0] != 1]
        key = torch.cat([p.reshape(M, -1) for p in parts], -1)
        if bool((key == key[:1]).all()):
            return torch.zeros(1, dtype=torch.long), torch.zeros(M, dtype=torch.long)
        _, inverse = torch.unique(key, dim=0, return_inverse=True)
        R = int(inverse.max()) + 1
        if R > M // 2:
            return None, None
        first = torch.full((R,), M, dtype=torch.long).scatter_reduce(
            0, inverse, torch.arange(M), "amin")
        return first, inverse

    def _rows_only(self, rows):
        """The runtime set to run the rows ``rows`` of the M only (a fit's distinct
        inputs: its batch size and invalid marks; the caller restores them), and those
        rows' observations."""
        rt = self.runtime
        rt.B, rt.invalid = rows.numel(), torch.zeros(rows.numel(), dtype=torch.bool)
        return {o: t if t.shape[0] == 1 else t[rows] for o, t in self.state.observations.items()}

    def _later_priors(self, later):
        """The (location, scale), (M, n udim) each, of the priors of the latents
        ``later`` (of one statement, read only what is drawn before this site), in their
        families' unconstrained space, a plate's n instances one after the other."""
        rt, M, out = self.runtime, self.state.M, []
        for r in later:
            v = rt.checked.vars[r]
            loops = rt.plan.loops_of(v.stmts[0])
            d = rt.dist_for(v.stmts[0], loops, None, elem_shape=v.elem_shape)
            f = self.net.families[r].facts(d, M, self.net.families[r].info.n)
            out.append((f[0].reshape(M, -1), f[1].reshape(M, -1)))
        return out

    def _keep_fit(self, names, sizes, mode, P, usable, locs):
        """A joint fit of this site and the later ``names[1:]``: their modes as hints
        (their prior locations ``locs`` where it was not usable), and the fit kept to be
        conditioned on what is drawn next (:meth:`_condition_hints`)."""
        parts = mode.split(sizes, -1)
        for k in range(1, len(names)):
            self.state.hints[names[k]] = torch.where(usable.unsqueeze(-1), parts[k], locs[k])
        self.state.block = (names, sizes, mode, P)

    def _collapsed(self, facts):
        """The facts moved by the site's marginal posterior with the group effects
        proposed after it integrated out, and the later hyperparameters it is fitted
        with (:mod:`.collapse`), as a Gaussian message; its own informed location where
        that cannot be evaluated. The joint fit's Gaussian gives those hyperparameters
        their hints (:meth:`_condition_hints`)."""
        observed, effects, later = self.collapse
        rt, M = self.runtime, self.state.M
        hint = self._hint()
        with rt.scratch():
            try:
                later_facts = self._later_priors(later)
            except (ModelRuntimeError, RuntimeError, ValueError):
                later_facts = None
        # the fit starts where the last joint fit, conditioned on what was drawn since,
        # puts each of its members (NaN: at its prior location)
        loc0, scale0 = facts[0].reshape(M, -1), facts[1].reshape(M, -1)
        sizes = [loc0.shape[-1]] + [f[0].shape[-1] for f in later_facts or ()]
        starts = [hint] + [self.state.hints.get(n) for n in later]
        start = None if all(h is None for h in starts) or later_facts is None else torch.cat(
            [torch.full((M, k), math.nan) if h is None else h.reshape(M, k)
             for h, k in zip(starts, sizes)], -1)
        fit = None if later_facts is None else self._collapsed_rows(
            loc0, scale0, start, later_facts)
        if fit is None:
            return self.family.inform(facts, self._loglik) if self.informing else facts
        mode, P, usable = fit
        if later:
            self._keep_fit([self.info.name] + list(later), sizes, mode, P,
                           usable, [loc0] + [f[0] for f in later_facts])
        return self._placed(facts, mode, P, usable, loc0, scale0)

    def _collapsed_rows(self, loc0, scale0, start, later_facts):
        """The collapsed fit (:func:`.collapse.collapsed_fit`) of the M rows, run once
        for each distinct input where rows repeat (the first site at inference, where
        every draw shares the observations)."""
        observed, effects, later = self.collapse
        rt = self.runtime
        partners = self.net.inputs.partners
        dets = [d for z in effects for d in self.net.inputs.recompute.get(z, ())] + [
            d for z in effects if z in partners for d in partners[z].between]
        locs = [loc0] + [f[0] for f in later_facts]
        scales = [scale0] + [f[1] for f in later_facts]
        rows, inverse = self._distinct_rows([self.info.name] + list(later), [],
                                            list(observed) + list(effects), dets, locs,
                                            scales, [start])
        if rows is None:
            return collapsed_fit(self, observed, effects, loc0, scale0, start, later,
                                 later_facts)
        with rt.scratch():
            observations = self._rows_only(rows)
            fit = collapsed_fit(self, observed, effects, loc0[rows], scale0[rows],
                                None if start is None else start[rows], later,
                                [(l[rows], s[rows]) for l, s in later_facts], observations)
        return None if fit is None else tuple(t[inverse] for t in fit)

    def _message(self):
        """The look-ahead messages of a first-order chain (:mod:`.lookahead`), computed
        once per site (the family's ``lookahead``), or None."""
        if self._messages is None:
            l = self.info
            usable = l.lag == 1 and l.n > 1 and getattr(self.prior, "order", True) is None
            self._messages = (self.family.lookahead(self._loglik, self._pieces, self.state.M)
                              if usable else None,)
        return self._messages[0]

    @property
    def looked_ahead(self) -> bool:
        """Whether look-ahead messages located this site's proposal."""
        return self._messages is not None and self._messages[0] is not None

    def _pieces(self, x):
        """The prior of every element given the elements of x (M, n, de) before it: the
        family's pieces, as :meth:`FamilyDist.pieces_at` gives them."""
        return self.prior.pieces_at(x.reshape((self.state.M,) + tuple(self.event_shape)), None)

    def _single_loop_informing(self) -> bool:
        rt = self.runtime
        return len(self.info.inst_shape) == 1 and not self.gathers and all(
            len(rt.plan.loops_of(rt.checked.vars[o].stmts[0])) == 1 for o in self.informing)

    def _loglik(self, cand, x=None, j=None, keep=None):
        """The log density (M, m) of the observations this site informs from, at
        candidate values cand (M, m, de) of its instances -- all of them, or element j
        of a family produced in order (given the elements of x before it), or the
        instances ``keep`` of a plate in one loop."""
        l, M, rt = self.info, self.state.M, self.runtime
        if j is not None:
            arr = x.reshape(M, l.n, l.de).clone().to(cand.dtype)
            arr[:, j] = cand[:, 0]
        elif keep is not None:
            arr = cand.new_zeros((M, l.n, l.de)).index_copy(1, keep, cand)
        else:
            arr = cand
        stored = Stored(arr.reshape((M,) + l.inst_shape + l.elem_shape))
        fixed = {0: keep} if keep is not None else None if j is None else {0: j}
        gathered = {o: self._gathered(o) for o in self.gathers}
        return informing_loglik(rt, self.informing, self.state.observations, {l.name: stored},
                                M, cand.shape[1], l.n, gathered, fixed,
                                whole=l.n == 1 or j is not None,
                                recompute=self.net.inputs.recompute.get(l.name, ()))

    def _gathered(self, o):
        """The instance each observation of ``o`` reads, and where it was in range
        (:func:`.informing.gather_index`), once per site."""
        if o not in self._gather_index:
            self._gather_index[o] = gather_index(self.runtime, o, self.gathers[o], self.info.n)
        return self._gather_index[o]

    def _family_facts(self, x, j):
        l, M = self.info, self.state.M
        width, base = (l.n, 0) if j is None else (1, j)
        pieces = self.prior.pieces_at(x.reshape((M,) + tuple(self.event_shape)), j)
        return place(pieces, self.family.facts(None, M, width, base),
                     lambda d, w, a: self.family.facts(d, M, w, a), base)

    # ------------------------------------------------------------ the proposal
    def _const(self, keep=None):
        """The per-instance inputs known before the site is drawn: (M, n, width), or
        for a plate's instances ``keep`` only, (M, len(keep), width)."""
        if keep is None and self._const_inputs is not None:
            return self._const_inputs
        M, n = self.state.M, self.info.n
        if keep is not None:
            parts = [t for t in self._instance_inputs(keep) if t is not None]
            return torch.cat(parts + [positions(keep, n, M)], -1)
        parts = [t for t in (self.ctx, self.align) if t is not None]
        parts.append(positions(torch.arange(n), n, M))
        if not self.info.plate:
            parts.append(first_flags(0, n, M))
            if self.smooth is not None:
                parts.append(self.smooth)
        self._const_inputs = torch.cat(parts, -1)
        return self._const_inputs

    def adapter_context(self, j0, m, prev=None):
        """What a refinement's adapter is linear in, for instances j0 .. j0 + m - 1:
        the context, and in a family the previous element: (M, m, p) or None."""
        parts = [] if self.ctx is None else [self.ctx[:, j0:j0 + m]]
        if not self.info.plate:
            parts.append(prev)
        return torch.cat(parts, -1) if parts else None

    def _proposal(self, facts, j0, m, prev=None, prepared=None, keep=None):
        """The proposal of instances j0 .. j0 + m - 1, or of a plate's instances
        ``keep`` (never adapted: a subsampled training loss)."""
        encoder = self.net.encoders[self.info.name]
        if prepared is not None:          # one element of a family drawn in order
            hid = encoder.step(prepared, j0, prev, self.state.skip)
        else:
            const = self._const(keep) if keep is not None else self._const()[:, j0:j0 + m]
            hid = encoder(self.h, const, prev, self.state.skip)
        adapt = None if keep is not None else self.net.adapter(
            self.info.name, j0, m, self.state.M, self.adapter_context(j0, m, prev))
        return self.family(hid, tuple(f.reshape((-1,) + tuple(f.shape[2:])) for f in facts),
                           adapt, self.net.defensive)

    def _features(self, x, j0):
        """Standardised features, bounded (an absurd draw must not blow up the network)."""
        return self.family.features(x, j0).nan_to_num(0.0, 10.0, -10.0).clamp(-10.0, 10.0)

    def _previous(self, x):
        """The features of element t - 1 for every element t (zeros for t = 0)."""
        f = self._features(x, 0)
        return torch.cat([torch.zeros_like(f[:, :1]), f[:, :-1]], 1)

    # ------------------------------------------------------------ sampling/scoring
    @torch.no_grad()
    def _sample(self):
        l, M = self.info, self.state.M
        if l.plate:
            q = self._proposal(self.facts(), 0, l.n)
            x = q.sample().reshape(M, l.n, l.de)
            return self._redraw_off_support(q, x)
        buf = torch.zeros(M, l.n, l.de)
        prev = torch.zeros(M, 1, self.family.feat_dim)
        prepared = self.net.encoders[l.name].prepare(self.h, self._const())
        for j in range(l.n):
            q = self._proposal(self.facts(buf, j), j, 1, prev, prepared)
            buf[:, j] = q.sample().reshape(M, l.de)
            prev = self._features(buf[:, j:j + 1], j)
        return buf

    def _redraw_off_support(self, q, x, tries: int = 4):
        """Draw again the instances whose value rounding put outside the support: an
        ordered vector whose gap exp(u) fell below the float resolution of the element
        before it (two equal elements, of prior density zero) -- a set of proposal mass
        that is empty in exact arithmetic and about 1e-5 in float32. Only for static
        constrained supports (random bounds are the prior's business in that trace)."""
        sup = self.info.support
        if sup is None or is_dependent(sup) or sup is constraints.real or \
                sup is constraints.real_vector or sup.is_discrete:
            return x
        shape = (self.state.M, self.info.n) + tuple(self.info.elem_shape)

        def off(v):
            ok = sup.check(v.reshape(shape))
            return ~ok.reshape(self.state.M, self.info.n, -1).all(-1)
        try:
            bad = off(x)
        except (RuntimeError, ValueError, NotImplementedError):
            return x
        for _ in range(tries):
            if not bool(bad.any()):
                break
            x = torch.where(bad.unsqueeze(-1), q.sample().reshape(x.shape), x)
            bad = off(x)
        return x

    def _score(self, x, subsample: Optional[int] = None):
        """Teacher forcing: x (M, n, de) -> per-instance log q (M, n).

        ``subsample`` = m < n (training), for a statement in a plate: only m
        instances, drawn at random without replacement, are scored, each weighted n / m,
        and the others count zero -- an unbiased estimate of the site's sum of log q
        whose cost does not grow with n (the instances of a plate are proposed
        independently given what was drawn before it)."""
        l, M = self.info, self.state.M
        if not l.plate:
            q = self._proposal(self.facts(x), 0, l.n, self._previous(x))
            return q.log_prob(x.reshape(M * l.n, l.de)).reshape(M, l.n)
        if subsample is None or subsample >= l.n or self.net.adapted(l.name):
            q = self._proposal(self.facts(), 0, l.n)
            return q.log_prob(x.reshape(M * l.n, l.de)).reshape(M, l.n)
        keep = torch.randperm(l.n)[:subsample]
        m = keep.numel()
        q = self._proposal(self.facts(keep=keep), 0, m, keep=keep)
        lq = q.log_prob(x[:, keep].reshape(M * m, l.de)).reshape(M, m) * (l.n / m)
        return torch.zeros(M, l.n, dtype=lq.dtype).index_copy(1, keep, lq)

    def sample(self, sample_shape=torch.Size()):
        return self._sample().reshape(self.batch_shape + self.event_shape)

    def advance(self, value, subsample: Optional[int] = None):
        """Score ``value`` (see ``_score``) and move the carried state past this site."""
        l = self.info
        x = value.reshape(self.state.M, l.n, l.de).to(torch.get_default_dtype())
        lq = self._score(x, subsample)
        if self.present is not None:
            lq = torch.where(self.present, lq, torch.zeros_like(lq))
        self._cache = (value, lq)
        self.state.moved_past(l, self.net.value_summary(l, x, self.present))
        return lq

    def log_prob(self, value):
        if self._cache is None or self._cache[0] is not value:
            x = value.reshape(self.state.M, self.info.n, self.info.de)
            lq = self._score(x.to(torch.get_default_dtype()))
            if self.present is not None:
                lq = torch.where(self.present, lq, torch.zeros_like(lq))
            self._cache = (value, lq)
        lq = self._cache[1]
        if self.info.plate and self.info.inst_shape:
            return lq.reshape(self.batch_shape)
        return lq.sum(-1).reshape(self.batch_shape)
