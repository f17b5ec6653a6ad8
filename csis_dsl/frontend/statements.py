"""The checker's statement walk: ``check(program, overrides) -> Checked``.

Names, arity, types and shapes, definitions, loops and supports, with every diagnostic
collected and raised together as one :class:`CompileError`. The checker keeps going
after an error wherever it can. Its parts: :mod:`.scopes` (names and diagnostics),
:mod:`.constants` (what is known when compiling), :mod:`.expressions` (expression
types), :mod:`.definitions` (what a left-hand side defines, recursion).
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from pyro.distributions import constraints as pconstraints
from torch.distributions import constraints

from ..catalogue import supports
from ..catalogue.distributions import DISTRIBUTIONS, NAMES, DistSpec, problems
from ..catalogue.functions import FUNCTIONS
from ..errors import CompileError, ObservationError
from . import ast as A
from .args import convert_arg
from .calls import resolve_calls
from .checked import Checked, Loop, Var
from .constants import Constants
from .definitions import Definitions
from .expressions import CallArgs, ExprTyper
from .scopes import Scope, close_match
from .types import Type, broadcast


IMPROPER = {"flat", "improper", "improperuniform", "improper_uniform", "uniformimproper"}
MAX_FINITE = 100_000      # values of a latent with a finite support (a Categorical proposal)


class Checker:
    def __init__(self, program: A.Program, overrides: Optional[dict]):
        self.p = program
        self.given = overrides
        self.overrides = dict(overrides or {})
        self.inferred = _infer_sizes(program, self.overrides)
        self.overrides.update(self.inferred)
        self.scope = Scope(program)
        self.k = Constants(self.scope)
        self.typer = ExprTyper(self.scope, self.k)
        self.defs = Definitions(self.scope, self.k, self.typer)
        self.expr = self.typer.expr

    def error(self, span, msg, notes=()):
        self.scope.error(span, msg, notes)

    def run(self) -> Checked:
        resolve_calls(self.p, self.error)
        self.block(self.p.body)
        from_data = getattr(self.given, "from_data", set())
        for name in self.overrides:
            v = self.scope.vars.get(name)
            if v is not None and v.kind != "arg":
                if name in from_data:            # observations in the data file
                    continue
                self.error(None, f"'{name}' is {v.kind}, not an arg; give its value to "
                           "infer() (or --obs / --obs-file)")
                continue
            args = [n for n, v in self.scope.vars.items() if v.kind == "arg"]
            self.error(None, f"there is no arg '{name}' to override{close_match(name, args)}")
        if self.scope.diags:
            raise CompileError(self.scope.diags, self.p.source)
        s = self.scope
        return Checked(self.p, s.vars, s.arg_values(), s.order, s.loops, s.types,
                       s.max_depth)

    def block(self, stmts):
        for s in stmts:
            if isinstance(s, A.ArgDecl):
                self.arg_decl(s)
            elif isinstance(s, A.Sample):
                self.sample(s)
            elif isinstance(s, A.Assign):
                self.assign(s)
            elif isinstance(s, A.For):
                self.for_loop(s)
            elif isinstance(s, A.If):
                self.if_stmt(s)

    # ------------------------------------------------------------------ args
    def arg_decl(self, s: A.ArgDecl):
        scope = self.scope
        if scope.loop_stack or scope.cond_stack:
            self.error(s.span, "an arg must be declared at the top level of the model")
        if not scope.check_name(s.name, s.name_span):
            return
        if s.name in scope.vars:
            scope.redefined(s.name, s.name_span)
            return
        t = self.typer.type_spec(s.type)
        if t is None:                  # its type was reported: its uses are not errors
            self.defs.poison(s.name, "arg", s.name_span)
            return
        if s.name in self.overrides:
            try:
                value = convert_arg(s.name, t, self.overrides.pop(s.name))
            except ObservationError as err:
                self.error(s.name_span, str(err) + self._sizes_note(s))
                self.defs.poison(s.name, "arg", s.name_span)
                return
        elif s.default is None:
            self.error(s.name_span, f"arg '{s.name}' has no default; give one with "
                       f"'= value', pass args={{'{s.name}': ...}} or a data file "
                       f"(data=... / --data FILE) when compiling")
            self.defs.poison(s.name, "arg", s.name_span)
            return
        else:
            value = self.arg_default(s, t)
            if value is None:
                self.defs.poison(s.name, "arg", s.name_span)
                return
        v = Var(s.name, "arg", t, s.name_span, [s], value=value,
                reads=scope.reads(*([s.default] if s.default is not None else []), *s.type.dims))
        if t.base in ("int", "bool") and not t.shape:
            v.bounds = (value.item(), value.item())
        lo, hi = self.k.try_const(s.type.lower), self.k.try_const(s.type.upper)
        if (lo is not None and bool((value < lo).any())) or \
                (hi is not None and bool((value > hi).any())):
            shown = value.item() if value.dim() == 0 else value.tolist()
            self.error(s.name_span, f"arg '{s.name}' = {shown} is outside its declared bounds")
        scope.define(v)

    def _sizes_note(self, s: A.ArgDecl) -> str:
        """Where the declared sizes came from, to name both sides of a mismatch."""
        parts = []
        for d in s.type.dims:
            if isinstance(d, A.Name) and d.id in self.scope.arg_values():
                n = self.scope.arg_values()[d.id]
                src = "inferred from the data" if d.id in self.inferred else "given"
                parts.append(f"{d.id} = {n.item() if n.dim() == 0 else n.tolist()} ({src})")
        return f"; its sizes are {', '.join(parts)}" if parts else ""

    def arg_default(self, s: A.ArgDecl, t: Type):
        from ..backend.evaluate import eval_static
        et = self.expr(s.default)
        if et is None:
            return None
        if self.scope.reads(s.default) - set(self.scope.arg_values()):
            self.error(s.default.span, "an arg's default may only use literals and other args")
            return None
        if et.shape != t.shape or (t.base in ("int", "bool") and et.base != t.base):
            self.error(s.default.span, f"arg '{s.name}' is declared {t} but its default "
                       f"is {et}")
            return None
        before = len(self.scope.diags)
        for sub in A.walk_expr(s.default):     # integers known when compiling: in int64
            self.k.try_const(sub)
        if len(self.scope.diags) > before:
            return None
        try:
            return eval_static(s.default, self.scope.arg_values(), t)
        except Exception as err:  # a spec must never crash the compiler
            self.error(s.default.span, f"cannot evaluate the default of '{s.name}': {err}")
            return None

    # ------------------------------------------------------------------ random variables
    def sample(self, s: A.Sample):
        call = s.dist.call
        spec = DISTRIBUTIONS.get(call.func)
        self.scope.current_target = A.target_name(s.target)
        for a in call.args:
            self.expr(a)
        self.scope.current_target = None
        kind = "observed" if s.observed else "latent"
        if getattr(call, "unresolved", False):      # reported by resolve_calls
            self.defs.define(s, kind, None, s.target, None, None, set())
            return
        if spec is None:
            hint = close_match(call.func, NAMES)
            if call.func in FUNCTIONS:
                hint = f"; '{call.func}' is a function: use '=' for a deterministic value"
            elif call.func.lower() in IMPROPER:
                hint = ("; an improper (flat) prior cannot be simulated, and inference "
                        "compilation trains on simulations of the model: give "
                        f"'{A.target_name(s.target)}' a proper prior on the scale you "
                        "expect, e.g. Normal(0.0, 10.0), or Uniform(low, high)")
            self.error(call.func_span, f"unknown distribution '{call.func}'{hint}")
            self.defs.define(s, kind, None, s.target, None, None, set())
            return
        if len(call.args) != spec.arity:
            names = ", ".join(p.name for p in spec.params)
            self.error(call.span, f"{spec.name} takes {spec.arity} argument"
                       f"{'s' if spec.arity > 1 else ''} ({names}), got {len(call.args)}")
            self.defs.define(s, kind, None, s.target, None, None, set())
            return
        ts = self.typer.types_of(call.args)
        value_type = None if None in ts else self.dist_value_type(spec, call, ts)
        if value_type is not None:
            self.check_constant_dist(spec, call, s.dist.trunc)
        if value_type is not None and s.dist.trunc is not None \
                and not self.truncation_ok(spec, s.dist):
            value_type = None
        reads = self.scope.reads(*call.args, *[b for b in s.dist.trunc or () if b is not None])
        v = self.defs.define(s, kind, s.type, s.target, value_type, spec, reads)
        if v is None:
            return
        self.defs.check_recursion(v, s)
        support = self.static_support(spec, call, s.dist.trunc)
        if kind == "latent" and spec.proposal == "finite" and \
                support is not constraints.boolean:
            r = supports.int_range(support)
            if r is None or r[1] - r[0] + 1 > MAX_FINITE:
                self.error(call.span, f"a latent {spec.name} needs a number of values known "
                           f"when compiling (at most {MAX_FINITE:,}): its bounds must be "
                           "literals, args or bounded integers, not unbounded values")
                return
        if v.stmts[0] is s:
            v.discrete = spec.discrete
            v.support = support
            v.bounds = supports.int_range(support)
            if s.type is not None and s.type.base in ("ordered", "positive_ordered"):
                self.check_ordered(v, s, spec, value_type)
            elif s.type is not None:
                self.check_declared_bounds(v, s.type, spec)
        elif supports.is_dependent(support) and not v.discrete:
            v.support = support      # pieces whose bounds depend on other variables
        elif v.dist != spec.name and (v.discrete != spec.discrete or (
                str(v.support) != str(support) and not supports.is_dependent(v.support))):
            self.error(call.func_span, f"'{v.name}' has a different support here "
                       f"({spec.name}) than where it is first defined ({v.dist}); every "
                       "definition of a variable must have the same support",
                       [(v.span, "first defined here")])

    def truncation_ok(self, spec: DistSpec, dist: A.Dist) -> bool:
        if not spec.truncatable:
            ok = [n for n in NAMES if n in DISTRIBUTIONS and DISTRIBUTIONS[n].truncatable]
            self.error(dist.span, f"{spec.name} cannot be truncated; truncation "
                       f"works for {', '.join(ok)}")
            return False
        for b in dist.trunc:
            if b is not None:
                bt = self.expr(b)
                if bt is not None and bt.shape:
                    self.error(b.span, "a truncation bound must be a scalar")
        return True

    def dist_value_type(self, spec: DistSpec, call: A.Call, ts: List[Type]) -> Optional[Type]:
        """The type of a draw: the parameters' batch shapes broadcast, plus the event."""
        batch, event = (), ()
        for p, a, t in zip(spec.params, call.args, ts):
            nvec = p.vector_dims
            if t.base == "bool":
                self.error(a.span, f"the {p.name} of {spec.name} must be a number, got {t}")
                return None
            if len(t.shape) < nvec:
                if p.kind.endswith("[]"):
                    k = ts[0].shape[-1] if ts[0].shape else "K"
                    self.error(a.span, f"the {p.name} of a Mixture's component must be a "
                               f"vector with one value per component ({k}), got {t}; "
                               f"for a shared value write ones({k}) * value")
                    return None
                self.error(a.span, f"the {p.name} of {spec.name} must be a "
                           f"{'vector' if nvec == 1 else 'matrix'}, got {t}")
                return None
            if p.kind.endswith("[]") and ts[0].shape and t.shape[-1] != ts[0].shape[-1]:
                self.error(a.span, f"size mismatch in Mixture: {ts[0].shape[-1]} weights "
                           f"but the {p.name} has {t.shape[-1]} values")
                return None
            pshape = t.shape[:len(t.shape) - nvec]
            if nvec == 1:
                ev = t.shape[-1:]
                if event and ev != event:
                    self.error(a.span, f"size mismatch in {spec.name}: {p.name} has size "
                               f"{ev[0]}, expected {event[0]}")
                    return None
                if spec.event_param is not None:
                    event = ev
            elif nvec == 2:
                if t.shape[-1] != t.shape[-2] or (event and t.shape[-1:] != event):
                    d = event[0] if event else "D"
                    self.error(a.span, f"the {p.name} of {spec.name} must be {d} x {d}, "
                               f"got {list(t.shape)}")
                    return None
            self.check_constant_param(spec, p, a)
            nb = broadcast(batch, pshape)
            if nb is None:
                self.error(call.span, f"shape mismatch between the parameters of "
                           f"{spec.name}: {list(batch)} and {list(pshape)}")
                return None
            batch = nb
        if spec.event_of is not None:       # an event shape set by a size argument
            event = spec.event_of(CallArgs(call, self.scope.types, self.k))
            if event is None:
                self.error(call.args[0].span, f"the {spec.params[0].name} of {spec.name} "
                           "must be a positive integer known when compiling (a literal or "
                           "an arg)")
                return None
        return Type(spec.value_type, batch + event)

    def check_constant_param(self, spec, p, a):
        c = self.k.try_const(a)
        if c is None or isinstance(c, bool):
            return
        if p.kind == "positive" and not 0 < c < math.inf:
            self.error(a.span, f"the {p.name} of {spec.name} must be positive and finite, "
                       f"got {c}")
        elif p.kind == "real" and not math.isfinite(c):
            self.error(a.span, f"the {p.name} of {spec.name} must be a finite number, "
                       f"got {c}")
        elif p.kind == "probability" and not 0 <= c <= 1:
            self.error(a.span, f"the {p.name} of {spec.name} must be in [0, 1], got {c}")

    def static_value(self, e: A.Expr):
        """The value of an expression that reads only literals and args (no loop
        variable, no random variable), evaluated when compiling; else None."""
        names = [x.id for x in A.walk_expr(e) if isinstance(x, A.Name)]
        if any(n not in self.scope.vars or self.scope.vars[n].kind != "arg"
               or self.scope.loop_var(n) is not None for n in names):
            return None
        t = self.scope.types.get(e)
        if t is None:
            return None
        from ..backend.evaluate import eval_static
        try:
            v = eval_static(e, self.scope.arg_values(), t)
        except Exception:      # an error that the run will report with its trace count
            return None
        return v.to(torch.get_default_dtype())

    def check_constant_dist(self, spec: DistSpec, call: A.Call, trunc):
        """What is constant in a distribution is checked when compiling: parameter
        sums and relations (catalogue ``problems``) and an empty truncation."""
        values = [self.static_value(a) for a in call.args]
        if all(v is not None for v in values):
            for _, msg in problems(spec, values):
                self.error(call.span, msg)
        if trunc is not None and all(b is not None for b in trunc):
            lo, hi = (self.k.try_const(b) for b in trunc)
            if lo is not None and hi is not None and not lo < hi:
                self.error(call.span, f"the truncation interval [{lo}, {hi}] is empty; "
                           "the lower bound must be below the upper")

    def static_support(self, spec: DistSpec, call: A.Call, trunc):
        """The support as known when compiling; ``constraints.dependent`` where it
        depends on other variables (a truncation or Uniform bound that is one), in which
        case every trace has its own (the proposal reads it from the prior there)."""
        if trunc is not None:
            lo, hi = (self.k.try_const(b) for b in trunc)
            if (trunc[0] is not None and lo is None) or (trunc[1] is not None and hi is None):
                return constraints.dependent
            if lo is not None and hi is not None:
                return constraints.interval(lo, hi)
            if lo is not None:
                return constraints.greater_than(lo)
            if hi is not None:
                return constraints.less_than(hi)
        return spec.support(CallArgs(call, self.scope.types, self.k))

    def check_ordered(self, v: Var, s: A.Sample, spec: DistSpec, value_type):
        """``ordered[K] mu ~ D(scalars)``: the K iid draws of D, sorted (their order
        statistics, density K! prod p(mu_k) on increasing vectors); positive_ordered
        needs a D with positive values."""
        t = s.type
        lo = supports.value_range(v.support)[0] if v.support is not None else None
        if spec.discrete or spec.event_param is not None or spec.event_of is not None:
            self.error(s.dist.call.func_span, f"{t.base}[K] sorts K draws of a continuous "
                       f"scalar distribution; {spec.name} is not one")
        elif value_type is not None and value_type.shape:
            self.error(s.dist.call.span, f"{t.base}[K] sorts K independent, identically "
                       f"distributed draws: the parameters of {spec.name} must be scalars, "
                       f"got a draw of shape {list(value_type.shape)}")
        elif s.dist.trunc is not None:
            self.error(s.dist.span, f"{t.base}[K] cannot be truncated")
        elif supports.is_dependent(v.support):
            self.error(s.dist.call.span, f"{t.base}[K] needs a support known when compiling")
        elif t.base == "positive_ordered" and not (lo is not None and lo >= 0):
            self.error(s.dist.call.func_span, f"positive_ordered[K] needs a distribution of "
                       f"positive values (HalfNormal, Gamma, LogNormal, ...); {spec.name} "
                       f"has support {supports.bracket(v.support)}")
        elif v.is_family or v.pieces > 1:
            self.error(t.span, f"{t.base}[K] must be defined in one statement")
        else:
            v.ordered = t.base
            v.support = pconstraints.positive_ordered_vector if t.base == "positive_ordered" \
                else pconstraints.ordered_vector

    def check_declared_bounds(self, v: Var, t: A.TypeSpec, spec: DistSpec):
        lo, hi = self.k.try_const(t.lower), self.k.try_const(t.upper)
        if lo is None and hi is None:
            if t.base == "simplex" and v.support is not constraints.simplex:
                self.error(t.span, f"'{v.name}' is declared simplex but {spec.name} does "
                           "not give values on the simplex")
            if t.base == "cholesky_factor_corr" and v.support is not constraints.corr_cholesky:
                self.error(t.span, f"'{v.name}' is declared cholesky_factor_corr but "
                           f"{spec.name} does not give Cholesky factors of correlation "
                           "matrices; use LKJCholesky(K, eta)")
            return
        s_lo, s_hi = supports.value_range(v.support)
        if (lo is not None and s_lo < lo) or (hi is not None and s_hi > hi):
            declared = ", ".join(f"{k}={b}" for k, b in (("lower", lo), ("upper", hi))
                                 if b is not None)
            self.error(t.span, f"'{v.name}' is declared with bounds <{declared}> but "
                       f"{spec.name} has support {supports.bracket(v.support)}; the bounds "
                       "contradict the distribution (use truncation, e.g. T[0, ], to "
                       "restrict it)")

    # ------------------------------------------------------------------ deterministic
    def assign(self, s: A.Assign):
        if s.observed:
            self.expr(s.value)
            self.error(s.span, "observe needs a random variable: write 'observe name ~ "
                       "Distribution(...)'; a deterministic expression cannot be observed")
            return
        self.scope.current_target = A.target_name(s.target)
        t = self.expr(s.value)
        self.scope.current_target = None
        reads = self.scope.reads(s.value)
        v = self.defs.define(s, "deterministic", s.type, s.target, t, None, reads)
        if v is None:
            return
        self.defs.check_recursion(v, s)
        if v.type.base in ("int", "bool") and not v.family_dims:
            v.bounds = self.k.interval(s.value) if v.stmts[0] is s else None
        v.discrete = v.type.base != "real"

    # ------------------------------------------------------------------ control flow
    def for_loop(self, s: A.For):
        scope = self.scope
        if not scope.check_name(s.var, s.var_span):
            return
        if s.var in scope.vars or scope.loop_var(s.var) is not None:
            self.error(s.var_span, f"the loop variable '{s.var}' shadows a variable "
                       "already defined; choose another name")
            return
        start = s.start if s.start is not None else A.Num(s.stop.span, 0.0, True)
        ok = True
        for e in (start, s.stop):
            t = self.expr(e)
            if t is None:
                ok = False
            elif t.base == "real" or t.shape:
                self.error(e.span, f"a range bound must be an integer scalar, got {t}")
                ok = False
        if not ok:
            return
        a, b = self.k.try_const(start), self.k.try_const(s.stop)
        if a is not None and b is not None:
            if int(b) <= int(a):
                self.error(s.stop.span, f"this loop never runs: range({int(a)}, {int(b)}) has "
                           "no iterations (a loop must run at least once; remove it, or "
                           "check the args that set its bounds)")
                return
            if int(a) < 0:
                self.error(start.span, f"a loop may not start below 0, got {int(a)}")
                return
            loop = Loop(s.var, s.var_span, start, s.stop, int(b) - int(a), True, int(a), s)
        else:
            ra, rb = self.k.interval(start), self.k.interval(s.stop)
            if ra is None or rb is None:
                bad = self.k.unbounded_latents(start) + self.k.unbounded_latents(s.stop)
                who = f" on '{bad[0]}'" if bad else ""
                self.error(s.stop.span, f"the trip count of this loop depends{who}, whose "
                           "support is not statically bounded; bound it (e.g. with a "
                           "Categorical or Binomial, or min(n, N_MAX))")
                return
            loop = Loop(s.var, s.var_span, start, s.stop, max(0, int(rb[1]) - int(ra[0])),
                        False, int(ra[0]), s)
        scope.loops[s] = loop
        scope.loop_stack.append(loop)
        scope.max_depth = max(scope.max_depth, len(scope.loop_stack))
        self.block(s.body)
        scope.loop_stack.pop()

    def if_stmt(self, s: A.If):
        scope = self.scope
        prior_conds = set()
        for k, (cond, body) in enumerate(s.branches):
            t = self.expr(cond)
            if t is not None and t.shape:
                self.error(cond.span, f"an if condition must be a scalar, got {t}")
            prior_conds |= scope.reads(cond)
            self.branch(s, k, prior_conds, body)
        if s.orelse is not None:
            self.branch(s, len(s.branches), prior_conds, s.orelse)
            self.defs.complete_cover(s)

    def branch(self, s, k, conds, body):
        scope = self.scope
        scope.cond_stack.append(set(conds))
        scope.branch_path.append((s, k))
        self.block(body)
        scope.branch_path.pop()
        scope.cond_stack.pop()


def check(program: A.Program, overrides: Optional[dict] = None) -> Checked:
    return Checker(program, overrides).run()


def _infer_sizes(program: A.Program, given: dict) -> dict:
    """Int size args that are not given and have no default (``arg int N;``), read off
    the shape of an array arg that is given (``arg real[N] x;``): the first array
    that sets each one wins, and any other that disagrees is then reported against it."""
    import numpy as np
    decls = {s.name: s for s in program.body if isinstance(s, A.ArgDecl)}
    out = {}
    for s in decls.values():
        if s.name not in given:
            continue
        try:
            shape = tuple(given[s.name].shape) if hasattr(given[s.name], "shape") \
                else np.shape(given[s.name])
        except Exception:   # ragged: convert_arg reports it
            continue
        for k, d in enumerate(s.type.dims):
            if isinstance(d, A.Name) and d.id in decls and d.id not in given \
                    and d.id not in out and decls[d.id].default is None \
                    and decls[d.id].type.base == "int" and not decls[d.id].type.dims \
                    and k < len(shape):
                out[d.id] = int(shape[k])
    return out
