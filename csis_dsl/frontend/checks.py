"""Semantic checks: names, arity, types and shapes, definitions, loops, supports.

``check(program, overrides)`` returns a :class:`Checked` program (the "middle IR": the
AST plus a variable table, static types on every expression, resolved arg values and the
loop facts the backend needs) or raises one :class:`CompileError` listing every
diagnostic found. The checker keeps going after an error wherever it can.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch
from torch.distributions import constraints

from ..distributions import DISTRIBUTIONS, VECTOR_PARAM_KINDS, DistSpec
from ..errors import CompileError, Diagnostic, ObservationError, Span
from ..functions import FUNCTIONS, FunctionTypeError
from . import ast as A
from .types import BOOL, INT, REAL, Type, broadcast, join_base

KEYWORDS = {"model", "arg", "observe", "for", "in", "range", "if", "else", "true",
            "false", "and", "or", "not", "real", "int", "bool", "simplex", "T"}


@dataclass
class Loop:
    var: str
    span: Span
    start: A.Expr
    stop: A.Expr
    size: int                 # the most iterations any trace runs
    static: bool              # trip count fixed when compiling
    lo: int                   # the smallest first index
    stmt: A.For = None
    sequential: bool = False  # some statement reads a family it defines at another index


@dataclass
class Var:
    name: str
    kind: str                         # arg | latent | observed | deterministic
    type: Type                        # the whole value: family dims + element shape
    span: Span
    stmts: List[A.Stmt] = field(default_factory=list)
    loops: List[Loop] = field(default_factory=list)
    family_dims: Tuple[int, ...] = ()
    dist: Optional[str] = None
    support: object = None
    discrete: bool = False
    conditional: bool = False
    reads: Set[str] = field(default_factory=set)       # data dependence
    control: Set[str] = field(default_factory=set)     # control dependence
    value: Optional[torch.Tensor] = None               # args only
    bounds: Optional[Tuple[float, float]] = None       # static value range (ints)
    recursive: bool = False                            # reads itself at other indices
    pieces: int = 0

    @property
    def elem_shape(self) -> Tuple[int, ...]:
        return self.type.shape[len(self.family_dims):]


@dataclass
class Checked:
    program: A.Program
    vars: Dict[str, Var]
    args: Dict[str, torch.Tensor]
    order: List[str]                  # variables in definition order
    loops: Dict[int, Loop]            # id(For) -> Loop
    types: Dict[int, Type]            # id(expr) -> Type
    max_depth: int = 0


class _NotConst(Exception):
    pass


def _close(name: str, candidates) -> str:
    m = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{m[0]}'?" if m else ""


def _to_python(v: torch.Tensor):
    return v.item() if v.dim() == 0 else v.tolist()


class Checker:
    def __init__(self, program: A.Program, overrides: Optional[dict]):
        self.p = program
        self.overrides = dict(overrides or {})
        self.diags: List[Diagnostic] = []
        self.vars: Dict[str, Var] = {}
        self.order: List[str] = []
        self.loops: Dict[int, Loop] = {}
        self.types: Dict[int, Type] = {}
        self.loop_stack: List[Loop] = []
        self.cond_stack: List[Set[str]] = []   # names read by enclosing if conditions
        self.branch_path: List[Tuple[int, int]] = []   # (id(If), branch index)
        self.def_branch: Dict[str, List[Tuple[Tuple, A.Stmt]]] = {}
        self.max_depth = 0

    # ------------------------------------------------------------------ helpers
    def error(self, span, msg, notes=()):
        self.diags.append(Diagnostic(span, msg, notes=list(notes)))

    def lookup(self, name: str, span: Span) -> Optional[Var]:
        for loop in reversed(self.loop_stack):
            if loop.var == name:
                return Var(name, "loopvar", INT, loop.span, bounds=(loop.lo, loop.lo + loop.size - 1))
        v = self.vars.get(name)
        if v is None and name == getattr(self, "current_target", None):
            self.error(span, f"'{name}' depends on itself (a cycle): a variable cannot be "
                       "read in its own definition")
            return None
        if v is None:
            later = [s for s in A.walk_stmts(self.p.body)
                     if A.target_name(getattr(s, "target", None) or A.Name(s.span, "")) == name]
            if later:
                self.error(span, f"'{name}' is used before it is defined",
                           [(later[0].span, f"'{name}' is defined here")])
            else:
                cands = list(self.vars) + [l.var for l in self.loop_stack]
                hint = _close(name, cands)
                if not hint:
                    hint = _close(name, list(FUNCTIONS) + list(DISTRIBUTIONS))
                self.error(span, f"unknown name '{name}'{hint}")
        return v

    # ------------------------------------------------------------------ constants
    def const(self, e: A.Expr):
        """Evaluate ``e`` when compiling (literals, args, arithmetic); else _NotConst."""
        if isinstance(e, A.Num):
            return int(e.value) if e.is_int else e.value
        if isinstance(e, A.Bool):
            return e.value
        if isinstance(e, A.Name):
            v = self.vars.get(e.id)
            if v is not None and v.kind == "arg" and v.value is not None and v.value.dim() == 0:
                x = v.value.item()
                return int(x) if v.type.base == "int" else x
            raise _NotConst
        if isinstance(e, A.Unary) and e.op == "-":
            return -self.const(e.operand)
        if isinstance(e, A.Binary) and e.op in "+-*/":
            a, b = self.const(e.left), self.const(e.right)
            if e.op == "/":
                return a / b if b != 0 else float("nan")
            return {"+": a + b, "-": a - b, "*": a * b}[e.op]
        raise _NotConst

    def try_const(self, e):
        try:
            return self.const(e)
        except _NotConst:
            return None

    def interval(self, e: A.Expr) -> Optional[Tuple[float, float]]:
        """A static range of an integer expression, or None when unbounded."""
        c = self.try_const(e)
        if c is not None:
            return (c, c)
        if isinstance(e, A.Name):
            for loop in reversed(self.loop_stack):
                if loop.var == e.id:
                    return (loop.lo, loop.lo + loop.size - 1)
            v = self.vars.get(e.id)
            return v.bounds if v else None
        if isinstance(e, A.Index) and isinstance(e.base, A.Name):
            v = self.vars.get(e.base.id)
            return v.bounds if v else None
        if isinstance(e, A.Binary) and e.op in "+-*":
            a, b = self.interval(e.left), self.interval(e.right)
            if a is None or b is None:
                return None
            if e.op == "+":
                return (a[0] + b[0], a[1] + b[1])
            if e.op == "-":
                return (a[0] - b[1], a[1] - b[0])
            prods = [x * y for x in a for y in b]
            return (min(prods), max(prods))
        if isinstance(e, A.Call) and e.func in ("min", "max") and len(e.args) == 2:
            a, b = self.interval(e.args[0]), self.interval(e.args[1])
            if a is None or b is None:
                return None
            f = min if e.func == "min" else max
            return (f(a[0], b[0]), f(a[1], b[1]))
        return None

    def unbounded_latents(self, e: A.Expr) -> List[str]:
        out = []
        for sub in A.walk_expr(e):
            if isinstance(sub, A.Name):
                v = self.vars.get(sub.id)
                if v is not None and v.kind in ("latent", "deterministic") and v.bounds is None:
                    out.append(sub.id)
        return out

    # ------------------------------------------------------------------ expressions
    def expr(self, e: A.Expr) -> Optional[Type]:
        t = self._expr(e)
        if t is not None:
            self.types[id(e)] = t
        return t

    def _expr(self, e: A.Expr) -> Optional[Type]:
        if isinstance(e, A.Num):
            return INT if e.is_int else REAL
        if isinstance(e, A.Bool):
            return BOOL
        if isinstance(e, A.Name):
            v = self.lookup(e.id, e.span)
            return v.type if v else None
        if isinstance(e, A.Unary):
            t = self.expr(e.operand)
            if t is None:
                return None
            if e.op == "not":
                return BOOL.with_shape(t.shape)
            return Type(t.base if t.base != "bool" else "int", t.shape)
        if isinstance(e, A.Binary):
            a, b = self.expr(e.left), self.expr(e.right)
            if a is None or b is None:
                return None
            shape = broadcast(a.shape, b.shape)
            if shape is None:
                self.error(e.span, f"shape mismatch: '{e.op}' between {a} and {b}")
                return None
            if e.op in ("and", "or", "==", "!=", "<", "<=", ">", ">="):
                return BOOL.with_shape(shape)
            if e.op in ("/", "^"):
                return REAL.with_shape(shape)
            return Type(join_base(a.base, b.base), shape)
        if isinstance(e, A.Cond):
            c, a, b = self.expr(e.test), self.expr(e.then), self.expr(e.orelse)
            if None in (c, a, b):
                return None
            shape = broadcast(broadcast(a.shape, b.shape) or (), c.shape)
            if shape is None or broadcast(a.shape, b.shape) is None:
                self.error(e.span, f"shape mismatch: the branches of '?' are {a} and {b}")
                return None
            return Type(join_base(a.base, b.base) if a.base != b.base else a.base, shape)
        if isinstance(e, A.Vector):
            ts = [self.expr(i) for i in e.items]
            if not ts:
                self.error(e.span, "an empty vector literal has no type; use zeros(0)")
                return None
            if None in ts:
                return None
            if any(t.shape != ts[0].shape for t in ts):
                self.error(e.span, "the items of a vector literal must all have the same "
                           f"shape; got {', '.join(str(t) for t in ts)}")
                return None
            base = "real" if any(t.base == "real" for t in ts) else ts[0].base
            return Type(base, (len(ts),) + ts[0].shape)
        if isinstance(e, A.Index):
            base = self.expr(e.base)
            idx = [self.expr(i) for i in e.indices]
            if base is None or None in idx:
                return None
            for i, t in zip(e.indices, idx):
                if t.base == "real":
                    self.error(i.span, f"an index must be an integer, got {t}")
                    return None
                if t.shape:
                    self.error(i.span, f"an index must be a scalar, got {t}")
                    return None
            if len(idx) > len(base.shape):
                what = "a scalar" if not base.shape else f"{base} (has {len(base.shape)} dimension{'s' if len(base.shape) > 1 else ''})"
                self.error(e.span, f"cannot index {what} with {len(idx)} "
                           f"ind{'ices' if len(idx) > 1 else 'ex'}")
                return None
            for k, i in enumerate(e.indices):
                r = self.interval(i)
                if r is not None and (r[0] >= base.shape[k] or r[1] < 0) and r[0] == r[1]:
                    self.error(i.span, f"index {int(r[0])} is out of range for a dimension "
                               f"of size {base.shape[k]}")
            return Type(base.base, base.shape[len(idx):])
        if isinstance(e, A.Call):
            return self.call(e)
        return None  # pragma: no cover

    def call(self, e: A.Call) -> Optional[Type]:
        if e.func in DISTRIBUTIONS:
            self.error(e.func_span, f"'{e.func}' is a distribution; it can only appear "
                       "on the right of '~'")
            return None
        f = FUNCTIONS.get(e.func)
        if f is None:
            self.error(e.func_span, f"unknown function '{e.func}'{_close(e.func, FUNCTIONS)}")
            for a in e.args:
                self.expr(a)
            return None
        ts = [self.expr(a) for a in e.args]
        if not f.min_args <= len(e.args) <= f.max_args:
            want = (f"{f.min_args}" if f.min_args == f.max_args
                    else f"{f.min_args} or {f.max_args}")
            self.error(e.span, f"{e.func} takes {want} argument{'s' if f.max_args > 1 else ''}"
                       f", got {len(e.args)}")
            return None
        if None in ts:
            return None
        consts = [self.try_const(a) for a in e.args]
        try:
            return f.typing(ts, consts)
        except FunctionTypeError as err:
            bad = e.args[f.needs_const[0]] if f.needs_const and len(e.args) > f.needs_const[0] \
                and consts[f.needs_const[0]] is None else e
            self.error(bad.span if bad is not e else e.span, str(err))
            return None

    # ------------------------------------------------------------------ types
    def type_spec(self, t: A.TypeSpec) -> Optional[Type]:
        dims = []
        for d in t.dims:
            self.expr(d)
            c = self.try_const(d)
            if c is None or float(c) != int(c) or int(c) < 0:
                self.error(d.span, "a size must be a non-negative integer known when "
                           "compiling (a literal or an arg)")
                return None
            dims.append(int(c))
        for b in (t.lower, t.upper):
            if b is not None:
                self.expr(b)
                if self.try_const(b) is None:
                    self.error(b.span, "a bound must be a number known when compiling")
        if t.base == "simplex":
            if len(dims) != 1:
                self.error(t.span, "simplex needs one size, as in simplex[K]")
                return None
            return Type("real", tuple(dims))
        return Type(t.base, tuple(dims))

    # ------------------------------------------------------------------ statements
    def run(self) -> Checked:
        self.block(self.p.body)
        if self.overrides:
            for name in self.overrides:
                self.error(None, f"there is no arg '{name}' to override"
                           f"{_close(name, [n for n, v in self.vars.items() if v.kind == 'arg'])}")
        if self.diags:
            raise CompileError(self.diags, self.p.source)
        args = {n: v.value for n, v in self.vars.items() if v.kind == "arg"}
        return Checked(self.p, self.vars, args, self.order, self.loops, self.types,
                       self.max_depth)

    def block(self, stmts):
        for s in stmts:
            try:
                self.stmt(s)
            except _NotConst:  # pragma: no cover - defensive
                pass

    def stmt(self, s: A.Stmt):
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

    def reads(self, *exprs) -> Set[str]:
        out = set()
        local = {l.var for l in self.loop_stack}
        for e in exprs:
            for sub in A.walk_expr(e):
                if isinstance(sub, A.Name) and sub.id in self.vars and sub.id not in local:
                    out.add(sub.id)
        return out

    def control_reads(self) -> Set[str]:
        out = set()
        for c in self.cond_stack:
            out |= c
        for loop in self.loop_stack:
            out |= self.reads(loop.start, loop.stop) if loop.start is not None \
                else self.reads(loop.stop)
        return out

    def check_name(self, name: str, span: Span) -> bool:
        if name.startswith("__"):
            self.error(span, f"names may not begin with '__' ('{name}')")
            return False
        if name in FUNCTIONS or name in DISTRIBUTIONS:
            self.error(span, f"'{name}' is a built-in {'function' if name in FUNCTIONS else 'distribution'}"
                       "; choose another name")
            return False
        return True

    def arg_decl(self, s: A.ArgDecl):
        if self.loop_stack or self.cond_stack:
            self.error(s.span, "an arg must be declared at the top level of the model")
        if not self.check_name(s.name, s.name_span):
            return
        if s.name in self.vars:
            self.redefined(s.name, s.name_span)
            return
        t = self.type_spec(s.type)
        if t is None:
            return
        if s.name in self.overrides:
            raw = self.overrides.pop(s.name)
            value = self.convert_arg(s.name, t, raw, s.name_span)
        elif s.default is None:
            self.error(s.name_span, f"arg '{s.name}' has no default; give one with "
                       f"'= value' or pass args={{'{s.name}': ...}} when compiling")
            return
        else:
            et = self.expr(s.default)
            if et is None:
                return
            if self.reads(s.default) - {n for n, v in self.vars.items() if v.kind == "arg"}:
                self.error(s.default.span, "an arg's default may only use literals and other args")
                return
            if et.shape != t.shape or (t.base in ("int", "bool") and et.base != t.base):
                self.error(s.default.span, f"arg '{s.name}' is declared {t} but its default "
                           f"is {et}")
                return
            from ..backend.evaluate import eval_static
            try:
                value = eval_static(s.default, self.args_dict(), t)
            except Exception as err:  # a spec must never crash the compiler
                self.error(s.default.span, f"cannot evaluate the default of '{s.name}': {err}")
                return
        if value is None:
            return
        v = Var(s.name, "arg", t, s.name_span, [s], value=value,
                reads=self.reads(*([s.default] if s.default is not None else []), *s.type.dims))
        if t.base in ("int", "bool") and not t.shape:
            v.bounds = (value.item(), value.item())
        self.check_bounds_value(s, t, value)
        self.define(v)

    def args_dict(self):
        return {n: v.value for n, v in self.vars.items() if v.kind == "arg"}

    def convert_arg(self, name, t: Type, raw, span) -> Optional[torch.Tensor]:
        try:
            if isinstance(raw, torch.Tensor):
                value = raw.detach().clone()
            else:
                value = torch.as_tensor(raw)
        except Exception:
            raise ObservationError(f"arg '{name}': expected {t}, got {raw!r}") from None
        if tuple(value.shape) != t.shape:
            raise ObservationError(f"arg '{name}': expected {t} (shape {list(t.shape)}), "
                                   f"got a value of shape {list(value.shape)}")
        if t.base == "int":
            if value.dtype == torch.bool or (value.is_floating_point() and
                                             not torch.all(value == value.round())):
                raise ObservationError(f"arg '{name}': expected {t}, got {_to_python(value)!r}")
            return value.long()
        if t.base == "bool":
            if value.dtype != torch.bool:
                raise ObservationError(f"arg '{name}': expected bool, got {_to_python(value)!r}")
            return value
        if value.dtype == torch.bool:
            raise ObservationError(f"arg '{name}': expected {t}, got a bool")
        return value.to(torch.get_default_dtype())

    def check_bounds_value(self, s, t, value):
        lo = self.try_const(s.type.lower) if s.type.lower is not None else None
        hi = self.try_const(s.type.upper) if s.type.upper is not None else None
        if (lo is not None and bool((value < lo).any())) or \
                (hi is not None and bool((value > hi).any())):
            self.error(s.name_span, f"arg '{s.name}' = {_to_python(value)} is outside its "
                       f"declared bounds")

    def redefined(self, name, span):
        first = self.vars[name]
        self.error(span, f"'{name}' is defined twice",
                   [(first.span, f"'{name}' is first defined here")])

    def define(self, v: Var):
        self.vars[v.name] = v
        self.order.append(v.name)

    def target(self, s, target) -> Tuple[Optional[str], List[A.Expr]]:
        if isinstance(target, A.Name):
            return target.id, []
        if isinstance(target, A.Index) and isinstance(target.base, A.Name):
            return target.base.id, target.indices
        op = "~" if isinstance(s, A.Sample) else "="
        self.error(target.span, f"'{op}' needs a variable on its left (a name or an "
                   f"indexed name such as y[i]), not an expression")
        return None, []

    def family_dims(self, name, indices, span) -> Optional[Tuple[Tuple[int, ...], bool]]:
        """Sizes of an indexed definition ``name[i, ...]``, from the loops it sits in.
        Returns (dims, elementwise_loops)."""
        dims = []
        loops = {l.var: l for l in self.loop_stack}
        plain = True
        for k, idx in enumerate(indices):
            if isinstance(idx, A.Name) and idx.id in loops:
                loop = loops[idx.id]
                dims.append(loop.lo + loop.size)
                if loop is not self.loop_stack[len(self.loop_stack) - len(indices) + k] \
                        or loop.lo != 0:
                    plain = False
            else:
                c = self.try_const(idx)
                if c is None or float(c) != int(c) or c < 0:
                    self.error(idx.span, f"an index on the left of a definition must be a "
                               f"loop variable or a non-negative integer constant")
                    return None
                dims.append(int(c) + 1)
                plain = False
        if len(indices) != len(self.loop_stack):
            plain = False
        return tuple(dims), plain

    def definition(self, s, kind, type_spec, target, value_type: Optional[Type],
                   dist: Optional[DistSpec], reads: Set[str]):
        name, indices = self.target(s, target)
        if name is None:
            return None
        if not self.check_name(name, target.span):
            return None
        for i in indices:
            self.expr(i)
        declared = self.type_spec(type_spec) if type_spec is not None else None
        if type_spec is not None and declared is None:
            return None
        elem = value_type
        if declared is not None and elem is not None:
            if declared.base == "int" and elem.base == "real" and kind != "deterministic":
                self.error(type_spec.span, f"'{name}' is declared int but {dist.name} "
                           "gives real values")
                return None
            if declared.shape and broadcast(declared.shape, elem.shape) != declared.shape:
                self.error(type_spec.span, f"'{name}' is declared {declared} but its "
                           f"definition has shape {list(elem.shape)}")
                return None
            elem = Type(declared.base if kind == "deterministic" or declared.base != "real"
                        else elem.base, declared.shape) if declared.shape else \
                Type(elem.base if kind != "deterministic" else declared.base, elem.shape)
        if elem is None:
            return None
        fam = self.family_dims(name, indices, target.span) if indices else ((), True)
        if fam is None:
            return None
        dims, plain = fam
        full = Type(elem.base, dims + elem.shape)
        path = tuple(self.branch_path)
        control = self.control_reads()
        existing = self.vars.get(name)
        if existing is not None and existing.kind != "arg":
            prev = self.def_branch.get(name, [])
            exclusive = all(self._exclusive(path, p) for p, _ in prev)
            same_family = existing.kind == kind
            if indices and existing.family_dims and existing.kind == kind and \
                    existing.elem_shape == elem.shape:
                # another piece of an indexed family (h[0] ~ ...; h[t] ~ ... for t >= 1)
                existing.type = Type(existing.type.base,
                                     tuple(max(a, b) for a, b in
                                           zip(existing.family_dims, dims)) + elem.shape)
                existing.family_dims = existing.type.shape[:len(dims)]
                existing.stmts.append(s)
                existing.reads |= reads - {name}
                existing.control |= control
                existing.pieces += 1
                if not path or not exclusive:
                    self.def_branch.setdefault(name, []).append((path, s))
                return existing
            if exclusive and prev and same_family and existing.type == full:
                existing.stmts.append(s)
                existing.reads |= reads
                existing.control |= control
                self.def_branch[name].append((path, s))
                return existing
            self.redefined(name, target.span)
            return None
        if existing is not None:
            self.redefined(name, target.span)
            return None
        v = Var(name, kind, full, target.span, [s], list(self.loop_stack), dims,
                dist=dist.name if dist else None, reads=reads - {name}, control=control,
                pieces=1)
        v.conditional = bool(self.cond_stack) or any(not l.static for l in self.loop_stack)
        v.plain = plain
        self.def_branch[name] = [(path, s)]
        self.define(v)
        return v

    def _exclusive(self, p1, p2) -> bool:
        for (a, i), (b, j) in zip(p1, p2):
            if a != b:
                return False
            if i != j:
                return True
        return False

    def sample(self, s: A.Sample):
        call = s.dist.call
        spec = DISTRIBUTIONS.get(call.func)
        self.current_target = A.target_name(s.target)
        for a in call.args:
            self.expr(a)
        self.current_target = None
        if spec is None:
            hint = _close(call.func, DISTRIBUTIONS)
            if call.func in FUNCTIONS:
                hint = f"; '{call.func}' is a function: use '=' for a deterministic value"
            self.error(call.func_span, f"unknown distribution '{call.func}'{hint}")
            self.target(s, s.target)
            return
        if len(call.args) != spec.arity:
            names = ", ".join(n for n, _ in spec.params)
            self.error(call.span, f"{spec.name} takes {spec.arity} argument"
                       f"{'s' if spec.arity > 1 else ''} ({names}), got {len(call.args)}")
            return
        ts = [self.types.get(id(a)) for a in call.args]
        if None in ts:
            self.target(s, s.target)
            return
        value_type = self.dist_value_type(spec, call, ts)
        if value_type is None:
            return
        trunc_reads = set()
        if s.dist.trunc is not None:
            if not spec.truncatable:
                ok = [n for n, d in DISTRIBUTIONS.items() if d.truncatable]
                self.error(s.dist.span, f"{spec.name} cannot be truncated; truncation "
                           f"works for {', '.join(ok)}")
                return
            for b in s.dist.trunc:
                if b is not None:
                    bt = self.expr(b)
                    if bt is not None and bt.shape:
                        self.error(b.span, "a truncation bound must be a scalar")
            trunc_reads = self.reads(*[b for b in s.dist.trunc if b is not None])
        reads = self.reads(*call.args) | trunc_reads
        kind = "observed" if s.observed else "latent"
        v = self.definition(s, kind, s.type, s.target, value_type, spec, reads)
        if v is None:
            return
        self.check_recursion(v, s)
        if v.stmts[0] is s:
            v.discrete = spec.discrete
            v.support = self.static_support(spec, call, s.dist.trunc)
            v.bounds = self.support_bounds(spec, call)
            if s.type is not None:
                self.check_declared_bounds(v, s.type, spec)
        elif v.dist != spec.name and (v.discrete != spec.discrete or
                                       str(v.support) != str(self.static_support(spec, call, s.dist.trunc))):
            self.error(call.func_span, f"'{v.name}' has a different support here "
                       f"({spec.name}) than where it is first defined ({v.dist}); every "
                       "definition of a variable must have the same support",
                       [(v.span, "first defined here")])

    def dist_value_type(self, spec: DistSpec, call: A.Call, ts: List[Type]) -> Optional[Type]:
        batch = ()
        event = ()
        for (pname, kind), a, t in zip(spec.params, call.args, ts):
            nvec = VECTOR_PARAM_KINDS.get(kind, 0)
            if t.base == "bool":
                self.error(a.span, f"the {pname} of {spec.name} must be a number, got {t}")
                return None
            if len(t.shape) < nvec:
                self.error(a.span, f"the {pname} of {spec.name} must be a "
                           f"{'vector' if nvec == 1 else 'matrix'}, got {t}")
                return None
            pshape = t.shape[:len(t.shape) - nvec] if nvec else t.shape
            if nvec and kind != "covariance":
                ev = t.shape[-1:]
                if event and ev != event:
                    self.error(a.span, f"size mismatch in {spec.name}: {pname} has size "
                               f"{ev[0]}, expected {event[0]}")
                    return None
                if spec.event_param is not None:
                    event = ev
            if kind == "covariance":
                if t.shape[-1] != t.shape[-2] or (event and t.shape[-1:] != event):
                    self.error(a.span, f"the covariance of MultivariateNormal must be "
                               f"{event[0] if event else 'D'} x {event[0] if event else 'D'}, "
                               f"got {list(t.shape)}")
                    return None
            c = self.try_const(a)
            if c is not None and not isinstance(c, bool):
                if kind == "positive" and c <= 0:
                    self.error(a.span, f"the {pname} of {spec.name} must be positive, got {c}")
                elif kind == "probability" and not 0 <= c <= 1:
                    self.error(a.span, f"the {pname} of {spec.name} must be in [0, 1], got {c}")
            nb = broadcast(batch, pshape)
            if nb is None:
                self.error(call.span, f"shape mismatch between the parameters of "
                           f"{spec.name}: {list(batch)} and {list(pshape)}")
                return None
            batch = nb
        return Type(spec.value_type if spec.value_type != "bool" else "bool", batch + event)

    def static_support(self, spec: DistSpec, call: A.Call, trunc):
        consts = [self.try_const(a) for a in call.args]
        n = spec.name
        if trunc is not None:
            lo = self.try_const(trunc[0]) if trunc[0] is not None else None
            hi = self.try_const(trunc[1]) if trunc[1] is not None else None
            if lo is not None and hi is not None:
                return constraints.interval(lo, hi)
            if lo is not None:
                return constraints.greater_than(lo)
            if hi is not None:
                return constraints.less_than(hi)
        if n in ("HalfNormal", "HalfCauchy", "Gamma", "InverseGamma", "Exponential",
                 "Chi2", "Weibull", "LogNormal"):
            return constraints.positive
        if n == "Beta":
            return constraints.unit_interval
        if n == "Uniform":
            if consts[0] is not None and consts[1] is not None:
                return constraints.interval(consts[0], consts[1])
            return constraints.real
        if n == "Bernoulli":
            return constraints.boolean
        if n == "Categorical":
            k = self.types[id(call.args[0])].shape[-1]
            return constraints.integer_interval(0, k - 1)
        if n == "Binomial":
            r = self.interval(call.args[0])
            return constraints.integer_interval(0, int(r[1])) if r else \
                constraints.nonnegative_integer
        if n in ("Poisson", "Geometric", "NegativeBinomial"):
            return constraints.nonnegative_integer
        if n == "Dirichlet":
            return constraints.simplex
        if n == "MultivariateNormal":
            return constraints.real_vector
        return constraints.real

    def support_bounds(self, spec, call):
        if spec.name == "Bernoulli":
            return (0, 1)
        if spec.name == "Categorical":
            return (0, self.types[id(call.args[0])].shape[-1] - 1)
        if spec.name == "Binomial":
            r = self.interval(call.args[0])
            return (0, r[1]) if r else None
        return None

    def check_declared_bounds(self, v: Var, t: A.TypeSpec, spec: DistSpec):
        lo = self.try_const(t.lower) if t.lower is not None else None
        hi = self.try_const(t.upper) if t.upper is not None else None
        if lo is None and hi is None:
            if t.base == "simplex" and spec.name != "Dirichlet":
                self.error(t.span, f"'{v.name}' is declared simplex but {spec.name} does "
                           "not give values on the simplex")
            return
        sup = v.support
        s_lo, s_hi = -float("inf"), float("inf")
        if sup is constraints.positive or isinstance(sup, constraints.greater_than):
            s_lo = getattr(sup, "lower_bound", 0.0)
        if isinstance(sup, (constraints.interval, constraints.integer_interval)):
            s_lo, s_hi = sup.lower_bound, sup.upper_bound
        if isinstance(sup, constraints.less_than):
            s_hi = sup.upper_bound
        if sup is constraints.unit_interval:
            s_lo, s_hi = 0.0, 1.0
        if sup in (constraints.nonnegative_integer, constraints.boolean):
            s_lo = 0
        if (lo is not None and s_lo < lo) or (hi is not None and s_hi > hi):
            rng = f"[{s_lo}, {s_hi}]".replace("inf", "∞")
            self.error(t.span, f"'{v.name}' is declared with bounds "
                       f"<{'lower=' + str(lo) if lo is not None else ''}"
                       f"{', ' if lo is not None and hi is not None else ''}"
                       f"{'upper=' + str(hi) if hi is not None else ''}> but {spec.name} "
                       f"has support {rng}; the bounds contradict the distribution "
                       "(use truncation, e.g. T[0, ], to restrict it)")

    def check_recursion(self, v: Var, s):
        """A statement that reads its own family: allowed at an earlier index (h[t - 1])
        of its innermost loop; a same-index read is a cycle."""
        for sub in A.walk_expr(s.dist.call) if isinstance(s, A.Sample) else A.walk_expr(s.value):
            if isinstance(sub, A.Name) and sub.id == v.name:
                parent = self._parent_index(s, sub)
                if parent is None or not self.loop_stack:
                    self.error(sub.span, f"'{v.name}' depends on itself (a cycle): a "
                               "variable cannot be read in its own definition")
                    return
                inner = self.loop_stack[-1]
                lag_ok = len(parent.indices) == len(v.family_dims)
                for k, idx in enumerate(parent.indices):
                    last = k == len(parent.indices) - 1
                    if last:
                        lag = self._lag(idx, inner.var)
                        if lag is None or lag < 1:
                            lag_ok = False
                    else:
                        if not (isinstance(idx, A.Name) and any(l.var == idx.id for l in self.loop_stack[:-1])):
                            lag_ok = False
                if not lag_ok:
                    self.error(sub.span, f"'{v.name}' depends on itself (a cycle): a "
                               f"recursive definition may only read earlier elements of "
                               f"its innermost loop, as in {v.name}[{inner.var} - 1]")
                    return
                v.recursive = True
                inner.sequential = True

    def _parent_index(self, s, name_node):
        root = s.dist.call if isinstance(s, A.Sample) else s.value
        for sub in A.walk_expr(root):
            if isinstance(sub, A.Index) and sub.base is name_node:
                return sub
        return None

    def _lag(self, idx, var) -> Optional[int]:
        if isinstance(idx, A.Binary) and idx.op == "-" and isinstance(idx.left, A.Name) \
                and idx.left.id == var:
            c = self.try_const(idx.right)
            return int(c) if c is not None and float(c) == int(c) else None
        return None

    def assign(self, s: A.Assign):
        if s.observed:
            self.expr(s.value)
            self.error(s.span, "observe needs a random variable: write 'observe name ~ "
                       "Distribution(...)'; a deterministic expression cannot be observed")
            return
        self.current_target = A.target_name(s.target)
        t = self.expr(s.value)
        self.current_target = None
        if t is None:
            self.target(s, s.target)
            return
        reads = self.reads(s.value)
        v = self.definition(s, "deterministic", s.type, s.target, t, None, reads)
        if v is None:
            return
        self.check_recursion(v, s)
        if v.type.base in ("int", "bool") and not v.family_dims:
            v.bounds = self.interval(s.value) if v.stmts[0] is s else None
        v.discrete = v.type.base != "real"

    def for_loop(self, s: A.For):
        if not self.check_name(s.var, s.var_span):
            return
        if s.var in self.vars or any(l.var == s.var for l in self.loop_stack):
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
        a, b = self.try_const(start), self.try_const(s.stop)
        if a is not None and b is not None:
            loop = Loop(s.var, s.var_span, start, s.stop, max(0, int(b) - int(a)), True,
                        int(a), s)
        else:
            ra, rb = self.interval(start), self.interval(s.stop)
            if ra is None or rb is None:
                bad = self.unbounded_latents(start) + self.unbounded_latents(s.stop)
                who = f" on '{bad[0]}'" if bad else ""
                self.error(s.stop.span, f"the trip count of this loop depends{who}, whose "
                           "support is not statically bounded; bound it (e.g. with a "
                           "Categorical or Binomial, or min(n, N_MAX))")
                return
            loop = Loop(s.var, s.var_span, start, s.stop, max(0, int(rb[1]) - int(ra[0])),
                        False, int(ra[0]), s)
        self.loops[id(s)] = loop
        self.loop_stack.append(loop)
        self.max_depth = max(self.max_depth, len(self.loop_stack))
        self.block(s.body)
        self.loop_stack.pop()

    def if_stmt(self, s: A.If):
        prior_conds = set()
        for k, (cond, body) in enumerate(s.branches):
            t = self.expr(cond)
            if t is not None and t.shape:
                self.error(cond.span, f"an if condition must be a scalar, got {t}")
            prior_conds |= self.reads(cond)
            self.cond_stack.append(set(prior_conds))
            self.branch_path.append((id(s), k))
            self.block(body)
            self.branch_path.pop()
            self.cond_stack.pop()
        if s.orelse is not None:
            self.cond_stack.append(set(prior_conds))
            self.branch_path.append((id(s), len(s.branches)))
            self.block(s.orelse)
            self.branch_path.pop()
            self.cond_stack.pop()
            self._complete_cover(s)

    def _complete_cover(self, s: A.If):
        """A variable defined in every branch of an if/else is not conditional."""
        n = len(s.branches) + 1
        for name, defs in self.def_branch.items():
            here = {p[len(self.branch_path)][1] for p, _ in defs
                    if len(p) > len(self.branch_path) and p[len(self.branch_path)][0] == id(s)}
            if len(here) == n:
                v = self.vars[name]
                v.conditional = bool(self.cond_stack) or any(not l.static for l in v.loops)
                v.multi_branch = s


def check(program: A.Program, overrides: Optional[dict] = None) -> Checked:
    return Checker(program, overrides).run()
