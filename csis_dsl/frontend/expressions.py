"""Static types of expressions: base (real | int | bool) and concrete shape, with
broadcasting, indexing and the function catalogue's typing rules. Every expression's
type is recorded in ``scope.types`` for the later stages."""
from __future__ import annotations

import math
from typing import List, Optional

from ..catalogue.distributions import NAMES as DISTRIBUTIONS
from ..catalogue.functions import FUNCTIONS, FunctionTypeError
from . import ast as A
from .constants import Constants
from .scopes import Scope, close_match
from .types import BOOL, INT, REAL, Type, broadcast, join_base


MAX_ELEMENTS = 10_000_000     # the most elements one variable may have


VECTOR_TYPES = {      # constrained vector types: what their values are
    "simplex": "non-negative and sum to one",
    "ordered": "increasing",
    "positive_ordered": "positive and increasing",
    "cholesky_factor_corr": "the Cholesky factor of a correlation matrix",
}


class CallArgs:
    """A distribution call's arguments as the catalogue's ``StaticArgs``: constants,
    shapes and integer ranges known when compiling."""

    def __init__(self, call: A.Call, types, constants: Constants):
        self.call, self.types, self.k = call, types, constants

    def const(self, i):
        return self.k.try_const(self.call.args[i])

    def shape(self, i):
        return self.types[self.call.args[i]].shape

    def int_range(self, i):
        return self.k.interval(self.call.args[i])


class ExprTyper:
    def __init__(self, scope: Scope, constants: Constants):
        self.scope, self.k = scope, constants

    def error(self, span, msg):
        self.scope.error(span, msg)

    def expr(self, e: A.Expr) -> Optional[Type]:
        t = self._expr(e)
        if t is not None:
            self.scope.types[e] = t
        return t

    def _expr(self, e: A.Expr) -> Optional[Type]:
        if isinstance(e, A.Num):
            return INT if e.is_int else REAL
        if isinstance(e, A.Bool):
            return BOOL
        if isinstance(e, A.Name):
            v = self.scope.lookup(e.id, e.span)
            return v.type if v else None
        if isinstance(e, A.Unary):
            t = self.expr(e.operand)
            if t is None:
                return None
            if e.op == "not":
                return BOOL.with_shape(t.shape)
            return Type(t.base if t.base != "bool" else "int", t.shape)
        if isinstance(e, A.Binary):
            return self.binary(e)
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
            return self.vector(e)
        if isinstance(e, A.Index):
            return self.index(e)
        if isinstance(e, A.Call):
            return self.call(e)
        if isinstance(e, A.Whole):
            self.error(e.span, "':' is allowed only as an index that reads a whole "
                       "dimension, as in X[i, :]")
            return None
        return None  # pragma: no cover

    def binary(self, e: A.Binary) -> Optional[Type]:
        a, b = self.expr(e.left), self.expr(e.right)
        if a is None or b is None:
            return None
        if e.op == "@":
            return self.matmul(e, a, b)
        shape = broadcast(a.shape, b.shape)
        if shape is None:
            self.error(e.span, f"shape mismatch: '{e.op}' between {a} and {b}")
            return None
        if e.op in ("and", "or", "==", "!=", "<", "<=", ">", ">="):
            return BOOL.with_shape(shape)
        if e.op in ("/", "^"):
            return REAL.with_shape(shape)
        return Type(join_base(a.base, b.base), shape)

    def matmul(self, e: A.Binary, a: Type, b: Type) -> Optional[Type]:
        """``@``: (n, k) @ (k, m), (n, k) @ (k,), (k,) @ (k, m), (k,) @ (k,)."""
        if a.base == "bool" or b.base == "bool":
            self.error(e.span, f"'@' needs numbers, got {a} and {b}")
            return None
        if not (1 <= len(a.shape) <= 2 and 1 <= len(b.shape) <= 2):
            self.error(e.span, f"'@' multiplies vectors and matrices, got {a} and {b}; "
                       "for a scalar factor use '*'")
            return None
        inner_a, inner_b = a.shape[-1], b.shape[0]
        if inner_a != inner_b:
            left = "columns" if len(a.shape) == 2 else "elements"
            right = "rows" if len(b.shape) == 2 else "elements"
            self.error(e.span, f"shape mismatch: '@' between {a} and {b}: the left has "
                       f"{inner_a} {left}, the right {inner_b} {right}")
            return None
        shape = a.shape[:-1] + b.shape[1:]
        return Type("real", shape)

    def vector(self, e: A.Vector) -> Optional[Type]:
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

    def index(self, e: A.Index) -> Optional[Type]:
        base = self.expr(e.base)
        idx = [INT if isinstance(i, A.Whole) else self.expr(i) for i in e.indices]
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
            nd = len(base.shape)
            what = "a scalar" if not nd else f"{base} (has {nd} dimension{'s' if nd > 1 else ''})"
            self.error(e.span, f"cannot index {what} with {len(idx)} "
                       f"ind{'ices' if len(idx) > 1 else 'ex'}")
            return None
        for k, i in enumerate(e.indices):
            if isinstance(i, A.Whole):
                continue
            r = self.k.interval(i)
            if r is not None and r[0] == r[1] and (r[0] >= base.shape[k] or r[1] < 0):
                self.error(i.span, f"index {int(r[0])} is out of range for a dimension "
                           f"of size {base.shape[k]}")
        kept = tuple(n for i, n in zip(e.indices, base.shape) if isinstance(i, A.Whole))
        return Type(base.base, kept + base.shape[len(idx):])

    def call(self, e: A.Call) -> Optional[Type]:
        if e.func in DISTRIBUTIONS:
            self.error(e.func_span, f"'{e.func}' is a distribution; it can only appear "
                       "on the right of '~'")
            return None
        f = FUNCTIONS.get(e.func)
        if f is None:
            self.error(e.func_span, f"unknown function '{e.func}'{close_match(e.func, FUNCTIONS)}")
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
        consts = [self.k.try_const(a) for a in e.args]
        try:
            return f.typing(ts, consts)
        except FunctionTypeError as err:
            at = e.span
            if f.needs_const and len(e.args) > f.needs_const[0] \
                    and consts[f.needs_const[0]] is None:
                at = e.args[f.needs_const[0]].span
            self.error(at, str(err))
            return None

    # ------------------------------------------------------------------ types
    def type_spec(self, t: A.TypeSpec) -> Optional[Type]:
        """A declared type with its sizes evaluated (they must be constants)."""
        dims = []
        for d in t.dims:
            if any(isinstance(n, A.Name) and n.id in self.scope.vars
                   and self.scope.vars[n.id].broken for n in A.walk_expr(d)):
                return None             # its arg failed, and said so
            reported = len(self.scope.diags)
            self.expr(d)
            if len(self.scope.diags) > reported:
                return None             # an unknown name in it, say: said once is enough
            c = self.k.try_const(d)
            if c is None or float(c) != int(c) or int(c) < 1:
                got = "" if c is None else f", got {c}"
                self.error(d.span, "a size must be a positive integer known when "
                           f"compiling (a literal or an arg){got}")
                return None
            dims.append(int(c))
        if math.prod(dims) > MAX_ELEMENTS:
            self.error(t.span, f"{math.prod(dims)} elements is too many: a variable may have "
                       f"at most {MAX_ELEMENTS:,}")
            return None
        for b in (t.lower, t.upper):
            if b is not None:
                self.expr(b)
                if self.k.try_const(b) is None:
                    self.error(b.span, "a bound must be a number known when compiling")
        if t.base in VECTOR_TYPES:
            if len(dims) != 1:
                self.error(t.span, f"{t.base} needs one size, as in {t.base}[K]")
                return None
            if t.base != "simplex" and (t.lower is not None or t.upper is not None):
                self.error(t.span, f"{t.base}[K] takes no bounds: its values are "
                           f"{VECTOR_TYPES[t.base]}")
                return None
            if t.base == "cholesky_factor_corr":
                return Type("real", (dims[0], dims[0]))
            return Type("real", tuple(dims))
        return Type(t.base, tuple(dims))

    def types_of(self, exprs) -> List[Optional[Type]]:
        return [self.scope.types.get(a) for a in exprs]
