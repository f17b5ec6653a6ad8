"""Vectorised evaluation of expressions. Nothing in a spec is evaluated as Python: the
evaluator walks the AST and applies torch operations from fixed tables."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ..errors import ModelRuntimeError
from ..frontend import ast as A
from ..frontend.types import Type
from ..catalogue.functions import FUNCTIONS
from ..middle.folding import Folding
from .values import Val, align, combine, float_of

_ARITH = {
    "+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div, "^": torch.pow,
}
def _wholes_last(v: Val, indices) -> Val:
    """Move the dims indexed by ``:`` behind the indexed ones (in their order), so that
    indexing one dim at a time leaves exactly them."""
    P, n = v.prefix, len(indices)
    ev = v.t.dim() - P
    if ev < n:
        v = v.with_event_ndim(n)
        ev = n
    picked = [k for k, i in enumerate(indices) if not isinstance(i, A.Whole)]
    whole = [k for k, i in enumerate(indices) if isinstance(i, A.Whole)]
    perm = list(range(P)) + [P + k for k in picked + whole] + list(range(P + n, P + ev))
    m = v.m
    if m is not None:
        m = m.reshape(m.shape + (1,) * (v.t.dim() - m.dim())).expand(
            m.shape[:P] + v.t.shape[P:]).permute(perm)
    return Val(v.t.permute(perm), m, P)


def _matmul(a: Val, b: Val) -> Val:
    """``a @ b`` on the event dims (matrix-matrix, matrix-vector, vector-matrix, vector-
    vector), broadcast over the prefix (traces and loops)."""
    P = a.prefix
    x, y = float_of(a.t), float_of(b.t)
    na, nb = a.event_ndim, b.event_ndim
    if na == 2 and nb == 2:
        t = x @ y
    elif na == 2 and nb == 1:
        t = (x @ y.unsqueeze(-1)).squeeze(-1)
    elif na == 1 and nb == 2:
        t = (x.unsqueeze(-2) @ y).squeeze(-2)
    else:
        t = (x * y).sum(-1)
    m = None
    for v in (a, b):
        if v.m is not None:
            mm = v.m.reshape(v.m.shape[:P] + (-1,)).all(-1) if v.m.dim() > P else v.m
            mm = mm.reshape(mm.shape + (1,) * (t.dim() - mm.dim()))
            m = mm if m is None else m & mm
    return Val(t, m, P)


_COMPARE = {
    "==": torch.eq, "!=": torch.ne, "<": torch.lt, "<=": torch.le, ">": torch.gt,
    ">=": torch.ge,
}


def _is_int(t: torch.Tensor) -> bool:
    return not t.is_floating_point()


class Evaluator:
    """Evaluates expressions in one context.

    ``lookup(name) -> Val`` gives variables (already laid out for this context);
    ``active`` is the mask of (trace, loop-index) positions where the statement runs,
    used to report reads of elements that do not exist; ``folding``
    (:class:`.folding.Folding`), with the ``device`` of the run: where literal-only
    expressions are evaluated once.
    """

    def __init__(self, lookup: Callable[[str], Val], prefix: int,
                 active: Optional[torch.Tensor] = None, where: str = "",
                 folding: Optional[Folding] = None, device=None):
        self.lookup = lookup
        self.prefix = prefix
        self.active = active
        self.where = where
        self.folding, self.device = folding, device

    def __call__(self, e: A.Expr) -> Val:
        f = self.folding
        if f is not None and f.literal(e):
            t = f.get(e, "value", self.device)
            if t is not None:
                return Val(t.reshape((1,) * self.prefix + t.shape), None, self.prefix)
            v = getattr(self, "_" + type(e).__name__)(e)
            f.put(e, "value", self.device, v.t, self.prefix)
            return v
        return getattr(self, "_" + type(e).__name__)(e)

    def const(self, x, dtype=None) -> Val:
        t = torch.tensor(x, dtype=dtype)
        return Val(t.reshape((1,) * self.prefix), None, self.prefix)

    def _Num(self, e: A.Num):
        return self.const(int(e.value) if e.is_int else e.value,
                          torch.long if e.is_int else torch.get_default_dtype())

    def _Bool(self, e: A.Bool):
        return self.const(e.value, torch.bool)

    def _Name(self, e: A.Name):
        return self.lookup(e.id)

    def _Unary(self, e: A.Unary):
        v = self(e.operand)
        if e.op == "not":
            return v.replace(~(v.t != 0))
        t = v.t.long() if v.t.dtype == torch.bool else v.t
        return v.replace(-t)

    def _Binary(self, e: A.Binary):
        a, b = self(e.left), self(e.right)
        if e.op == "@":
            return _matmul(a, b)
        if e.op in ("and", "or"):
            f = torch.logical_and if e.op == "and" else torch.logical_or
            return combine([a, b], lambda x, y: f(x != 0, y != 0), float_args=False)
        if e.op in _COMPARE:
            return combine([a, b], _COMPARE[e.op], float_args=False)
        if e.op in ("+", "-", "*") and _is_int(a.t) and _is_int(b.t):
            return combine([a, b], lambda x, y: _ARITH[e.op](x.long(), y.long()),
                           float_args=False)
        return combine([a, b], _ARITH[e.op])

    def _Cond(self, e: A.Cond):
        c, a, b = self(e.test), self(e.then), self(e.orelse)
        if _is_int(a.t) and _is_int(b.t):
            return combine([c, a, b], lambda x, y, z: torch.where(x != 0, y, z),
                           float_args=False)
        return combine([c, a, b], lambda x, y, z: torch.where(x != 0, float_of(y),
                                                              float_of(z)),
                       float_args=False)

    def _Vector(self, e: A.Vector):
        vals = align([self(i) for i in e.items])
        ts = [v.t for v in vals]
        if any(t.is_floating_point() for t in ts):
            ts = [float_of(t) for t in ts]
        shape = torch.broadcast_shapes(*[t.shape for t in ts])
        t = torch.stack([x.expand(shape) for x in ts], dim=self.prefix)
        ms = [v.m for v in vals]
        m = None
        if any(x is not None for x in ms):
            m = torch.stack([(x if x is not None else torch.ones((), dtype=torch.bool))
                             .expand(shape) for x in ms], dim=self.prefix)
        return Val(t, m, self.prefix)

    def _Call(self, e: A.Call):
        f = FUNCTIONS[e.func]
        return f.impl([self(a) for a in e.args])

    def _Index(self, e: A.Index):
        base = self(e.base)
        if any(isinstance(i, A.Whole) for i in e.indices):
            base = _wholes_last(base, e.indices)
        for k, idx_e in enumerate(e.indices):
            if not isinstance(idx_e, A.Whole):
                base = self.index_one(base, self(idx_e), e, k)
        if base.m is not None:
            missing = ~base.m.expand(base.t.shape[:self.prefix] + base.m.shape[self.prefix:]) \
                if base.event_ndim == 0 else None
            if missing is not None:
                bad = missing
                if self.active is not None:     # where the reading statement runs
                    act = self.active.reshape(self.active.shape
                                              + (1,) * (missing.dim() - self.active.dim()))
                    bad = missing & act
                if bool(bad.any()):
                    name = e.base.id if isinstance(e.base, A.Name) else "an array"
                    n = int(bad.reshape(bad.shape[0], -1).any(1).sum()) if bad.dim() > 0 else 1
                    raise ModelRuntimeError(
                        f"reading an element of '{name}' that does not exist in {n} "
                        f"trace(s) ({self.where}); only the elements defined in a trace "
                        "exist", e.span)
        return base

    def index_one(self, base: Val, idx: Val, e: A.Index, k: int) -> Val:
        P = self.prefix
        size = base.t.shape[P]
        it = idx.t.long()
        bad = (it < 0) | (it >= size)
        if bool(bad.any()):
            act = self.active
            really = bad if act is None else bad & act.reshape(act.shape + (1,) * (bad.dim() - act.dim())).expand(torch.broadcast_shapes(bad.shape, act.shape))
            if bool(really.any()):
                name = e.base.id if isinstance(e.base, A.Name) else "an array"
                val = int(it[really][0]) if really.dim() else int(it)
                raise ModelRuntimeError(f"index {val} is out of range for '{name}' "
                                        f"(size {size})", e.indices[k].span)
            it = it.clamp(0, size - 1)
        rest = base.t.shape[P + 1:]
        if base.m is None and idx.m is None:
            view = _read_along(base.t, it, P)
            if view is None:
                view = _read_indexed(base.t, it, P)
            if view is not None:
                return Val(view, None, P)
        prefix = torch.broadcast_shapes(base.t.shape[:P], it.shape[:P])
        t = base.t.expand(prefix + base.t.shape[P:])
        ix = it.reshape(it.shape[:P] + (1,) + (1,) * len(rest)).expand(prefix + (1,) + rest)
        out = torch.gather(t, P, ix).squeeze(P)
        m = None
        if base.m is not None:
            bm = base.m.expand(base.m.shape[:P] + base.t.shape[P:]) if base.m.dim() == base.t.dim() else base.m
            bm = bm.expand(prefix + base.t.shape[P:])
            m = torch.gather(bm, P, ix).squeeze(P)
        if idx.m is not None:
            im = idx.m.reshape(idx.m.shape + (1,) * len(rest))
            m = im if m is None else (m & im)
        return Val(out, m, P)


def _read_along(t: torch.Tensor, it: torch.Tensor, P: int) -> Optional[torch.Tensor]:
    """``a[i]`` with ``i`` a loop's variable running over the whole of ``a``'s first
    dim (t (..., 1 at the loop's dim, ..., n, *rest), it 0 .. n - 1 along that dim): that
    dim moved into the loop's place, a view -- not a gather of the array broadcast over
    the loop, whose gradient is loop x array (272 x 272 per trace for ``mu[n]``). None
    for any other index."""
    dims = [d for d in range(P) if it.shape[d] != 1]
    if len(dims) != 1 or dims[0] == 0 or it.dim() != P:
        return None
    d, n = dims[0], it.shape[dims[0]]
    if t.shape[P] != n or t.shape[d] != 1 or \
            not torch.equal(it.reshape(-1), torch.arange(n, device=it.device)):
        return None
    return t.movedim(P, d).squeeze(d + 1)


def _read_indexed(t: torch.Tensor, it: torch.Tensor, P: int) -> Optional[torch.Tensor]:
    """``a[k]`` with ``a`` the same along every loop (t (B or 1, 1, ..., 1, n, *rest)) and
    the index varying along the loops (it (B or 1, *loop dims)): a data index
    (``alpha[county[i]]``: one index for every trace) or one scalar element per trace
    (``mu[z[i]]``), read by ``index_select`` / ``gather`` on the array itself -- not by a
    gather from the array broadcast over the loops, whose gradient fills loop x array
    per trace (919 x 85 for a county's intercept, 4/5 of an informed fit's time). None
    for any other layout."""
    if it.dim() != P or any(s != 1 for s in t.shape[1:P]):
        return None
    loops = tuple(it.shape[1:P])
    rest = tuple(t.shape[P + 1:])
    if it.shape[0] == 1:                          # the same index in every trace
        out = t.index_select(P, it.reshape(-1))
        return out.reshape((t.shape[0],) + loops + rest)
    if rest:
        return None
    n = t.shape[P]
    flat = t.reshape(t.shape[0], n).expand(it.shape[0], n)
    return flat.gather(1, it.reshape(it.shape[0], -1)).reshape((it.shape[0],) + loops)


def eval_static(e: A.Expr, args: Dict[str, torch.Tensor], t: Type) -> torch.Tensor:
    """Evaluate an arg default (no batch): returns a tensor of type ``t``."""
    def lookup(name):
        v = args[name]
        return Val(v.unsqueeze(0), None, 1)
    v = Evaluator(lookup, 1)(e)
    out = v.t.reshape(v.t.shape[1:]) if v.t.shape[0] == 1 else v.t[0]
    out = out.expand(t.shape) if tuple(out.shape) != t.shape else out
    if t.base == "int":
        return out.long()
    if t.base == "bool":
        return out != 0
    return float_of(out).clone()
