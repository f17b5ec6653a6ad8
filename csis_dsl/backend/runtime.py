"""Executes a checked program once, vectorised over a batch of independent traces.

Layout. Inside the runtime every value of a statement nested in ``k`` loops is a tensor
``(B, n_1, ..., n_k, *shape)``: the trace batch, the loop dims, the value's own shape.
Variables are stored as whole arrays ``(B, *family_dims, *shape)`` with a mask of the
elements that exist. At the Pyro boundary (:mod:`.sites`) the layout becomes Pyro's:
a ``_traces`` plate and one ``pyro.plate`` per independent loop at fixed dims.

How loops run. A loop is *fissioned*: each statement of its body runs once over all
iterations (the loop variable is a tensor along its own dim), which is exact whenever
no statement reads another iteration of a family defined in the same loop. A family
that does (``h[t] ~ Normal(h[t - 1], ...)``) becomes one :class:`FamilyDist` site: it
samples its elements in order and scores a given value in one vectorised pass.
Branches and latent-bounded loops run with masks: a site element whose mask is off is
absent from the trace and contributes nothing to any log density.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import pyro.distributions as pdist
import torch
from torch.distributions import constraints

from ..distributions import (DISTRIBUTIONS, PARAM_KINDS, VECTOR_PARAM_KINDS, Switch,
                             Truncated, make_distribution)
from ..errors import CompileError, Diagnostic, ModelRuntimeError
from ..frontend import ast as A
from ..frontend.checks import Checked, Loop, Var
from .evaluate import Evaluator
from .values import Val, float_of


# ---------------------------------------------------------------- static plan
@dataclass
class Guard:
    stmt: A.If
    branch: int             # index into branches; len(branches) = else
    depth: int              # loop depth at the if


@dataclass
class Plan:
    """Where each statement sits: its loops and the branches that guard it."""
    loops: List[Loop]
    guards: List[Guard]


def make_plans(checked: Checked) -> Dict[int, Plan]:
    plans: Dict[int, Plan] = {}

    def visit(stmts, loops, guards):
        for s in stmts:
            plans[id(s)] = Plan(list(loops), list(guards))
            if isinstance(s, A.For):
                visit(s.body, loops + [checked.loops[id(s)]], guards)
            elif isinstance(s, A.If):
                for k, (_, body) in enumerate(s.branches):
                    visit(body, loops, guards + [Guard(s, k, len(loops))])
                if s.orelse:
                    visit(s.orelse, loops, guards + [Guard(s, len(s.branches), len(loops))])
    visit(checked.program.body, [], [])
    return plans


def unsupported(checked: Checked):
    """Constructs the checker accepts but the backend cannot run yet: reported as
    compile errors, never as tracebacks."""
    diags = []
    for name, v in checked.vars.items():
        if v.kind == "arg":
            continue
        if v.pieces > 1 or v.recursive:
            if len(v.family_dims) != 1:
                diags.append(Diagnostic(v.span, f"not supported yet: '{name}' is defined in "
                                        "pieces or recursively but is not a 1-D family"))
            if v.kind == "deterministic" and v.pieces > 1:
                diags.append(Diagnostic(v.span, f"not supported yet: deterministic '{name}' "
                                        "defined in several pieces"))
            first = checked.order.index(name)
            for r in v.reads:
                if r in checked.order and checked.order.index(r) > first:
                    diags.append(Diagnostic(v.stmts[-1].span,
                                            f"'{name}' is defined in pieces, and a later piece "
                                            f"reads '{r}', which is defined after the first "
                                            f"piece; define '{r}' before the first piece"))
    for s, plan_loops in _stmts_with_loops(checked, checked.program.body, []):
        if isinstance(s, (A.Sample, A.Assign)):
            name = A.target_name(s.target)
            if name not in checked.vars:
                continue
            n_idx = len(s.target.indices) if isinstance(s.target, A.Index) else 0
            if plan_loops and n_idx < len(plan_loops):
                diags.append(Diagnostic(s.target.span,
                                        f"'{name}' is defined inside a loop but not indexed "
                                        f"by its loop variable; write "
                                        f"{name}[{', '.join(l.var for l in plan_loops)}]"))
    if diags:
        raise CompileError(diags, checked.program.source)


def _stmts_with_loops(checked, stmts, loops):
    """Every statement with the loops around it, in one pass over the program."""
    for s in stmts:
        yield s, loops
        if isinstance(s, A.For):
            yield from _stmts_with_loops(checked, s.body, loops + [checked.loops[id(s)]])
        elif isinstance(s, A.If):
            for _, body in s.branches:
                yield from _stmts_with_loops(checked, body, loops)
            if s.orelse:
                yield from _stmts_with_loops(checked, s.orelse, loops)


# ---------------------------------------------------------------- storage
@dataclass
class Stored:
    t: torch.Tensor                       # (B or 1, *family_dims, *shape)
    exists: Optional[torch.Tensor] = None  # (B or 1, *family_dims) bool; None = all


def _expand_mask(m, ndim):
    return m.reshape(m.shape + (1,) * (ndim - m.dim()))


class Runtime:
    """One execution of the program over ``B`` traces.

    ``sites`` is the site handler (see :mod:`.sites`): it receives each random
    statement's distribution in the runtime layout and returns its value.
    """

    def __init__(self, compiled, B: int, sites, args: Dict[str, torch.Tensor]):
        self.c = compiled
        self.checked: Checked = compiled.checked
        self.plans = compiled.plans
        self.B = B
        self.sites = sites
        self.env: Dict[str, Stored] = {n: Stored(v.unsqueeze(0)) for n, v in args.items()}
        self.done: set = set()            # families already emitted as a whole

    # ---------------------------------------------------------------- contexts
    def loop_value(self, loops: List[Loop], k: int, at: Optional[int] = None) -> Val:
        P = 1 + len(loops)
        loop = loops[k]
        if at is None:
            idx = torch.arange(loop.lo, loop.lo + loop.size)
            shape = [1] * P
            shape[1 + k] = loop.size
            return Val(idx.reshape(shape), None, P)
        return Val(torch.tensor(at).reshape([1] * P), None, P)

    def lookup_fn(self, loops: List[Loop], fixed: Dict[int, int] = None,
                  overlay: Dict[str, Stored] = None):
        P = 1 + len(loops)
        fixed = fixed or {}
        by_var = {l.var: k for k, l in enumerate(loops)}

        def lookup(name: str) -> Val:
            if name in by_var:
                k = by_var[name]
                return self.loop_value(loops, k, fixed.get(k))
            st = (overlay or {}).get(name) or self.env.get(name)
            if st is None:
                raise ModelRuntimeError(f"'{name}' has no value here (is it defined only "
                                        "in a branch that did not run?)")
            t = st.t
            shape = t.shape[:1] + (1,) * (P - 1) + t.shape[1:]
            m = None
            if st.exists is not None:
                e = st.exists
                m = e.reshape(e.shape[:1] + (1,) * (P - 1) + e.shape[1:])
                m = m.reshape(m.shape + (1,) * (len(shape) - m.dim()))
            return Val(t.reshape(shape), m, P)
        return lookup

    def evaluator(self, loops, active=None, fixed=None, where="", overlay=None):
        return Evaluator(self.lookup_fn(loops, fixed, overlay), 1 + len(loops), active, where)

    def active_mask(self, s: A.Stmt, loops: List[Loop], fixed=None, overlay=None):
        """(B, *loop dims) bool: where statement ``s`` runs, or None (everywhere)."""
        plan = self.plans[id(s)]
        P = 1 + len(loops)
        mask = None

        def andm(a, b):
            if a is None:
                return b
            return a & b
        # loop bounds that depend on values
        for k, loop in enumerate(loops):
            if loop.static:
                continue
            ev = self.evaluator(loops[:k], fixed=fixed, overlay=overlay)
            lo = _extend(ev(loop.start).t, P)
            hi = _extend(ev(loop.stop).t, P)
            idx = self.loop_value(loops, k, (fixed or {}).get(k)).t
            mask = andm(mask, (idx >= lo) & (idx < hi))
        for g in plan.guards:
            sub = loops[:g.depth]
            ev = self.evaluator(sub, fixed=fixed, overlay=overlay)
            taken = None
            prior_false = None
            for j, (cond, _) in enumerate(g.stmt.branches):
                if j > g.branch:
                    break
                c = ev(cond).t != 0
                if j < g.branch:
                    prior_false = andm(prior_false, ~c)
                else:
                    taken = c
            m = prior_false if taken is None else andm(prior_false, taken)
            if m is not None:
                mask = andm(mask, _extend(m, P))
        if mask is not None:
            mask = mask.expand((self.B,) + tuple(mask.shape[1:]) if mask.shape[0] == 1
                               else mask.shape)
        return mask

    # ---------------------------------------------------------------- running
    def run(self):
        self.block(self.checked.program.body)
        return self.env

    def block(self, stmts):
        for s in stmts:
            if isinstance(s, A.For):
                self.block(s.body)
            elif isinstance(s, A.If):
                self.if_stmt(s)
            elif isinstance(s, A.Sample):
                self.sample(s)
            elif isinstance(s, A.Assign):
                self.assign(s)

    def if_stmt(self, s: A.If):
        hoisted = self.hoisted(s)
        for name, defs in hoisted.items():
            self.emit_switch(s, name, defs)
        self.block([b for _, body in s.branches for b in body] + list(s.orelse or []))

    def hoisted(self, s: A.If):
        """Random variables defined in several branches of ``s``: one site each."""
        out = {}
        bodies = list(enumerate(body for _, body in s.branches))
        if s.orelse is not None:
            bodies.append((len(s.branches), s.orelse))
        for k, body in bodies:
            for st in body:
                if isinstance(st, A.Sample):
                    name = A.target_name(st.target)
                    out.setdefault(name, []).append((k, st))
        return {n: d for n, d in out.items() if len(d) > 1}

    # ---------------------------------------------------------------- statements
    def loops_of(self, s) -> List[Loop]:
        return self.plans[id(s)].loops

    def where(self, s, name):
        return f"'{name}' at {s.span}"

    def dist_for(self, s: A.Sample, loops, active, fixed=None, overlay=None,
                 elem_shape=()):
        """The statement's distribution in the runtime layout, with batch shape
        (B, *loop dims, *element batch) and event shape = the distribution's own."""
        name = A.target_name(s.target)
        spec = DISTRIBUTIONS[s.dist.call.func]
        ev = self.evaluator(loops, active, fixed, self.where(s, name), overlay)
        P = 1 + len(loops)
        params = []
        for (pname, kind), a in zip(spec.params, s.dist.call.args):
            p = float_of(ev(a).t)
            nvec = VECTOR_PARAM_KINDS.get(kind, 0)
            params.append(self.check_param(p, kind, pname, spec.name, active, P, nvec, s))
        # broadcast the batch part of every parameter to (B, *loops, *element batch)
        event = _event_of(spec, params)
        batch = (self.B,) + tuple(1 if k in (fixed or {}) else l.size
                                  for k, l in enumerate(loops))
        elem_batch = tuple(elem_shape[:len(elem_shape) - len(event)]) if event else tuple(elem_shape)
        full = batch + elem_batch
        out = []
        for (pname, kind), p in zip(spec.params, params):
            nvec = VECTOR_PARAM_KINDS.get(kind, 0)
            tail = p.shape[p.dim() - nvec:] if nvec else ()
            core = p.shape[P:p.dim() - nvec] if nvec else p.shape[P:]
            core = (1,) * (len(elem_batch) - len(core)) + tuple(core)
            p = p.reshape(p.shape[:P] + core + tuple(tail))
            out.append(p.expand(full + tuple(tail)))
        d = make_distribution(spec, out)
        if s.dist.trunc is not None:
            lo, hi = [None if b is None else float_of(_extend(ev(b).t, P)).reshape(
                _extend(ev(b).t, P).shape + (1,) * len(elem_batch)) for b in s.dist.trunc]
            d = Truncated(d, lo, hi)
        return d

    def check_param(self, p, kind, pname, dname, active, P, nvec, s):
        cons, safe = PARAM_KINDS[kind]
        if kind in ("probs",):
            p = p / p.sum(-1, keepdim=True)
            ok = (p >= 0).all(-1)
        elif kind == "covariance":
            return p
        elif kind in ("real", "vector"):
            ok = torch.isfinite(p).all(-1) if nvec else torch.isfinite(p)
        else:
            ok = cons.check(p)
            ok = ok.all(-1) if nvec and ok.dim() == p.dim() else ok
        bad = ~ok
        if bool(bad.any()):
            act = None if active is None else active
            real_bad = bad if act is None else bad & _extend_to(act, bad)
            if bool(real_bad.any()):
                val = p[real_bad.reshape(real_bad.shape + (1,) * (p.dim() - real_bad.dim())).expand(p.shape)].reshape(-1)[0]
                raise ModelRuntimeError(
                    f"{s.span}: the {pname} of {dname} must be {_kind_words(kind)}, got "
                    f"{float(val):g} in {int(real_bad.reshape(real_bad.shape[0], -1).any(1).sum())}"
                    f" trace(s)")
            if safe is not None:
                p = torch.where(bad.reshape(bad.shape + (1,) * (p.dim() - bad.dim())),
                                torch.full_like(p, safe), p)
            elif kind == "probs":
                p = torch.where(bad.unsqueeze(-1), torch.full_like(p, 1.0 / p.shape[-1]), p)
        return p

    def sample(self, s: A.Sample):
        name = A.target_name(s.target)
        v: Var = self.checked.vars[name]
        if name in self.done:
            return
        if v.pieces > 1 or v.recursive:
            self.emit_family(v)
            return
        loops = self.loops_of(s)
        active = self.active_mask(s, loops)
        d = self.dist_for(s, loops, active, elem_shape=v.elem_shape)
        value = self.sites.sample(self, v, s, d, active, len(loops))
        self.store(v, value, active)

    def store(self, v: Var, value: torch.Tensor, active, merge=False):
        value = value.expand((self.B,) + tuple(value.shape[1:])) if value.shape[0] == 1 \
            else value
        exists = active
        if merge and v.name in self.env:
            old = self.env[v.name]
            if active is not None:
                w = _extend_to(active, value)
                value = torch.where(w, value, old.t.expand(value.shape).to(value.dtype))
                if old.exists is not None:
                    exists = active | old.exists
        if exists is not None:
            exists = exists.expand(value.shape[:1 + len(v.family_dims)])
        self.env[v.name] = Stored(value, exists)

    def emit_switch(self, s: A.If, name, defs):
        v = self.checked.vars[name]
        for _, st in defs:
            if self.plans[id(st)].loops != self.plans[id(s)].loops:
                raise ModelRuntimeError(f"{st.span}: not supported yet: '{name}' defined in "
                                        "several branches inside a loop of the branch")
        loops = self.plans[id(s)].loops
        dists, masks = [], []
        for k, st in defs:
            m = self.active_mask(st, loops)
            masks.append(m)
            dists.append(self.dist_for(st, loops, m, elem_shape=v.elem_shape))
        index = torch.zeros(dists[0].batch_shape[:1 + len(loops)], dtype=torch.long)
        present = None
        for j, m in enumerate(masks):
            if m is None:
                continue
            index = torch.where(m.expand(index.shape), torch.full_like(index, j), index)
            present = m if present is None else present | m
        d = Switch(index.reshape(index.shape + (1,) * (len(dists[0].batch_shape) - index.dim())),
                   dists)
        value = self.sites.sample(self, v, defs[0][1], d, present, len(loops))
        self.store(v, value, present)
        self.done.add(name)

    def emit_family(self, v: Var):
        d = FamilyDist(self, v)
        value = self.sites.family(self, v, d)
        self.env[v.name] = Stored(value, d.exists_for(value))
        self.done.add(v.name)

    def assign(self, s: A.Assign):
        name = A.target_name(s.target)
        v: Var = self.checked.vars[name]
        loops = self.loops_of(s)
        if v.recursive:
            self.assign_sequential(s, v, loops)
            return
        active = self.active_mask(s, loops)
        ev = self.evaluator(loops, active, where=self.where(s, name))
        val = ev(s.value)
        t = val.t
        if v.type.base == "real":
            t = float_of(t)
        shape = (self.B,) + tuple(l.size for l in loops) + tuple(v.elem_shape)
        t = t.expand(torch.broadcast_shapes(t.shape, (1,) * (1 + len(loops)) + tuple(v.elem_shape)))
        t = t.expand((self.B,) + t.shape[1:]) if t.shape[0] == 1 else t
        t = t.expand(shape)
        merge = len(v.stmts) > 1
        self.store(v, t, active, merge=merge)

    def assign_sequential(self, s, v, loops):
        k = len(loops) - 1
        loop = loops[-1]
        shape = (self.B,) + tuple(v.family_dims) + tuple(v.elem_shape)
        st = self.env.get(v.name)
        buf = torch.zeros(shape) if st is None else st.t.clone().to(torch.get_default_dtype())
        ex = torch.zeros(shape[:1 + len(v.family_dims)], dtype=torch.bool) if st is None or st.exists is None \
            else st.exists.clone()
        for i in range(loop.lo, loop.lo + loop.size):
            fixed = {k: i}
            overlay = {v.name: Stored(buf, ex)}
            active = self.active_mask(s, loops, fixed, overlay)
            ev = self.evaluator(loops, active, fixed, self.where(s, v.name), overlay)
            val = float_of(ev(s.value).t)
            val = val.expand(torch.broadcast_shapes(val.shape, (self.B,) + (1,) * len(loops)
                                                    + tuple(v.elem_shape)))
            sel = val.reshape((self.B,) + tuple(val.shape[1:len(loops)]) + tuple(val.shape[len(loops) + 1:]))
            buf = buf.clone()
            buf[:, i] = sel if len(loops) == 1 else sel
            a = torch.ones(self.B, dtype=torch.bool) if active is None else active.reshape(self.B, -1)[:, 0]
            ex = ex.clone()
            ex[:, i] = a
        self.env[v.name] = Stored(buf, ex)


def _kind_words(kind):
    return {"positive": "positive", "probability": "in [0, 1]", "count":
            "a non-negative integer", "probs": "non-negative weights",
            "concentration": "positive", "real": "a finite number",
            "vector": "finite"}.get(kind, kind)


def _extend(t: torch.Tensor, P: int) -> torch.Tensor:
    return t.reshape(t.shape + (1,) * (P - t.dim())) if t.dim() < P else t


def _extend_to(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


def _event_of(spec, params):
    if spec.name == "Dirichlet":
        return params[0].shape[-1:]
    if spec.name == "MultivariateNormal":
        return params[0].shape[-1:]
    return ()


# ---------------------------------------------------------------- families
class FamilyDist(pdist.TorchDistribution):
    """A 1-D family defined in pieces and/or recursively (``h[0] ~ ...; for t in
    range(1, T) { h[t] ~ Normal(h[t - 1], ...) }``) as one distribution over the whole
    array: ``sample`` runs the pieces in order (element by element where recursive);
    ``log_prob`` scores a given array in one vectorised pass (teacher forcing).

    Internal batch shape is (B,); event shape is the family's value shape.
    """
    has_rsample = False

    def __init__(self, rt: Runtime, v: Var, validate_args=False):
        self.rt, self.v = rt, v
        self.n = v.family_dims[0]
        self.pieces = []
        for s in v.stmts:
            loops = rt.plans[id(s)].loops
            idx = s.target.indices[0]
            if loops and isinstance(idx, A.Name) and idx.id == loops[-1].var:
                self.pieces.append((s, loops, None))
            else:
                c = rt.checked and _const_index(rt, idx)
                self.pieces.append((s, loops, c))
        super().__init__(torch.Size([rt.B]), torch.Size(v.type.shape), validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self.v.support or constraints.real

    def _piece_dist(self, s, loops, fixed, overlay, elem_shape):
        active = self.rt.active_mask(s, loops, fixed, overlay)
        d = self.rt.dist_for(s, loops, active, fixed, overlay, elem_shape=elem_shape)
        return d, active

    def exists_for(self, value):
        return self._exists

    def sample(self, sample_shape=torch.Size()):
        rt, v = self.rt, self.v
        B = rt.B
        elem = tuple(v.elem_shape)
        buf = torch.zeros((B, self.n) + elem)
        ex = torch.zeros((B, self.n), dtype=torch.bool)
        for s, loops, c in self.pieces:
            if c is not None:
                overlay = {v.name: Stored(buf, ex)}
                d, active = self._piece_dist(s, loops, None, overlay, elem)
                x = d.sample()
                buf = buf.clone()
                buf[:, c] = float_of(x).reshape((B,) + elem)
                ex = ex.clone()
                ex[:, c] = True if active is None else active.reshape(B)
                continue
            loop = loops[-1]
            k = len(loops) - 1
            for i in range(loop.lo, loop.lo + loop.size):
                overlay = {v.name: Stored(buf, ex)}
                d, active = self._piece_dist(s, loops, {k: i}, overlay, elem)
                x = float_of(d.sample()).reshape((B,) + elem)
                buf = buf.clone()
                buf[:, i] = x
                ex = ex.clone()
                ex[:, i] = True if active is None else active.reshape(B)
        self._exists = ex
        if v.type.base != "real":
            buf = buf.long()
        return buf

    def log_prob(self, value):
        rt, v = self.rt, self.v
        B = value.shape[0]
        elem = tuple(v.elem_shape)
        value = value.reshape((B, self.n) + elem)
        ex = torch.zeros((B, self.n), dtype=torch.bool)
        for s, loops, c in self.pieces:
            if c is not None:
                ex[:, c] = True
            else:
                ex[:, loops[-1].lo:loops[-1].lo + loops[-1].size] = True
        overlay = {v.name: Stored(float_of(value), ex)}
        total = torch.zeros(B)
        exists = torch.zeros((B, self.n), dtype=torch.bool)
        for s, loops, c in self.pieces:
            d, active = self._piece_dist(s, loops, None, overlay, elem)
            if c is not None:
                x = value[:, c]
                lp = d.log_prob(x.reshape(d.batch_shape + d.event_shape))
                lp = lp.reshape(B, -1).sum(-1)
                a = torch.ones(B, dtype=torch.bool) if active is None else active.reshape(B)
                exists[:, c] = a
            else:
                loop = loops[-1]
                x = value[:, loop.lo:loop.lo + loop.size]
                lp = d.log_prob(x.reshape(d.batch_shape + d.event_shape))
                lp = lp.reshape(lp.shape[:2] + (-1,)).sum(-1)
                a = torch.ones_like(lp, dtype=torch.bool) if active is None else active.reshape(lp.shape)
                lp = torch.where(a, lp, torch.zeros_like(lp))
                exists[:, loop.lo:loop.lo + loop.size] = a
                lp = lp.sum(-1)
            total = total + torch.where(torch.as_tensor(a).reshape(B, -1).any(-1) if c is not None else torch.ones(B, dtype=torch.bool), lp, torch.zeros_like(lp))
        self._exists = exists
        return total


    # ------------------------------------------------ the prior, element by element
    def element_moments(self, value, j: Optional[int] = None):
        """The prior mean and standard deviation of every element given the elements
        before it (teacher forcing: one vectorised pass per piece), or of element ``j``
        only (then only the elements before ``j`` of ``value`` are read). Two tensors
        (B, n or 1, *elem), NaN where a piece's distribution has no closed-form moments."""
        v = self.v
        B = value.shape[0]
        elem = tuple(v.elem_shape)
        overlay = {v.name: Stored(float_of(value).reshape((B, self.n) + elem),
                                  torch.ones((B, self.n), dtype=torch.bool))}
        width = self.n if j is None else 1
        mean = torch.full((B, width) + elem, float("nan"))
        std = torch.full((B, width) + elem, float("nan"))
        for s, loops, c in self.pieces:
            lo, size = (c, 1) if c is not None else (loops[-1].lo, loops[-1].size)
            if j is None:
                fixed, at = None, slice(lo, lo + size)
            elif lo <= j < lo + size:
                fixed, at = (None if c is not None else {len(loops) - 1: j}), slice(0, 1)
            else:
                continue
            d, _ = self._piece_dist(s, loops, fixed, overlay, elem)
            shape = (B, at.stop - at.start) + elem
            try:
                mean[:, at], std[:, at] = d.mean.reshape(shape), d.stddev.reshape(shape)
            except (NotImplementedError, AttributeError, RuntimeError):
                pass
        return mean, std


def _const_index(rt, idx):
    from ..frontend.checks import Checker
    if isinstance(idx, A.Num):
        return int(idx.value)
    ev = Evaluator(rt.lookup_fn([]), 1)
    return int(ev(idx).t.reshape(-1)[0])
