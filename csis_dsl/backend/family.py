"""A 1-D family produced in order -- defined in pieces (``h[0] ~ ...; for t in range(1,
T) { h[t] ~ ... }``), recursively (``h[t]`` reads ``h[t - 1]``), or both, possibly in
branches on the loop index -- as one distribution over the whole array.

``sample`` produces the elements in index order; element j is drawn from every piece
that may define it, where that piece runs. ``log_prob`` scores a given array in one
vectorised pass per piece (teacher forcing). ``exists`` says which elements a value
defines. ``pieces_at`` gives the prior of every element given the elements before it,
which the proposals use to locate themselves.

Values are floats, or integers for an ``int`` family (a ``bool`` family is 0./1., as a
Bernoulli draw is); scoring always reads them as floats, which every distribution of
the catalogue accepts.

Deterministic families produced in order (``sigma[0] = s1; for t in range(1, T) {
sigma[t] = f(sigma[t - 1], y[t - 1]) }``) are computed by :class:`InOrder`, alone or as
*companions* of the random family they form a recursion with (``y[t] ~ Normal(mu,
sigma[t])``): every element j of every member is produced in program order before any
element j + 1, and a companion is recomputed from any value of its leader.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pyro.distributions as pdist
import torch
from torch.distributions import constraints

from ..frontend.checked import Var
from ..middle.plan import Piece
from .values import Stored, float_of


class InOrder:
    """The members of a group (:attr:`Plan.groups`) produced element by element: at each
    element j, every piece that may define it, in program order. Deterministic pieces
    are evaluated; random ones drawn (``draw``) unless their family's value is given."""

    def __init__(self, rt, names: List[str]):
        self.rt = rt
        self.vars = [rt.checked.vars[n] for n in names]
        pos = rt.plan.position
        items = [(v, p) for v in self.vars for p in rt.plan.pieces[v.name]]
        self.n = max(v.family_dims[0] for v in self.vars)
        self.steps = [sorted([(v, p) for v, p in items if p.covers(j)],
                             key=lambda vp: pos[vp[1].stmt]) for j in range(self.n)]
        # pieces that run wherever their loop does (no guard, static loops): no mask
        self.everywhere = {p: not rt.plan.placement[p.stmt].guards
                           and all(l.static for l in p.loops) for _, p in items}

    def run(self, given: Dict[str, torch.Tensor] = None, draw=None,
            upto: Optional[int] = None) -> Dict[str, Stored]:
        """Every member as a :class:`Stored` (elements from ``upto`` on are left
        undefined). ``given``: members whose value is known (B, n, *element)."""
        rt, B, given = self.rt, self.rt.B, given or {}
        bufs = {}
        for v in self.vars:
            shape = (B, v.family_dims[0]) + tuple(v.elem_shape)
            if v.name in given:
                x = float_of(given[v.name]).reshape(shape)
                bufs[v.name] = Stored(x, torch.ones(shape[:2], dtype=torch.bool))
            else:
                bufs[v.name] = Stored(torch.zeros(shape),
                                      torch.zeros(shape[:2], dtype=torch.bool))
        for j in range(self.n if upto is None else min(upto, self.n)):
            for v, p in self.steps[j]:
                if v.name in given:
                    continue
                if v.kind == "deterministic":
                    x, a = self._evaluate(v, p, j, bufs)
                else:
                    x, a = draw(p, j, dict(bufs))
                old = bufs[v.name]
                buf, ex = old.t.clone(), old.exists.clone()
                if a is None:
                    buf[:, j] = x
                    ex[:, j] = True
                else:
                    elem = (1,) * len(v.elem_shape)
                    buf[:, j] = torch.where(a.reshape((B,) + elem), x, buf[:, j])
                    ex[:, j] |= a
                bufs[v.name] = Stored(buf, ex)
        return {v.name: Stored(_typed(bufs[v.name].t, v), bufs[v.name].exists)
                for v in self.vars if v.name not in given}

    def _evaluate(self, v: Var, p: Piece, j: int, overlay):
        """Element j of a deterministic piece: (value (B, *element), where it runs (B,)
        or None for everywhere)."""
        rt, B = self.rt, self.rt.B
        fixed = None if p.index is not None else {len(p.loops) - 1: j}
        active = None if self.everywhere[p] else rt.active_mask(p.stmt, p.loops, fixed,
                                                                overlay)
        ev = rt.evaluator(p.loops, active, fixed, rt.where(p.stmt, v.name), overlay)
        val = float_of(ev(p.stmt.value).t)
        P = 1 + len(p.loops)
        val = val.expand(torch.broadcast_shapes(val.shape, (B,) + (1,) * len(p.loops)
                                                + tuple(v.elem_shape)))
        val = val.reshape((B,) + tuple(val.shape[P:]))
        return val, None if active is None else active.reshape(B, -1)[:, 0]


def _typed(t, v: Var):
    if v.kind != "deterministic":
        return t
    return t.long() if v.type.base == "int" else t.bool() if v.type.base == "bool" else t


class FamilyDist(pdist.TorchDistribution):
    has_rsample = False

    def __init__(self, rt, v: Var, pieces: List[Piece], validate_args=False):
        self.rt, self.v, self.pieces = rt, v, pieces
        self.n = v.family_dims[0]
        self.elem = tuple(v.elem_shape)
        group = rt.plan.group_of.get(v.name, [v.name])
        self.order = InOrder(rt, group) if len(group) > 1 else None
        super().__init__(torch.Size([rt.B]), torch.Size(v.type.shape), validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self.v.support or constraints.real

    def companions(self, value, upto: Optional[int] = None) -> Dict[str, Stored]:
        """The deterministic families produced with this one, computed from ``value``
        (empty when there are none)."""
        if self.order is None:
            return {}
        key = (value, upto)
        hit = getattr(self, "_last", None)    # log_prob, exists and the interpreter ask
        if hit is not None and hit[0][0] is value and hit[0][1] == upto:   # for one value
            return hit[1]
        out = self.order.run({self.v.name: value}, upto=upto)
        self._last = (key, out)
        return out

    def _overlay(self, buf, ex):
        return {self.v.name: Stored(buf, ex)}

    def _piece(self, p: Piece, j: Optional[int], overlay):
        """The distribution of piece p at element j (or at all its elements when j is
        None): batch (B, width, *element batch); and where it runs, (B, width) or None."""
        fixed = None if p.index is not None or j is None else {len(p.loops) - 1: j}
        active = self.rt.active_mask(p.stmt, p.loops, fixed, overlay)
        d = self.rt.dist_for(p.stmt, p.loops, active, fixed, overlay, elem_shape=self.elem)
        B = self.rt.B
        if active is not None:
            active = active.reshape(B, -1)
        return d, active

    def _as_value(self, buf):
        return buf.long() if self.v.type.base == "int" else buf

    def _draw(self, p: Piece, j: int, overlay):
        B = self.rt.B
        d, active = self._piece(p, j, overlay)
        x = float_of(d.sample()).reshape((B,) + self.elem)
        return x, torch.ones(B, dtype=torch.bool) if active is None else active[:, 0]

    def sample(self, sample_shape=torch.Size()):
        B = self.rt.B
        if self.order is not None:
            out = self.order.run(draw=self._draw)
            value = self._as_value(out.pop(self.v.name).t)
            self._last = ((value, None), out)        # its companions, computed already
            return value
        buf = torch.zeros((B, self.n) + self.elem)
        ex = torch.zeros((B, self.n), dtype=torch.bool)
        for j in range(self.n):
            for p in self.pieces:
                if not p.covers(j):
                    continue
                d, active = self._piece(p, j, self._overlay(buf, ex))
                x = float_of(d.sample()).reshape((B,) + self.elem)
                a = torch.ones(B, dtype=torch.bool) if active is None else active[:, 0]
                buf, ex = buf.clone(), ex.clone()
                buf[:, j] = torch.where(a.reshape((B,) + (1,) * len(self.elem)), x, buf[:, j])
                ex[:, j] |= a
        return self._as_value(buf)

    def _scored_overlay(self, value, upto=None):
        B = value.shape[0]
        x = float_of(value).reshape((B, self.n) + self.elem)
        overlay = self._overlay(x, torch.ones((B, self.n), dtype=torch.bool))
        overlay.update(self.companions(value, upto))
        return x, overlay

    def log_prob(self, value):
        x, overlay = self._scored_overlay(value)
        B = x.shape[0]
        total = torch.zeros(B)
        for p in self.pieces:
            d, active = self._piece(p, None, overlay)
            a, b = p.elements
            lp = d.log_prob(x[:, a:b].reshape(d.batch_shape + d.event_shape))
            lp = lp.reshape(B, b - a, -1).sum(-1)
            if active is not None:
                lp = torch.where(active, lp, torch.zeros_like(lp))
            total = total + lp.sum(-1)
        return total

    def exists(self, value) -> torch.Tensor:
        """(B, n) bool: the elements ``value`` defines."""
        B = value.shape[0]
        ex = torch.zeros((B, self.n), dtype=torch.bool)
        if all(not self.rt.plan.placement[p.stmt].guards and all(l.static for l in p.loops)
               for p in self.pieces):                # no piece depends on values
            for p in self.pieces:
                a, b = p.elements
                ex[:, a:b] = True
            return ex
        x, overlay = self._scored_overlay(value)
        for p in self.pieces:
            _, active = self._piece(p, None, overlay)
            a, b = p.elements
            ex[:, a:b] |= True if active is None else active
        return ex

    def pieces_at(self, value, j: Optional[int] = None) -> List[Tuple[int, int, object, object]]:
        """The prior of every element given the elements of ``value`` before it (or of
        element j only): a list of (start, stop, distribution with batch (B, stop -
        start, *element batch), where it runs (B, stop - start) or None)."""
        _, overlay = self._scored_overlay(value, None if j is None else j + 1)
        out = []
        for p in self.pieces:
            if j is None:
                a, b = p.elements
            elif p.covers(j):
                a, b = j, j + 1
            else:
                continue
            d, active = self._piece(p, j, overlay)
            out.append((a, b, d, active))
        return out
