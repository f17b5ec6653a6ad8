"""Allocations summed out: discrete latents proposed after a site, marginalised exactly
in its joint fit (:mod:`.marginal`).

A mixture written with one allocation per observation::

    simplex[2] w ~ Dirichlet(ones(2));
    real[2] mu ~ Normal([1.5, 5.5], 1.0);
    real[2] sigma ~ HalfNormal(2.0);
    for n in range(N) {
        c[n] ~ Categorical(w);
        observe y[n] ~ Normal(mu[c[n]], sigma[c[n]]);
    }

proposes ``w``, ``mu`` and ``sigma`` before the allocations ``c``. Every observation
reads an allocation, so none informs the weights, locations or scales when they are
proposed: they had only the network, which has seen only prior simulations -- with a
thousand real observations, a posterior a hundred times narrower than anything it was
trained on (the earthquake depths: ESS 0 of 5000).

Given the globals, the allocations are independent across the plate, each with finitely
many values, so they sum out exactly::

    log p(y | w, mu, sigma) = sum_n log sum_k p(c[n] = k | w) p(y[n] | c[n] = k, mu, sigma),

a differentiable function of the globals that the joint Laplace fit maximises like any
other log-likelihood. This module says which latents can be summed so
(:func:`summable`) and evaluates that sum (:func:`summed_loglik`); the allocations
themselves are then proposed from their exact local posteriors given the drawn globals
(:meth:`~.families.finite.FiniteProposal.inform`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import torch

from ..backend.values import Stored
from ..frontend import ast as A
from ..frontend.checked import Checked
from ..middle.plan import Plan


@dataclass(frozen=True)
class Summed:
    """A discrete latent summed out, and the observations that read it."""
    name: str
    values: Tuple[float, ...]       # its support
    observed: Tuple[str, ...]       # its children, all observed, aligned with it


def summable(checked: Checked, plan: Plan, graph, order, site: str, r: str, families,
             joined) -> "Summed | None":
    """``r`` as a :class:`Summed` where it can be summed out of ``site``'s joint fit: a
    scalar with a finite support (a family whose values can be enumerated), one
    statement in static loops and no branch, proposed after the site, whose prior reads
    only data, what is drawn before the site, the site and the latents ``joined`` in the
    fit; whose children are all observations read instance by instance
    (:func:`read_aligned`: ``y[n]`` reading ``c[n]``) that read nothing else proposed after
    the site but the joined latents. None otherwise."""
    v = checked.vars[r]
    if v.kind != "latent":
        return None
    fam = families[r]
    if fam.name != "finite" or fam.info.de != 1 \
            or not fam.info.plate or len(v.stmts) != 1 or order[r] <= order[site]:
        return None
    place = plan.placement.get(v.stmts[0])
    if place is None or place.guards or any(not l.static for l in place.loops):
        return None
    known = set(joined) | {site}
    if any(checked.vars[p].kind != "arg" and p not in known and order[p] >= order[site]
           for p in v.reads | v.control):
        return None
    kids = sorted(graph.successors(r), key=lambda o: str(o))
    if not kids or any(k not in plan.observed or not read_aligned(checked, plan, r, k) for k in kids):
        return None
    for o in kids:
        ov = checked.vars[o]
        for p in ov.reads | ov.control:
            if checked.vars[p].kind != "arg" and p != r and p not in known \
                    and order[p] >= order[site]:
                return None
    return Summed(r, tuple(float(fam.lo + k) for k in range(fam.k)), tuple(kids))


def read_aligned(checked: Checked, plan: Plan, r: str, o: str) -> bool:
    """Whether observed ``o`` -- one plain statement ``y[i, ...]`` in static loops from 0
    over ``r``'s instances -- reads ``r`` only as ``r[i, ...]``, at its own index."""
    v, rv = checked.vars[o], checked.vars[r]
    s = v.stmts[0]
    if len(v.stmts) != 1 or v.is_family or not isinstance(s, A.Sample) or \
            tuple(v.family_dims) != tuple(rv.family_dims):
        return False
    loops = plan.loops_of(s)
    if any(not l.static or l.lo != 0 for l in loops) or \
            any(not l.static or l.lo != 0 for l in rv.loops):
        return False
    own = [l.var for l in loops]
    idx = s.target.indices if isinstance(s.target, A.Index) else []
    if [getattr(i, "id", None) for i in idx] != own:
        return False
    names = reads = 0
    for arg in list(s.dist.call.args) + [b for b in s.dist.trunc or () if b is not None]:
        for e in A.walk_expr(arg):
            if isinstance(e, A.Name) and e.id == r:
                names += 1
            elif isinstance(e, A.Index) and isinstance(e.base, A.Name) and e.base.id == r:
                if [getattr(i, "id", None) for i in e.indices] != own:
                    return False
                reads += 1
    return reads > 0 and names == reads


def summed_loglik(rt, summed: List[Summed], observations, overlay, M: int) -> torch.Tensor:
    """log p(the observations of ``summed`` | overlay) with those latents summed out,
    (M,): per instance, log sum over the values of the latent's prior times its
    observations' density; summed over the instances and the latents."""
    total = torch.zeros(M)
    for s in summed:
        st = rt.checked.vars[s.name].stmts[0]
        info = rt.checked.vars[s.name]
        shape = (1,) + tuple(info.family_dims) + tuple(info.elem_shape)
        terms = []
        for val in s.values:
            x = torch.full(shape, val)
            here = {**overlay, s.name: Stored(x)}
            lp = rt.stmt_log_prob(st, x, here).reshape(M, -1)
            for o in s.observed:
                ost = rt.checked.vars[o].stmts[0]
                lp = lp + rt.stmt_log_prob(ost, observations[o], here).reshape(M, lp.shape[1], -1).sum(-1)
            terms.append(lp)
        total = total + torch.logsumexp(torch.stack(terms, 0), 0).sum(-1)
    return total
