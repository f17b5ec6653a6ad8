"""The function catalogue: arity, static typing rule and vectorised implementation.

Implementations take and return :class:`csis_dsl.backend.values.Val` (a tensor whose
leading ``prefix`` dims are the trace batch and the loop dims, plus a mask of which
elements exist). Aggregates (sum, mean, prod, count, min/max of one array) range over
the elements that exist.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from ..backend.values import Val, combine
from ..frontend.types import Type, broadcast, join_base


class FunctionTypeError(Exception):
    """Raised by a typing rule with a message for the user."""


@dataclass(frozen=True)
class FuncSpec:
    name: str
    min_args: int
    max_args: int
    typing: Callable       # (list[Type], const_args) -> Type
    impl: Callable         # (list[Val]) -> Val
    needs_const: tuple = ()   # indices of args that must be compile-time constants


def _elementwise(name, fn, out_base="real"):
    def typing(ts, consts):
        t = ts[0]
        if t.base == "bool" and out_base != "same":
            pass
        return Type(t.base if out_base == "same" else out_base, t.shape)

    def impl(vs):
        v = vs[0]
        return v.replace(fn(v.t.to(torch.get_default_dtype())
                            if not v.t.is_floating_point() else v.t))
    return FuncSpec(name, 1, 1, typing, impl)


def _binary(name, fn, out_base="real"):
    def typing(ts, consts):
        shape = broadcast(ts[0].shape, ts[1].shape)
        if shape is None:
            raise FunctionTypeError(f"{name}: shapes {ts[0].shape} and {ts[1].shape} "
                                    "do not match")
        base = join_base(ts[0].base, ts[1].base) if out_base == "join" else out_base
        return Type(base, shape)

    def impl(vs):
        return combine(vs, fn)
    return FuncSpec(name, 2, 2, typing, impl)


def _aggregate(name, fn, out="real"):
    def typing(ts, consts):
        t = ts[0]
        if t.is_scalar:
            raise FunctionTypeError(f"{name} needs an array, got a scalar {t}")
        base = {"real": "real", "int": "int", "same": t.base if t.base != "bool" else "int"}[out]
        return Type(base, ())

    def impl(vs):
        return vs[0].aggregate(fn)
    return FuncSpec(name, 1, 1, typing, impl)


def _minmax(name, reduce, elementwise):
    def typing(ts, consts):
        if len(ts) == 1:
            if ts[0].is_scalar:
                raise FunctionTypeError(f"{name} of one argument needs an array")
            return Type(ts[0].base, ())
        shape = broadcast(ts[0].shape, ts[1].shape)
        if shape is None:
            raise FunctionTypeError(f"{name}: shapes {ts[0].shape} and {ts[1].shape} "
                                    "do not match")
        return Type(join_base(ts[0].base, ts[1].base), shape)

    def impl(vs):
        if len(vs) == 1:
            return vs[0].aggregate(reduce)
        return combine(vs, elementwise)
    return FuncSpec(name, 1, 2, typing, impl)


def _const_size(name, consts, i=0):
    n = consts[i]
    if n is None or float(n) != int(n) or int(n) < 0:
        raise FunctionTypeError(f"{name} needs a non-negative integer size known when "
                                "compiling (a literal or an arg)")
    return int(n)


def _ones_like(fill):
    def typing(ts, consts):
        return Type("real", (_const_size("ones" if fill else "zeros", consts),))

    def impl(vs):
        n = int(vs[0].t.reshape(-1)[0])
        t = torch.full((n,), float(fill))
        return Val(t.reshape((1,) * vs[0].prefix + (n,)), None, vs[0].prefix)
    return typing, impl


def _linspace_typing(ts, consts):
    return Type("real", (_const_size("linspace", consts, 2),))


def _linspace_impl(vs):
    n = int(vs[2].t.reshape(-1)[0])
    a, b = vs[0].t, vs[1].t
    steps = torch.linspace(0.0, 1.0, n)
    t = a.unsqueeze(-1) + (b - a).unsqueeze(-1) * steps
    return Val(t, None, vs[0].prefix)


def _eye_typing(ts, consts):
    n = _const_size("eye", consts)
    return Type("real", (n, n))


def _eye_impl(vs):
    n = int(vs[0].t.reshape(-1)[0])
    return Val(torch.eye(n).reshape((1,) * vs[0].prefix + (n, n)), None, vs[0].prefix)


def _dot_typing(ts, consts):
    a, b = ts
    if len(a.shape) != 1 or len(b.shape) != 1:
        raise FunctionTypeError("dot needs two vectors")
    if a.shape != b.shape:
        raise FunctionTypeError(f"dot: vector sizes {a.shape[0]} and {b.shape[0]} differ")
    return Type(join_base(a.base, b.base), ())


def _dot_impl(vs):
    prod = combine(vs, torch.mul)
    return prod.aggregate(lambda t, m: torch.where(m, t, torch.zeros_like(t)).sum(-1))


def _clamp_typing(ts, consts):
    return Type(ts[0].base if ts[0].base != "bool" else "int", ts[0].shape)


def _clamp_impl(vs):
    return combine(vs, lambda x, lo, hi: torch.minimum(torch.maximum(x, lo), hi))


def _sum(t, m):
    return torch.where(m, t, torch.zeros_like(t)).sum(-1)


def _mean(t, m):
    n = m.sum(-1)
    return _sum(t.to(torch.get_default_dtype()), m) / n.clamp(min=1)


def _prod(t, m):
    return torch.where(m, t, torch.ones_like(t)).prod(-1)


def _count(t, m):
    return m.sum(-1)


def _amin(t, m):
    return torch.where(m, t, torch.full_like(t, float("inf"))).amin(-1)


def _amax(t, m):
    return torch.where(m, t, torch.full_like(t, -float("inf"))).amax(-1)


def _vector_fn(name, fn, scalar=False):
    """A function of one vector along its last dim (log_sum_exp, softmax, cumsum)."""
    def typing(ts, consts):
        t = ts[0]
        if len(t.shape) != 1 or t.base == "bool":
            raise FunctionTypeError(f"{name} needs a vector of numbers, got {t}")
        return Type("real", () if scalar else t.shape)

    def impl(vs):
        v = vs[0]
        t = v.t.to(torch.get_default_dtype()) if not v.t.is_floating_point() else v.t
        if v.m is not None and scalar:
            m = v.m.expand(t.shape)
            t = torch.where(m, t, torch.full_like(t, -float("inf")))
            return Val(fn(t), None, v.prefix)
        return Val(fn(t), None if scalar else v.m, v.prefix)
    return FuncSpec(name, 1, 1, typing, impl)


def _transpose_typing(ts, consts):
    t = ts[0]
    if len(t.shape) != 2:
        raise FunctionTypeError(f"transpose needs a matrix, got {t}")
    return Type(t.base, t.shape[::-1])


def _transpose_impl(vs):
    v = vs[0]
    m = v.m.transpose(-1, -2) if v.m is not None and v.m.dim() >= v.prefix + 2 else v.m
    return Val(v.t.transpose(-1, -2), m, v.prefix)


def _diag_typing(ts, consts):
    t = ts[0]
    if len(t.shape) != 1:
        raise FunctionTypeError(f"diag makes a diagonal matrix from a vector, got {t}")
    return Type("real", t.shape * 2)


def _diag_impl(vs):
    v = vs[0]
    t = v.t.to(torch.get_default_dtype()) if not v.t.is_floating_point() else v.t
    return Val(torch.diag_embed(t), None, v.prefix)


_ot, _oi = _ones_like(1.0)
_zt, _zi = _ones_like(0.0)

FUNCTIONS = {f.name: f for f in [
    _elementwise("exp", torch.exp),
    _elementwise("log", torch.log),
    _elementwise("log1p", torch.log1p),
    _elementwise("expm1", torch.expm1),
    _elementwise("sqrt", torch.sqrt),
    _elementwise("abs", torch.abs, out_base="same"),
    _elementwise("sin", torch.sin),
    _elementwise("cos", torch.cos),
    _elementwise("tanh", torch.tanh),
    _elementwise("sigmoid", torch.sigmoid),
    _elementwise("logit", torch.logit),
    _elementwise("softplus", F.softplus),
    _elementwise("floor", torch.floor, out_base="int"),
    _elementwise("ceil", torch.ceil, out_base="int"),
    _elementwise("round", torch.round, out_base="int"),
    _binary("pow", torch.pow),
    _minmax("min", _amin, torch.minimum),
    _minmax("max", _amax, torch.maximum),
    _aggregate("sum", _sum, out="same"),
    _aggregate("mean", _mean),
    _aggregate("prod", _prod, out="same"),
    _aggregate("count", _count, out="int"),
    FuncSpec("dot", 2, 2, _dot_typing, _dot_impl),
    FuncSpec("ones", 1, 1, _ot, _oi, needs_const=(0,)),
    FuncSpec("zeros", 1, 1, _zt, _zi, needs_const=(0,)),
    FuncSpec("linspace", 3, 3, _linspace_typing, _linspace_impl, needs_const=(2,)),
    FuncSpec("eye", 1, 1, _eye_typing, _eye_impl, needs_const=(0,)),
    FuncSpec("clamp", 3, 3, _clamp_typing, _clamp_impl),
    _vector_fn("log_sum_exp", lambda t: torch.logsumexp(t, -1), scalar=True),
    _vector_fn("softmax", lambda t: torch.softmax(t, -1)),
    _vector_fn("cumsum", lambda t: torch.cumsum(t, -1)),
    FuncSpec("transpose", 1, 1, _transpose_typing, _transpose_impl),
    FuncSpec("diag", 1, 1, _diag_typing, _diag_impl),
]}
