"""Executes a checked program once, vectorised over a batch of independent traces.

Layout. Inside the interpreter every value of a statement nested in ``k`` loops is a
tensor ``(B, n_1, ..., n_k, *shape)``: the trace batch, the loop dims, the value's own
shape. Variables are stored as whole arrays ``(B, *family_dims, *shape)`` with a mask of
the elements that exist.

How loops run. A loop is *fissioned*: each statement of its body runs once over all
iterations (the loop variable is a tensor along its own dim), which is exact whenever
no statement reads another iteration of a family defined in the same loop. A family
that does (``h[t] ~ Normal(h[t - 1], ...)``) becomes one site whose distribution
(:mod:`.family`) produces its elements in order. Branches and latent-bounded loops run
with masks: a site element whose mask is off is absent from the trace and contributes
nothing to any log density.

Every random statement goes to the site handler (:mod:`.handlers`), which decides its
value: the same interpreter serves the Pyro model, the guide and the fast path.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Dict, List, Optional

import torch

from ..catalogue.distributions import (DISTRIBUTIONS, MATRIX_KINDS, PARAM_KINDS, check_values, normalise,
                                      problems)
from ..errors import ModelRuntimeError
from ..frontend import ast as A
from ..frontend.checked import Checked, Loop, Var
from ..middle.plan import Plan
from .dists import OrderStatistics, Switch, Truncated
from .evaluate import Evaluator
from .family import FamilyDist, InOrder
from .handlers import Site, SiteHandler
from .values import Deferred, Stored, Val, float_of


def extend(t: torch.Tensor, P: int) -> torch.Tensor:
    """Trailing singleton dims up to ``P`` dims."""
    return t.reshape(t.shape + (1,) * (P - t.dim())) if t.dim() < P else t


def fixed_size(at) -> int:
    """The size of a loop dim restricted to ``at``: one value, or a LongTensor of them."""
    return at.numel() if torch.is_tensor(at) else 1


def extend_to(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


class Runtime:
    """One execution of the program over ``B`` traces.

    ``strict``: a parameter out of range is the model's fault (a ModelRuntimeError
    naming the statement) -- right when every value comes from the model itself. When
    latents come from elsewhere (a proposal, a refinement), such a trace is impossible
    under the model, not an error: it is marked in ``invalid`` (its density is zero)
    and the run goes on with a safe value."""

    def __init__(self, checked: Checked, plan: Plan, B: int, handler: SiteHandler,
                 args: Dict[str, torch.Tensor], strict: bool = True, body=None):
        self.checked, self.plan, self.B, self.handler = checked, plan, B, handler
        # the top-level statements in the order to run them: the program's, or the
        # guide's (``plan.proposal_body``)
        self.body = body if body is not None else checked.program.body
        self.strict = strict
        self.invalid = torch.zeros(B, dtype=torch.bool)
        self.device = self.invalid.device     # made where the run's tensors are made
        self.problem: Optional[ModelRuntimeError] = None   # the first, when not strict
        self.env: Dict[str, Stored] = {n: Stored(v.unsqueeze(0)) for n, v in args.items()}
        self.done: set = set()            # families already emitted as a whole

    @contextmanager
    def scratch(self):
        """Within: evaluations that leave nothing behind (a proposal's fits try
        candidate values that are not the trace's) -- the invalid marks, the first
        problem and the batch size are put back after."""
        saved = (self.invalid, self.problem, self.B)
        try:
            yield self
        finally:
            self.invalid, self.problem, self.B = saved

    # ---------------------------------------------------------------- contexts
    def loop_value(self, loops: List[Loop], k: int, at=None) -> Val:
        """The values of loop k's variable along its dim: all of them, or only ``at``
        (one value: a dim of size 1; a LongTensor of values: a dim of their number)."""
        P = 1 + len(loops)
        shape = [1] * P
        if at is None:
            loop = loops[k]
            shape[1 + k] = loop.size
            return Val(torch.arange(loop.lo, loop.lo + loop.size).reshape(shape), None, P)
        if torch.is_tensor(at):
            shape[1 + k] = at.numel()
            return Val(at.reshape(shape), None, P)
        return Val(torch.tensor(at).reshape(shape), None, P)

    def lookup_fn(self, loops: List[Loop], fixed: Dict[int, object] = None,
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
        return Evaluator(self.lookup_fn(loops, fixed, overlay), 1 + len(loops), active, where,
                         self.plan.folding, self.device)

    def active_mask(self, s: A.Stmt, loops: List[Loop], fixed=None, overlay=None):
        """(B, *loop dims) bool: where statement ``s`` runs, or None (everywhere)."""
        P = 1 + len(loops)
        mask = None

        def andm(a, b):
            return b if a is None else a & b
        for k, loop in enumerate(loops):       # loop bounds that depend on values
            if loop.static:
                continue
            ev = self.evaluator(loops[:k], fixed=fixed, overlay=overlay)
            lo, hi = extend(ev(loop.start).t, P), extend(ev(loop.stop).t, P)
            idx = self.loop_value(loops, k, (fixed or {}).get(k)).t
            mask = andm(mask, (idx >= lo) & (idx < hi))
        for g in self.plan.placement[s].guards:
            ev = self.evaluator(loops[:g.depth], fixed=fixed, overlay=overlay)
            taken = None
            for j, (cond, _) in enumerate(g.stmt.branches[:g.branch + 1]):
                c = ev(cond).t != 0
                taken = andm(taken, c if j == g.branch else ~c)
            if taken is not None:
                mask = andm(mask, extend(taken, P))
        if mask is not None and mask.shape[0] == 1:
            mask = mask.expand((self.B,) + tuple(mask.shape[1:]))
        return mask

    # ---------------------------------------------------------------- running
    def run(self) -> Dict[str, Stored]:
        try:
            self.block(self.body)
        except ModelRuntimeError as err:
            err.source = err.source or self.checked.source
            raise
        return self.env

    def block(self, stmts):
        for s in stmts:
            if isinstance(s, A.For):
                self.block(s.body)
            elif isinstance(s, A.If):
                for name, defs in self.plan.switches.get(s, {}).items():
                    self.emit_switch(s, name, defs)
                self.block([b for _, body in s.branches for b in body] + list(s.orelse or []))
            elif isinstance(s, A.Sample):
                self.sample(s)
            elif isinstance(s, A.Assign):
                self.assign(s)

    def where(self, s, name):
        return f"'{name}' at {s.span}"

    def emit(self, site: Site) -> torch.Tensor:
        site.env, site.runtime = self.env, self
        if site.var.kind == "observed":
            return self.handler.observed(site)
        return self.handler.latent(site)

    # ---------------------------------------------------------------- distributions
    def dist_for(self, s: A.Sample, loops, active, fixed=None, overlay=None, elem_shape=()):
        """The statement's distribution in the runtime layout, with batch shape
        (B, *loop dims, *element batch) and event shape = the distribution's own."""
        name = A.target_name(s.target)
        spec = DISTRIBUTIONS[s.dist.call.func]
        ev = self.evaluator(loops, active, fixed, self.where(s, name), overlay)
        P = 1 + len(loops)
        params = [self.parameter(ev, a, p, spec.name, active, P, s)
                  for p, a in zip(spec.params, s.dist.call.args)]
        # broadcast the batch part of every parameter to (B, *loops, *element batch)
        event = spec.event_shape(params)
        batch = (self.B,) + tuple(fixed_size(fixed[k]) if k in (fixed or {}) else l.size
                                  for k, l in enumerate(loops))
        elem_batch = tuple(elem_shape[:len(elem_shape) - len(event)])
        out = []
        for p, t in zip(spec.params, params):
            nvec = p.vector_dims
            tail = tuple(t.shape[t.dim() - nvec:]) if nvec else ()
            core = tuple(t.shape[P:t.dim() - nvec])
            core = (1,) * (len(elem_batch) - len(core)) + core
            out.append(t.reshape(t.shape[:P] + core + tail).expand(batch + elem_batch + tail))
        for bad, msg in problems(spec, out, sums=False):   # relations between parameters
            self.invalid_params(bad.reshape(bad.shape[:1] + (-1,)).any(-1), active, msg, s)
            if spec.name == "MultivariateNormal":          # keep it constructible
                cov = out[1]
                eye = torch.eye(cov.shape[-1], dtype=cov.dtype)
                out[1] = torch.where(bad.reshape(bad.shape + (1, 1)), eye, cov)
            elif spec.name == "Uniform":
                out[1] = torch.where(bad, out[0] + 1.0, out[1])
        d = spec.build(out)
        if s.dist.trunc is not None:
            lo, hi = [None if b is None else self._bound(ev(b).t, P, len(elem_batch))
                      for b in s.dist.trunc]
            d = Truncated(d, lo, hi)
        v = self.checked.vars[name]
        if v.ordered:               # ordered[K]: the last K of the batch, sorted
            d = OrderStatistics(d, positive=v.ordered == "positive_ordered")
        return d

    def stmt_log_prob(self, s: A.Sample, value: torch.Tensor, overlay: Dict[str, Stored],
                      fixed: Optional[Dict[int, object]] = None) -> torch.Tensor:
        """log p of ``value`` (the statement's whole array, (1 or B, *family dims,
        *element)) under statement ``s`` evaluated with ``overlay`` replacing stored
        variables: (B, *loop dims, with the ``fixed`` ones restricted), zero where it
        does not run. What a proposal uses to ask how a candidate value of one latent
        explains the observations that depend on it."""
        v = self.checked.vars[A.target_name(s.target)]
        loops = self.plan.loops_of(s)
        active = self.active_mask(s, loops, fixed, overlay)
        d = self.dist_for(s, loops, active, fixed, overlay, elem_shape=v.elem_shape)
        x = value.expand((self.B,) + tuple(value.shape[1:]))
        for k, j in (fixed or {}).items():  # arrays are indexed from 0, as loops here
            x = x.index_select(1 + k, j) if torch.is_tensor(j) else x.narrow(1 + k, j, 1)
        lp = d.log_prob(x.reshape(d.batch_shape + d.event_shape))
        lp = lp.reshape(lp.shape[:1 + len(loops)] + (-1,)).sum(-1)
        if active is not None:
            lp = torch.where(active.reshape(lp.shape), lp, torch.zeros_like(lp))
        return lp

    @staticmethod
    def _bound(t, P, n_elem):
        t = float_of(extend(t, P))
        return t.reshape(t.shape + (1,) * n_elem)

    def invalid_params(self, bad_traces, active, msg, s):
        """Traces (B,) whose parameters break a relation (low < high, a positive
        definite covariance), where the statement runs: the model's fault (strict), or
        traces of zero density."""
        if active is not None:
            bad_traces = bad_traces & active.reshape(active.shape[0], -1).any(-1).expand_as(bad_traces)
        if not bool(bad_traces.any()):
            return
        if self.strict:
            raise ModelRuntimeError(f"{msg}, which fails in {int(bad_traces.sum())} "
                                    "trace(s)", s.span)
        self.zero_density(bad_traces, msg, s)

    def zero_density(self, traces, msg, s):
        """Not strict: mark ``traces`` (B,) as of density zero, and keep the first
        reason (what simulation reports when such traces are many)."""
        self.invalid = self.invalid | traces.expand(self.B)
        if self.problem is None:
            self.problem = ModelRuntimeError(msg, s.span, self.checked.source)

    def parameter(self, ev, a: A.Expr, param, dname, active, P, s):
        """Parameter ``param`` of a distribution, the value of expression ``a``,
        checked (:meth:`check_param`); a literal-only one is checked once and read back
        after (:mod:`..middle.folding`)."""
        folding = self.plan.folding
        if not folding.literal(a):
            return self.check_param(float_of(ev(a).t), param, dname, active, P, s)[0]
        t = folding.get(a, param.kind, self.device)
        if t is not None:
            return t.reshape((1,) * P + t.shape)
        t, passed = self.check_param(float_of(ev(a).t), param, dname, active, P, s)
        if passed:
            folding.put(a, param.kind, self.device, t, P)
        return t

    def check_param(self, p, param, dname, active, P, s):
        """Parameters out of range where the statement runs are a ModelRuntimeError
        naming it; where it does not run they are replaced by a safe value. Returns the
        parameter and whether every element passed (nothing replaced)."""
        kind = PARAM_KINDS[param.kind]
        p = normalise(param.kind, p)
        if param.kind in MATRIX_KINDS:     # checked as relations (problems)
            return p, True
        ok = check_values(param.kind, p)
        if bool(ok.all()):
            return p, True
        bad = ~ok
        real_bad = bad if active is None else bad & extend_to(active, bad)
        if bool(real_bad.any()):
            traces = real_bad.reshape(real_bad.shape[0], -1).any(1)
            sel = extend_to(real_bad, p).expand(p.shape)
            shown = float(p.detach()[sel].reshape(-1)[0])
            msg = f"the {param.name} of {dname} must be {kind.words}, got {shown:g}"
            # an overflow or an underflow, not a sign error: say where it comes from and
            # what helps (BUGS's vague priors inside exp(): every simulation fails)
            wide = ("at values the priors draw: priors that wide cannot be simulated; give "
                    "what it reads weakly informative priors, or rescale it")
            if math.isinf(shown):
                msg += (" (the expression overflowed float32, beyond 3.4e38 -- exp() of "
                        f"more than 88 -- {wide})")
            elif shown == 0.0 and param.kind in ("positive", "concentration"):
                msg += (" (if it is not 0 by design, the expression underflowed float32, "
                        f"below 1e-38 -- exp() of less than -87 -- {wide})")
            if self.strict:
                raise ModelRuntimeError(f"{msg} in {int(traces.sum())} trace(s)", s.span)
            self.zero_density(traces, msg, s)
        fill = kind.safe if kind.safe is not None else 1.0 / p.shape[-1]
        return torch.where(extend_to(bad, p), torch.full_like(p, fill), p), False

    # ---------------------------------------------------------------- statements
    def sample(self, s: A.Sample):
        name = A.target_name(s.target)
        v: Var = self.checked.vars[name]
        if name in self.done:
            return
        if v.is_family:
            self.emit_family(v)
            return
        loops = self.plan.loops_of(s)
        active = self.active_mask(s, loops)
        d = None if v.kind == "observed" and not self.handler.reads_observed else \
            self.dist_for(s, loops, active, elem_shape=v.elem_shape)
        value = self.emit(Site(v, s, d, active, loops))
        self.store(v, value, active)

    def store(self, v: Var, value: torch.Tensor, active, merge=False):
        value = value.expand((self.B,) + tuple(value.shape[1:])) if value.shape[0] == 1 \
            else value
        exists = active
        if merge and v.name in self.env:
            old = self.env[v.name]
            if active is not None:
                value = torch.where(extend_to(active, value), value,
                                    old.t.expand(value.shape).to(value.dtype))
                if old.exists is not None:
                    exists = active | old.exists
        if exists is not None:
            exists = exists.expand(value.shape[:1 + len(v.family_dims)])
        self.env[v.name] = Stored(value, exists)

    def emit_switch(self, s: A.If, name, defs):
        """One site for a variable defined in several exclusive branches."""
        v = self.checked.vars[name]
        loops = self.plan.loops_of(s)
        dists, masks = [], []
        for _, st in defs:
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
        d = Switch(extend(index, len(dists[0].batch_shape)), dists)
        value = self.emit(Site(v, defs[0][1], d, present, loops))
        self.store(v, value, present)
        self.done.add(name)

    def emit_family(self, v: Var):
        d = FamilyDist(self, v, self.plan.pieces[v.name])
        value = self.emit(Site(v, v.stmts[0], d, None, [], family=True))
        self.env[v.name] = Stored(value, d.exists(value))
        self.done.add(v.name)
        for name in self.plan.group_of.get(v.name, [v.name])[1:]:
            self.env[name] = Deferred(lambda name=name: d.companions(value)[name])
            self.done.add(name)

    def assign(self, s: A.Assign):
        name = A.target_name(s.target)
        v: Var = self.checked.vars[name]
        if name in self.done:
            return
        group = self.plan.group_of.get(name)
        if group is not None:           # produced in order, alone or with its group
            leader = self.checked.vars[group[0]]
            if leader.kind != "deterministic":
                self.emit_family(leader)
                return
            self.env.update(InOrder(self, group).run())
            self.done.update(group)
            return
        loops = self.plan.loops_of(s)
        active = self.active_mask(s, loops)
        self.store(v, self.assigned(s, active), active, merge=len(v.stmts) > 1)

    def assigned(self, s: A.Assign, active=None, overlay=None) -> torch.Tensor:
        """The value of assignment ``s`` over its loops, (B, *loop sizes, *element),
        evaluated with ``overlay`` replacing stored variables (what a joint fit
        recomputes from the values it holds)."""
        name = A.target_name(s.target)
        v: Var = self.checked.vars[name]
        loops = self.plan.loops_of(s)
        t = self.evaluator(loops, active, where=self.where(s, name), overlay=overlay)(s.value).t
        if v.type.base == "real":
            t = float_of(t)
        shape = (self.B,) + tuple(l.size for l in loops) + tuple(v.elem_shape)
        t = t.expand(torch.broadcast_shapes(t.shape, (1,) * (1 + len(loops)) + tuple(v.elem_shape)))
        t = t.expand((self.B,) + t.shape[1:]) if t.shape[0] == 1 else t
        return t.expand(shape)
