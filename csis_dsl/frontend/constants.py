"""What is known when compiling: constant folding of literals and args, and static
integer ranges (intervals) of index and trip-count expressions."""
from __future__ import annotations

from typing import List, Optional, Tuple

from . import ast as A
from .scopes import Scope


class NotConst(Exception):
    """The expression is not known when compiling."""


INT64 = (-2 ** 63, 2 ** 63 - 1)


class Constants:
    def __init__(self, scope: Scope):
        self.scope = scope
        self._overflowed = set()

    def _int(self, v, e):
        """An integer known when compiling, inside int64 (the reported error once)."""
        if isinstance(v, int) and not isinstance(v, bool) and not INT64[0] <= v <= INT64[1]:
            if e not in self._overflowed:
                self._overflowed.add(e)
                self.scope.error(e.span, f"integer overflow: {v} is outside the int64 range "
                                 "[-2^63, 2^63 - 1]")
            raise NotConst
        return v

    def const(self, e: A.Expr):
        """The value of ``e`` when compiling (literals, scalar args, arithmetic);
        raises NotConst otherwise."""
        if isinstance(e, A.Num):
            return self._int(int(e.value), e) if e.is_int else e.value
        if isinstance(e, A.Bool):
            return e.value
        if isinstance(e, A.Name):
            v = self.scope.vars.get(e.id)
            if v is not None and v.kind == "arg" and v.value is not None and v.value.dim() == 0:
                x = v.value.item()
                return int(x) if v.type.base == "int" else x
            raise NotConst
        if isinstance(e, A.Unary) and e.op == "-":
            return -self.const(e.operand)
        if isinstance(e, A.Binary) and e.op in "+-*/":
            a, b = self.const(e.left), self.const(e.right)
            if e.op == "/":
                return a / b if b != 0 else float("nan")
            return self._int({"+": a + b, "-": a - b, "*": a * b}[e.op], e)
        raise NotConst

    def try_const(self, e):
        if e is None:
            return None
        try:
            return self.const(e)
        except NotConst:
            return None

    def interval(self, e: A.Expr) -> Optional[Tuple[float, float]]:
        """A static range of an integer expression, or None when unbounded."""
        c = self.try_const(e)
        if c is not None:
            return (c, c)
        scope = self.scope
        if isinstance(e, A.Name):
            loop = scope.loop_var(e.id)
            if loop is not None:
                return (loop.lo, loop.lo + loop.size - 1)
            v = scope.vars.get(e.id)
            return v.bounds if v else None
        if isinstance(e, A.Index) and isinstance(e.base, A.Name):
            v = scope.vars.get(e.base.id)
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
        """The random or computed variables in ``e`` with no static range."""
        out = []
        for sub in A.walk_expr(e):
            if isinstance(sub, A.Name):
                v = self.scope.vars.get(sub.id)
                if v is not None and v.kind in ("latent", "deterministic") and v.bounds is None:
                    out.append(sub.id)
        return out
