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
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import pyro.distributions as pdist
import torch
from torch.distributions import constraints

from ..frontend.checked import Var
from ..middle.plan import Piece
from .values import Stored, float_of


class FamilyDist(pdist.TorchDistribution):
    has_rsample = False

    def __init__(self, rt, v: Var, pieces: List[Piece], validate_args=False):
        self.rt, self.v, self.pieces = rt, v, pieces
        self.n = v.family_dims[0]
        self.elem = tuple(v.elem_shape)
        super().__init__(torch.Size([rt.B]), torch.Size(v.type.shape), validate_args=False)

    @constraints.dependent_property
    def support(self):
        return self.v.support or constraints.real

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

    def sample(self, sample_shape=torch.Size()):
        B = self.rt.B
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

    def _scored_overlay(self, value):
        B = value.shape[0]
        x = float_of(value).reshape((B, self.n) + self.elem)
        return x, self._overlay(x, torch.ones((B, self.n), dtype=torch.bool))

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
        x, overlay = self._scored_overlay(value)
        B = x.shape[0]
        ex = torch.zeros((B, self.n), dtype=torch.bool)
        for p in self.pieces:
            _, active = self._piece(p, None, overlay)
            a, b = p.elements
            ex[:, a:b] |= True if active is None else active
        return ex

    def pieces_at(self, value, j: Optional[int] = None) -> List[Tuple[int, int, object, object]]:
        """The prior of every element given the elements of ``value`` before it (or of
        element j only): a list of (start, stop, distribution with batch (B, stop -
        start, *element batch), where it runs (B, stop - start) or None)."""
        _, overlay = self._scored_overlay(value)
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
