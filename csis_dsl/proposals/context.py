"""What a site's proposal reads besides the recurrent state: the values already drawn in
its Markov blanket, and the observations aligned with its instances, both chosen from
the static graph.

* Context: the latents and deterministic values defined before the site among its
  parents, its children and its children's other parents (``w`` and ``mu`` for ``c[i]``
  in a mixture; ``drift`` for ``h[t]``). One whose leading dims are the site's
  instances is read element by element (aligned); a small one is read whole; a large
  one is left to the recurrent state.
* Aligned observations: an observed child whose leading dims are the site's instances
  (``y[i]`` for ``c[i]``, ``y[t]`` for ``h[t]``) is read at each instance's index.
* Informing children: observed children whose density the proposal can evaluate at a
  candidate value when the site is proposed (``informs``); the family then moves its
  prior location by how well each candidate explains them (the locally optimal
  proposal of particle filtering: exact for a discrete site, one Newton step for a
  continuous one).

Features of a latent are its family's (standardised, unconstrained; one-hot for finite
supports); of a deterministic value, its value standardised with prior simulations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional

import torch
import torch.nn as nn

from ..frontend import ast as A
from ..frontend.checked import Checked
from ..middle.affine import gaussian_in, gaussian_stmt, monotone, on_the_line, \
    quadratic_block, quadratic_likelihood
from ..middle.plan import Plan
from .chains import Chain
from .standardise import robust_statistics
from .summed import Summed

WHOLE_MAX = 256        # the widest context read whole


class Partnered(NamedTuple):
    """A plate site's partners (:func:`partnered`)."""
    observed: List[str]           # the observations the group's fit reads
    partners: List[str]           # the later effects of the same instances
    gathers: Dict[str, A.Expr]    # observation -> the data index it reads them through
    exact: List[bool]             # per member (the site first): a quadratic in the group
    between: List[str]            # deterministic values in between, recomputed


@dataclass
class ContextVar:
    name: str
    latent: bool          # a latent (its family's features) or a deterministic value
    n: int                # its instances (family elements)
    de: int               # elements per instance
    feat: int             # feature width per instance
    aligned: bool         # read at the site's instance index

    @property
    def width(self) -> int:
        return self.feat if self.aligned else self.n * self.feat


def blanket(graph, name: str) -> set:
    """Parents, children and the children's other parents of ``name``."""
    out = set(graph.predecessors(name)) | set(graph.successors(name))
    for child in graph.successors(name):
        out |= set(graph.predecessors(child))
    out.discard(name)
    return out


def informs(checked: Checked, plan: Plan, order, info, o: str) -> Optional[List[str]]:
    """Whether observed child ``o`` of a latent site can tell its proposal how each
    candidate value explains the data when the site is proposed: one plain statement
    (``y[i] ~ ...`` in ``for i in range(N)``), reading nothing defined after the site,
    aligned with the site's instances (or any child, for a site with one instance), or
    reading them through a data index (:func:`gathered`). Whether the site's family can
    use it (a scalar, a vector with full-covariance components, a finite value) is the
    family's to say.

    Returns None where it cannot, else the deterministic values between them that the
    proposal recomputes at each candidate (empty where ``o`` reads the site itself):
    ``theta[j] = mu + tau * eta[j]; y[j] ~ Normal(theta[j], sigma[j])``, the
    non-centred hierarchical model, where each value reads what is drawn before the site
    and the site (at its own index, for a plate: :func:`derived`, :func:`read_own`)."""
    later = later_reads(checked, order, info.name, o)
    if not later:
        return [] if plain(checked, plan, info, o) or \
            gathered(checked, plan, info, o) is not None else None
    found = derived(checked, plan, order, info.name, later)
    if found is None or found[0] or not (plain(checked, plan, info, o) or any(
            through_index(checked, plan, info, d, o) for d in found[1])):
        return None
    dets = found[1]
    if info.n > 1:      # each read at its own index, down to the site (a value led by
        k = len(info.inst_shape)        # the instances may read it at its leading one,
        stmts = [checked.vars[o].stmts[0]] + [checked.vars[d].stmts[0] for d in dets]
        for st in stmts:                # or through a data index: mu[n] = a[g[n]] + ...)
            for r in dets + [info.name]:
                if r in checked.vars[A.target_name(st.target)].reads and \
                        not read_own(checked, plan, st, r) and not (
                            r == info.name and st is not stmts[0]
                            and (leading_own(checked, plan, st, r, k) or through_index(
                                checked, plan, info, A.target_name(st.target), o))):
                    return None
        if any(tuple(checked.vars[d].family_dims)[:k] != info.inst_shape
               and not through_index(checked, plan, info, d, o) for d in dets):
            return None
    return dets


def through_index(checked: Checked, plan: Plan, info, d: str, o: str) -> bool:
    """Whether value ``d`` reads the site's instances through a data index
    (:func:`gathered`) that observation ``o`` can use as its own: ``o`` reads ``d`` at
    its own index with the same loop variable (the index expression is evaluated in
    ``o``'s loop)."""
    if gathered(checked, plan, info, d) is None:
        return False
    so, sd = checked.vars[o].stmts[0], checked.vars[d].stmts[0]
    return [l.var for l in plan.loops_of(so)] == [l.var for l in plan.loops_of(sd)] and \
        read_own(checked, plan, so, d)


def read_own(checked: Checked, plan: Plan, s, name: str) -> bool:
    """Whether statement ``s`` reads ``name`` only as ``name[i, ...]`` with its own loops'
    variables."""
    own = [l.var for l in plan.loops_of(s)]
    reads, only = indexed_reads(s, name)
    return bool(reads) and only and all([getattr(i, "id", None) for i in e] == own
                                        for e in reads)


def through_values(checked: Checked, graph, name: str) -> List[str]:
    """The deterministic values computed from ``name``, directly or through others."""
    out, todo = [], [name]
    while todo:
        for r in graph.successors(todo.pop()):
            if checked.vars[r].kind == "deterministic" and r not in out:
                out.append(r)
                todo.append(r)
    return out


def structure(e):
    """An expression's shape, spans left out: equal for the same expression written
    twice."""
    if isinstance(e, A.Node):
        return (type(e).__name__,) + tuple(structure(getattr(e, f)) for f in e.__dataclass_fields__
                                           if f not in ("span", "func_span", "name_span"))
    if isinstance(e, (list, tuple)):
        return tuple(structure(x) for x in e)
    return e


def gathered(checked: Checked, plan: Plan, info, o: str) -> Optional[A.Expr]:
    """The index ``e`` through which observed ``o`` reads a plate site's instances, where
    it reads them in no other way -- ``y[n] ~ Normal(a[g[n]] + b * x[n], s)``, the group
    effects ``a`` of a hierarchical regression, ``g`` data: ``o`` one statement in one
    static loop from 0, written ``y[n]``; every read of the site ``site[e, ...]`` with the
    same ``e``, which reads only data and the loop variable. Instance j of the site is
    then informed by the observations n with e(n) = j (a segment sum of their log
    densities: the instances stay independent given what was drawn before). None
    otherwise, and for the aligned case ``a[n]`` (:func:`plain`)."""
    site = checked.vars[info.name]
    if not info.plate or len(info.inst_shape) != 1 or len(site.stmts) != 1 or \
            any(not l.static or l.lo != 0 for l in site.loops):
        return None
    v = checked.vars[o]
    s = v.stmts[0]
    if len(v.stmts) != 1 or v.is_family or not isinstance(s, (A.Sample, A.Assign)):
        return None
    loops = plan.loops_of(s)
    if len(loops) != 1 or not loops[0].static or loops[0].lo != 0:
        return None
    idx = s.target.indices if isinstance(s.target, A.Index) else []
    if [getattr(i, "id", None) for i in idx] != [loops[0].var]:
        return None
    reads, only = indexed_reads(s, info.name)
    reads = [e[0] for e in reads]
    if not reads or not only or len({structure(e) for e in reads}) != 1:
        return None
    e = reads[0]
    if isinstance(e, A.Name) and e.id == loops[0].var:
        return None
    for n in A.walk_expr(e):
        if isinstance(n, A.Name) and n.id != loops[0].var and \
                (n.id not in checked.vars or checked.vars[n.id].kind != "arg"):
            return None
    return e


def summable(checked: Checked, plan: Plan, graph, order, site: str, r: str, families,
             joined) -> Optional[Summed]:
    """``r`` as a :class:`~.summed.Summed` where it can be summed out of ``site``'s joint
    fit (:mod:`.summed`): a scalar with a finite support, one statement in static loops
    and no branch, proposed after the site, whose prior reads only data, what is drawn
    before the site, the site and the latents ``joined`` in the fit; whose children are
    all observations that read it at their own index (:func:`read_aligned`: ``y[n]``
    reading ``c[n]``) and nothing else proposed after the site but the joined latents.
    None otherwise."""
    v = checked.vars[r]
    if v.kind != "latent":
        return None
    fam = families[r]
    if fam.name != "finite" or fam.info.de != 1 or not fam.info.plate or len(v.stmts) != 1 \
            or order[r] <= order[site]:
        return None
    place = plan.placement.get(v.stmts[0])
    if place is None or place.guards or any(not l.static for l in place.loops):
        return None
    known = set(joined) | {r}
    kids = sorted(graph.successors(r), key=str)
    if later_reads(checked, order, site, r) - known or not kids or any(
            k not in plan.observed or not read_aligned(checked, plan, families[r].info, k)
            or later_reads(checked, order, site, k) - known for k in kids):
        return None
    return Summed(r, tuple(float(fam.lo + k) for k in range(fam.k)), tuple(kids))


def chainable(checked: Checked, plan: Plan, graph, order, site: str, r: str, families,
              joined) -> Optional[Chain]:
    """``r`` as a :class:`~.chains.Chain` where it can be summed out of ``site``'s joint
    fit (:mod:`.chains`): a family produced in order, proposed after the site, of scalar
    elements each reading only the element before (a first-order chain: lag 1, no
    companion family), its statements in static loops without branches covering every
    element once; its statements read only data, what is drawn before the site, the
    site and the latents ``joined``; its children are all observations that read it at
    their own index (:func:`read_aligned`) and nothing else proposed after the site but
    the joined latents. Finite values (a hidden Markov model), or a linear-Gaussian
    chain (:func:`~csis_dsl.middle.affine.gaussian_stmt` in the element before, on the
    real line, its observations Gaussian in it). None otherwise."""
    v = checked.vars[r]
    if v.kind != "latent" or order[r] <= order[site]:
        return None
    fam = families[r]
    info = fam.info
    if info.plate or info.de != 1 or len(info.inst_shape) != 1 or info.lag != 1 \
            or plan.group_of.get(r, [r]) != [r]:
        return None
    pieces, covered = plan.pieces.get(r, []), []
    for p in pieces:
        place = plan.placement.get(p.stmt)
        if not isinstance(p.stmt, A.Sample) or place is None or place.guards or \
                any(not l.static for l in place.loops):
            return None
        covered += list(range(*p.elements))
    if sorted(covered) != list(range(info.n)):
        return None
    known = set(joined) | {r}
    kids = sorted(set(graph.successors(r)) - {r}, key=str)
    if later_reads(checked, order, site, r) - known or not kids or any(
            k not in plan.observed or not read_aligned(checked, plan, info, k)
            or later_reads(checked, order, site, k) - known for k in kids):
        return None
    if fam.name == "finite":
        return Chain(r, tuple(float(fam.lo + k) for k in range(fam.k)), tuple(kids))
    if on_the_line(checked, r) and all(gaussian_stmt(p.stmt, r) for p in pieces):
        return Chain(r, None, tuple(kids), all(gaussian_in(checked, r, k) for k in kids))
    return None


def read_aligned(checked: Checked, plan: Plan, info, o: str) -> bool:
    """Whether observed ``o``, aligned with the site's instances (:func:`plain`), reads
    the site only as ``site[i, ...]`` at its own index."""
    if info.n == 1 or not plain(checked, plan, info, o):
        return False
    return read_own(checked, plan, checked.vars[o].stmts[0], info.name)


def indexed_reads(s, name: str):
    """The index lists through which sample statement ``s``'s distribution (or
    assignment ``s``'s value) reads ``name`` (``name[e, ...]``), and whether it reads it
    in no other way."""
    names, reads = 0, []
    exprs = [s.value] if isinstance(s, A.Assign) else \
        list(s.dist.call.args) + [b for b in s.dist.trunc or () if b is not None]
    for arg in exprs:
        for e in A.walk_expr(arg):
            if isinstance(e, A.Name) and e.id == name:
                names += 1
            elif isinstance(e, A.Index) and isinstance(e.base, A.Name) and \
                    e.base.id == name and e.indices:
                reads.append(e.indices)
    return reads, names == len(reads)


def derived(checked: Checked, plan: Plan, order, site: str, later):
    """What an observation reads after ``site`` (``later``) with its deterministic
    values traced back to what they read -- ``real[N] mu = X @ beta; y ~ Normal(mu,
    sigma)``, Stan's transformed parameters -- so that a joint fit recomputes them from
    the values it holds: (the latents read, directly or through them; the deterministic
    values in the order to compute them), or None where one cannot be recomputed (more
    than one statement, a family produced in order, a branch, a dynamic loop, or not
    written whole or ``mu[i, j] = ...`` with its loops' variables), or whose definition
    is not :func:`~csis_dsl.middle.affine.monotone` in the site and those latents
    (``s = theta ^ 2`` mirrors the posterior into modes one fit cannot locate)."""
    later, dets = set(later), []
    todo = [r for r in later if checked.vars[r].kind == "deterministic"]
    while todo:
        d = todo.pop()
        if d in dets:
            continue
        v = checked.vars[d]
        s = v.stmts[0]
        if len(v.stmts) != 1 or v.is_family or not isinstance(s, A.Assign) or \
                d in plan.group_of:
            return None
        place, loops = plan.placement.get(s), plan.loops_of(s)
        idx = s.target.indices if isinstance(s.target, A.Index) else []
        if place is None or place.guards or any(not l.static or l.lo != 0 for l in loops) \
                or [getattr(i, "id", None) for i in idx] != [l.var for l in loops]:
            return None
        dets.append(d)
        for r in later_reads(checked, order, site, d):
            later.add(r)
            if checked.vars[r].kind == "deterministic":
                todo.append(r)
    varied = {site} | {r for r in later if checked.vars[r].kind == "latent"}
    if not all(monotone(checked.vars[d].stmts[0].value, varied) for d in dets):
        return None
    return varied - {site}, sorted(dets, key=order.get)


def later_reads(checked: Checked, order, name: str, o: str) -> set:
    """What ``o`` reads (besides data) that the guide produces after ``name``."""
    v = checked.vars[o]
    return {r for r in v.reads | v.control
            if checked.vars[r].kind != "arg" and order[r] > order[name]}


def top_level(checked: Checked, plan: Plan, name: str) -> bool:
    """A variable of one statement outside every loop and branch."""
    v = checked.vars[name]
    if len(v.stmts) != 1 or v.is_family or v.family_dims:
        return False
    place = plan.placement.get(v.stmts[0])
    return place is not None and not place.loops and not place.guards


def few(checked: Checked, plan: Plan, name: str, families, max_dim: int = 16) -> bool:
    """A latent that can be one block of a joint fit: top-level, or one statement in
    static loops without branches whose instances (a plate: ``P[k] ~ Dirichlet(...)``
    for the K rows of a transition matrix) have at most ``max_dim`` unconstrained
    elements in all."""
    if top_level(checked, plan, name):
        return True
    v, fam = checked.vars[name], families[name]
    if not fam.joinable or len(v.stmts) != 1 or not fam.info.plate or \
            fam.info.n * fam.udim > max_dim:
        return False
    place = plan.placement.get(v.stmts[0])
    return place is not None and not place.guards and all(l.static for l in place.loops)


def ahead(checked: Checked, plan: Plan, graph, order, info, families, informing,
          max_dim: int = 16):
    """The observations a site shares with latents proposed after it, and those
    latents, when all of them can be integrated out when it is proposed
    (:mod:`.marginal`): continuous latents of few elements (:func:`few`), joined in a
    Laplace fit, whose priors read only data and what is drawn before the site (so they
    are known when it is proposed), of at most ``max_dim`` unconstrained elements with
    the site; discrete allocations in a plate, each read by its own observations only,
    summed out exactly (:mod:`.summed`: a mixture's components given its weights,
    locations and scales); and first-order chains summed out by a filter
    (:mod:`.chains`: a hidden Markov model's states, a state-space model's levels). The
    site: a scalar, a vector, a simplex, or a plate of a few of them (a transition
    matrix's rows), located in its family's unconstrained space. Deterministic values
    the observations read after the site are recomputed in the fit (:func:`derived`).
    Returns (observations, latents joined, latents summed, deterministic values
    recomputed); the observations include the site's own informing ones (the fit reads
    them all)."""
    fam = families[info.name]
    if not fam.joinable or not few(checked, plan, info.name, families, max_dim):
        return [], [], [], []
    obs, lat, summed, dets = [], [], [], []
    # the observations read by the site, or by a discrete latent or a chain after it
    # that reads it (a mixture's weights, read through the allocations; a state-space
    # model's scales, through its states)
    through = [r for r in graph.successors(info.name) if checked.vars[r].kind == "latent"
               and order[r] > order[info.name]
               and (families[r].name == "finite" or not families[r].info.plate)]
    # ... or by a deterministic value computed from it (``mu = X @ beta``)
    through += through_values(checked, graph, info.name)
    for o in plan.observed:
        if not (graph.has_edge(info.name, o) or any(graph.has_edge(r, o) for r in through)) \
                or not simple(checked, plan, o):
            continue
        later = later_reads(checked, order, info.name, o)
        found = derived(checked, plan, order, info.name, later) if later else None
        if found is None:
            continue
        later, recomputed = found
        joined = [r for r in sorted(later, key=order.get)
                  if integrable(checked, plan, order, info.name, r, families)]
        # what the latents to sum out read after the site (a hidden Markov model's
        # transition matrix) joins the fit too
        extra = {p for r in later if r not in joined
                 for p in later_reads(checked, order, info.name, r)} - set(later)
        if not all(integrable(checked, plan, order, info.name, p, families, plates=True)
                   for p in extra):
            continue
        joined += sorted(extra, key=order.get)
        rest = [summable(checked, plan, graph, order, info.name, r, families, lat + joined)
                or chainable(checked, plan, graph, order, info.name, r, families, lat + joined)
                for r in sorted(set(later) - set(joined), key=order.get)]
        if any(s is None for s in rest):
            continue
        new = [r for r in joined if r not in lat]
        if sum(families[r].info.n * families[r].udim for r in [info.name] + lat + new) > max_dim:
            continue
        obs.append(o)
        lat += new
        summed += [s for s in rest if s not in summed]
        dets += [d for d in recomputed if d not in dets]
    if not obs or not summed and not top_level(checked, plan, info.name):
        return [], [], [], []       # a plate's instances: only for what is summed out
    return (list(dict.fromkeys(list(informing) + obs)), lat, summed,
            sorted(dets, key=order.get))


def collapsible(checked: Checked, plan: Plan, graph, order, info, families, informing,
                max_joint: int = 6, partners=None):
    """For a top-level site (a hyperparameter), the group effects proposed after
    it that can be integrated out when it is proposed (:mod:`.collapse`), the later
    hyperparameters to fit jointly with it, and the observations of the collapsed
    density: ``(observations, effects, later)``, or None.

    The effects are the latents after the site that read it (or a later hyperparameter)
    in their prior, or that an observation of theirs reads; each must be a statement in
    a plate whose observations locate it (informed: exactly where its likelihood is a
    quadratic, by the Laplace approximation elsewhere -- a random effect on log-odds),
    with all its observed children informing. The later hyperparameters are top-level
    latents (scalars or small vectors) after the site that an effect's prior or an
    observation reads, whose own priors read nothing drawn after the site; with the
    site, at most ``max_joint`` unconstrained numbers. No observation may read two
    effects, nor any other latent after the site, unless they are one group of
    ``partners`` (:func:`partnered`: a varying intercept and slope, integrated out
    together). Eight schools' ``mu`` (with ``tau``) and ``tau``, radon's four
    hyperparameters (the floor slope found through the intercepts' observations),
    Grunfeld's ``mu``, ``tau`` and ``sigma`` (with its LKJ factor), the Rats growth
    curves' five qualify."""
    partners = partners or {}
    leader = leaders(partners)
    # the deterministic values between a group and its observations -> the group
    between_of = {d: [lead] + partners[lead].partners for lead in set(leader.values())
                  for d in partners[lead].between}
    fam = families[info.name]
    if info.n != 1 or not fam.joinable or not fam.informable \
            or not top_level(checked, plan, info.name):
        return None
    me = order[info.name]

    def after(r):
        return checked.vars[r].kind == "latent" and order[r] > me

    def hyper(r):
        return families[r].info.n == 1 and \
            integrable(checked, plan, order, info.name, r, families)
    effects, later, observed = set(), [], []
    todo, seen = [info.name], set()
    while todo:                 # the site and its later hyperparameters, one at a time
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found = {c for c in graph.successors(name) if after(c)}
        for o in plan.observed:
            if graph.has_edge(name, o) or name in leader and \
                    o in partners[leader[name]].observed:
                if o not in observed:
                    observed.append(o)
                reads = later_reads(checked, order, info.name, o)
                found |= {r for r in reads if after(r)} | {
                    p for r in reads for p in between_of.get(r, ()) if after(p)}
        for z in sorted(found - effects - set(later), key=order.get):
            if hyper(z):
                later.append(z)
                todo.append(z)
                continue
            group = [z]
            if z in leader:         # with the effects it is integrated out together with
                lead = leader[z]
                group = [lead] + partners[lead].partners
                if order[lead] <= me:
                    return None
            for e in group:
                v = checked.vars[e]
                kid_obs = [o for o in plan.observed if graph.has_edge(e, o)]
                if e in leader:
                    kid_obs = list(partners[leader[e]].observed)  # (some through values)
                    fine = True
                else:
                    fine = bool(informing.get(e)) and sorted(kid_obs) == sorted(informing[e])
                if len(v.stmts) != 1 or not families[e].info.plate or not fine:
                    return None
                effects.add(e)
                observed += [o for o in kid_obs if o not in observed]
                todo.append(e)      # what its observations read too (a regression's slope)
                for r in v.reads | v.control:       # a later hyperparameter of its prior
                    if checked.vars[r].kind != "arg" and order.get(r, -1) > me:
                        if r in effects or not after(r) or not hyper(r):
                            return None
                        if r not in later:
                            later.append(r)
                            todo.append(r)
    if not effects or fam.udim + sum(families[r].udim for r in later) > max_joint:
        return None
    between = {d for d, group in between_of.items() if group[0] in effects}
    for o in observed:
        reads = later_reads(checked, order, info.name, o)
        if not reads <= effects | set(later) | between or \
                len({leader.get(r, r) for r in reads & effects}) > 1:
            return None
    return observed, sorted(effects, key=order.get), sorted(later, key=order.get)


def partnered(checked: Checked, plan: Plan, graph, order, info, families):
    """For a plate site, the group effects proposed after it that its observations read
    at the same instance -- a varying intercept and slope, ``y[i, t] ~
    Normal(alpha[i] + beta[i] * x[t], s)`` or ``y[n] ~ Normal(alpha[g[n]] + beta[g[n]] *
    x[n], s)`` (the BUGS Rats growth curves, radon with a varying floor slope) -- which
    are integrated out of its location by a joint Laplace fit per instance
    (:mod:`.partners`): the site's marginal given what was drawn before it. Returns
    a :class:`Partnered`, or None.

    The partners are continuous plate latents of one statement with the site's
    instances, in static loops from 0 without branches, whose priors read only data and
    what is drawn before the site; every observation that reads the site or a partner
    reads nothing else proposed after the site and reads each of them at its own
    instance in one way: aligned (``y[i]``, ``y[i, t]``) or through one data index
    (``g[n]``). Deterministic values in between (``mu[i, t] = alpha[i] + beta[i] *
    x[t]``) are recomputed where they are aligned: led by the instances, reading the
    group at their own leading index and read by the observations at their own
    index."""
    def eligible(name):
        v, f = checked.vars[name], families[name] if name in families else None
        if f is None or v.kind != "latent" or not f.info.plate or not f.joinable or \
                not f.informable or len(v.stmts) != 1 or f.info.n < 2:
            return False
        place = plan.placement.get(v.stmts[0])
        return place is not None and not place.guards and \
            all(l.static and l.lo == 0 for l in place.loops)

    def observations_of(name):
        values = through_values(checked, graph, name)
        return [o for o in plan.observed
                if graph.has_edge(name, o) or any(graph.has_edge(d, o) for d in values)]
    if not eligible(info.name) or len(info.inst_shape) != 1:
        return None
    me = order[info.name]
    obs = observations_of(info.name)
    later = set()
    for o in obs:
        later |= later_reads(checked, order, info.name, o)
    found = derived(checked, plan, order, info.name, later) if later else None
    if not found or not found[0]:
        return None
    partners, dets = sorted(found[0], key=order.get), found[1]
    for r in partners:
        v = checked.vars[r]
        if not eligible(r) or families[r].info.inst_shape != info.inst_shape or any(
                checked.vars[p].kind != "arg" and order[p] >= me for p in v.reads | v.control):
            return None
        obs += [o for o in observations_of(r) if o not in obs]
    group, gathers = [info.name] + partners, {}
    way = {}                    # each value in between: how it reads the instances
    for d in dets:
        st, dv = checked.vars[d].stmts[0], checked.vars[d]
        if any(r in dv.reads and not read_own(checked, plan, st, r) for r in dets):
            return None
        ways = set()
        for z in group:
            if z not in dv.reads:
                continue
            e = gathered(checked, plan, families[z].info, d)
            if e is not None:                   # mu[n] = alpha[g[n]] + ...
                ways.add((structure(e), e))
            elif tuple(dv.family_dims[:1]) == info.inst_shape and \
                    leading_own(checked, plan, st, z, 1):
                ways.add(("aligned", None))     # mu[i, t] = alpha[i] + ...
            else:
                return None
        ways |= {way[r] for r in dets if r in dv.reads}
        if len({w[0] for w in ways}) != 1:
            return None
        way[d] = ways.pop()
    for o in obs:
        reads = later_reads(checked, order, info.name, o)
        st = checked.vars[o].stmts[0]
        if reads - set(partners) - set(dets) or not simple(checked, plan, o) or any(
                r in reads and not read_own(checked, plan, st, r) for r in dets):
            return None
        ways = set()
        for d in dets:
            if d in reads:
                ways.add(way[d][0])
                if way[d][1] is not None:
                    if not through_index(checked, plan, families[info.name].info, d, o) \
                            and not any(through_index(checked, plan, families[z].info, d, o)
                                        for z in partners):
                        return None
                    gathers[o] = way[d][1]
        for z in group:
            if not graph.has_edge(z, o):
                continue
            zi = families[z].info
            e = gathered(checked, plan, zi, o)
            if e is not None:
                ways.add(structure(e))
                gathers[o] = e
            elif plain(checked, plan, zi, o) and (
                    read_own(checked, plan, st, z) or leading_own(checked, plan, st, z, 1)):
                ways.add("aligned")
            else:
                return None
        if len(ways) != 1:
            return None
    block = quadratic_block(checked, group, obs)
    return Partnered(obs, partners, gathers, [n in block for n in group], dets)


def leaders(partners) -> Dict[str, str]:
    """Each effect of a group of partners (:func:`partnered`) -> the site that leads its
    group: the first to have it as a partner (in a group of three, the second also
    leads a group of two given the first; integrated out, the three are one group)."""
    leader = {}
    for lead, found in partners.items():
        if lead not in leader:
            for p in [lead] + found.partners:
                leader.setdefault(p, lead)
    return leader


def integrable(checked: Checked, plan: Plan, order, name: str, r: str, families,
               plates: bool = False) -> bool:
    """Whether latent ``r``, proposed after ``name``, can join its joint Laplace fit:
    top-level, or with ``plates`` a plate of few instances (:func:`few`: what a summed
    chain reads, a transition matrix's rows)."""
    v = checked.vars[r]
    if v.kind != "latent" or not families[r].joinable or not (
            few(checked, plan, r, families) if plates else top_level(checked, plan, r)):
        return False
    return all(checked.vars[p].kind == "arg" or order[p] < order[name]
               for p in v.reads | v.control)


def simple(checked: Checked, plan: Plan, o: str) -> bool:
    """One sample statement in static loops from 0, written ``y[i, j]`` with its loops'
    variables."""
    v = checked.vars[o]
    s = v.stmts[0]
    if len(v.stmts) != 1 or v.is_family or not isinstance(s, A.Sample):
        return False
    loops = plan.loops_of(s)
    if any(not l.static or l.lo != 0 for l in loops):
        return False
    idx = s.target.indices if isinstance(s.target, A.Index) else []
    return [getattr(i, "id", None) for i in idx] == [l.var for l in loops]


def plain(checked: Checked, plan: Plan, info, o: str) -> bool:
    """One plain statement (:func:`simple`), aligned with the site's instances (see
    :func:`informs`): of the same dims, or of more dims led by them (repeated
    measures, :func:`leading_own`)."""
    if not simple(checked, plan, o):
        return False
    v = checked.vars[o]
    site = checked.vars[info.name]
    if info.n > 1:
        if not all(l.static and l.lo == 0 for l in site.loops):
            return False
        dims, k = tuple(v.family_dims), len(info.inst_shape)
        if dims == info.inst_shape:
            return True
        # repeated measures: ``y[i, t]`` for instance ``i`` of the site (its own index
        # leading, more dims after it), each instance informed by its whole row
        return len(dims) > k and dims[:k] == info.inst_shape and (
            info.name not in v.reads or leading_own(checked, plan, v.stmts[0], info.name, k))
    return True


def leading_own(checked: Checked, plan: Plan, s, name: str, k: int) -> bool:
    """Whether statement ``s`` reads ``name`` only as ``name[i_1, ..., i_k, ...]`` with
    its own first ``k`` loops' variables leading."""
    own = [l.var for l in plan.loops_of(s)][:k]
    reads, only = indexed_reads(s, name)
    return bool(reads) and only and len(own) == k and all(
        [getattr(i, "id", None) for i in e[:k]] == own for e in reads)


class SiteInputs(nn.Module):
    """The static choice of context and aligned observations for every latent site, and
    the statistics that standardise deterministic values."""

    def __init__(self, checked: Checked, plan: Plan, graph, infos, families, config):
        super().__init__()
        order = {n: i for i, n in enumerate(plan.proposal_vars or checked.order)}
        self.context: Dict[str, List[ContextVar]] = {}
        self.aligned: Dict[str, List[str]] = {}
        self.align_width: Dict[str, int] = {}
        self.det_names = []
        obs_shape = {o: tuple(checked.vars[o].type.shape) for o in plan.observed}
        for info in infos:
            k, ctx = len(info.inst_shape), []
            for c in sorted(blanket(graph, info.name), key=order.get) if config.context else []:
                v = checked.vars[c]
                if v.kind not in ("latent", "deterministic") or order[c] > order[info.name] \
                        or v.type.base == "bool" and v.kind == "deterministic":
                    continue
                n = int(math.prod(v.family_dims)) if v.family_dims else 1
                de = int(math.prod(v.elem_shape))
                feat = families[c].feat_dim if v.kind == "latent" else de
                aligned = info.n > 1 and tuple(v.family_dims) == info.inst_shape
                cv = ContextVar(c, v.kind == "latent", n, de, feat, aligned)
                if aligned or cv.width <= WHOLE_MAX:
                    ctx.append(cv)
                    if v.kind == "deterministic" and c not in self.det_names:
                        self.det_names.append(c)
            self.context[info.name] = ctx
            names = [o for o in plan.observed if config.obs_aligned and info.n > 1
                     and graph.has_edge(info.name, o) and obs_shape[o][:k] == info.inst_shape]
            self.aligned[info.name] = names
            self.align_width[info.name] = sum(int(math.prod(obs_shape[o][k:])) for o in names)
        # informing observations, and the deterministic values between them and the
        # site that its proposal recomputes at each candidate: name -> [names]
        self.informing, self.recompute = {}, {}
        for info in infos if config.informed else []:
            values = through_values(checked, graph, info.name)
            found = {o: informs(checked, plan, order, info, o) for o in plan.observed
                     if graph.has_edge(info.name, o) or any(graph.has_edge(d, o) for d in values)}
            self.informing[info.name] = [o for o, d in found.items() if d is not None]
            dets = {d for o, ds in found.items() if ds for d in ds}
            if dets:
                self.recompute[info.name] = sorted(dets, key=order.get)
        # informing observations that read a plate site through a data index: name ->
        # {observed: the index expression} (:func:`gathered`)
        self.gathers = {}
        for info in infos:
            found = {o: gathered(checked, plan, info, o)
                     for o in self.informing.get(info.name, [])}
            for o in [o for o, e in found.items() if e is None]:
                # or through a value in between that reads the site so
                through = [d for d in self.recompute.get(info.name, ())
                           if info.name in checked.vars[d].reads
                           and through_index(checked, plan, info, d, o)]
                if through:
                    found[o] = gathered(checked, plan, info, through[0])
            found = {o: e for o, e in found.items() if e is not None}
            if found:
                self.gathers[info.name] = found
        # observations shared with latents proposed later, and those latents: the
        # site's marginal is fitted with them (:mod:`.marginal`)
        self.ahead = {}
        if config.informed:
            for info in infos:
                obs, lat, summed, dets = ahead(checked, plan, graph, order, info, families,
                                               self.informing[info.name])
                if obs:
                    block = set() if summed else \
                        quadratic_block(checked, [info.name] + lat, obs)
                    self.ahead[info.name] = (obs, lat, [n in block for n in [info.name] + lat],
                                             summed, dets)
        # sites whose informing observations are Gaussian with a location affine in
        # them: their local log-likelihood is a quadratic (one Newton step is exact)
        self.quadratic = {name: quadratic_likelihood(checked, name, obs)
                          for name, obs in self.informing.items()}
        # plate sites whose observations read later effects of the same instances,
        # fitted jointly with them per instance: name -> :class:`Partnered`
        self.partners = {}
        if config.informed:
            for info in infos:
                if info.name in self.ahead:
                    continue
                found = partnered(checked, plan, graph, order, info, families)
                if found is not None:
                    self.partners[info.name] = found
        # hyperparameters located with their group effects integrated out
        # (:mod:`.collapse`): name -> (observations, effects)
        self.collapse = {}
        if config.informed:
            for info in infos:
                if info.name in self.ahead:
                    continue
                found = collapsible(checked, plan, graph, order, info, families,
                                    self.informing, partners=self.partners)
                if found is not None:
                    self.collapse[info.name] = found
        for c in self.det_names:
            v = checked.vars[c]
            size = int(math.prod(v.type.shape)) if v.type.shape else 1
            self.register_buffer(f"mean_{c}", torch.zeros(size))
            self.register_buffer(f"std_{c}", torch.ones(size))

    def context_width(self, name: str) -> int:
        return sum(c.width for c in self.context[name])

    @torch.no_grad()
    def fit(self, sims):
        for c in self.det_names:
            x = sims[c].reshape(sims[c].shape[0], -1).to(torch.get_default_dtype())
            centre, scale = robust_statistics(x)
            getattr(self, f"mean_{c}").copy_(centre)
            getattr(self, f"std_{c}").copy_(scale)

    def context_features(self, name: str, env, families, M: int, n: int,
                         keep: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """(M, n, context width) for the site's n instances, or (M, len(keep), width) for
        the instances ``keep`` (a LongTensor), or None."""
        m = n if keep is None else keep.numel()
        parts = []
        for c in self.context[name]:
            st = env.get(c.name)
            if st is None:          # not produced yet in this run (a later piece)
                parts.append(torch.zeros(M, m, c.width))
                continue
            x = st.t.to(torch.get_default_dtype())
            x = x.expand((M,) + tuple(x.shape[1:])).reshape(M, c.n, c.de)
            if c.latent:
                f = families[c.name].features(x, 0)
            else:
                f = ((x.reshape(M, -1) - getattr(self, f"mean_{c.name}"))
                     / getattr(self, f"std_{c.name}")).reshape(M, c.n, c.de)
            if st.exists is not None:
                ex = st.exists.expand((M,) + tuple(st.exists.shape[1:])).reshape(M, -1)
                if ex.shape[1] == c.n:
                    f = f * ex.unsqueeze(-1).to(f.dtype)
            f = torch.nan_to_num(f, 0.0, 10.0, -10.0).clamp(-10.0, 10.0)
            if c.aligned:
                parts.append(f if keep is None else f[:, keep])
            else:
                parts.append(f.reshape(M, 1, -1).expand(M, m, -1))
        return torch.cat(parts, -1) if parts else None

    def aligned_observations(self, name: str, raws, M: int, n: int,
                             keep: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """The standardised observations at the site's n instances, or at the instances
        ``keep``: (M, n or len(keep), width)."""
        names = self.aligned[name]
        if not names:
            return None
        parts = []
        for o in names:
            x = raws[o]
            x = x.reshape(x.shape[0], n, -1)
            if keep is not None:
                x = x[:, keep]
            parts.append(x.expand(M, x.shape[1], x.shape[-1]))
        return torch.cat(parts, -1)
