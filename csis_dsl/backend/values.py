"""Runtime values: a tensor whose first ``prefix`` dims are the trace batch and the
loop dims of the statement being evaluated, the rest the value's own shape; plus a mask
of the elements that exist (None: all exist)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class Stored:
    """A variable as stored by the interpreter: the whole array and which elements
    exist."""
    t: torch.Tensor                        # (B or 1, *family_dims, *shape)
    exists: Optional[torch.Tensor] = None  # (B or 1, *family_dims) bool; None = all


class Deferred:
    """A stored variable computed only when first read (a deterministic family produced
    with a random one: many runs -- the guide's, say -- never read it)."""

    def __init__(self, compute):
        self._compute, self._done = compute, None

    def _get(self) -> Stored:
        if self._done is None:
            self._done = self._compute()
        return self._done

    @property
    def t(self):
        return self._get().t

    @property
    def exists(self):
        return self._get().exists


@dataclass
class Val:
    t: torch.Tensor
    m: Optional[torch.Tensor]
    prefix: int

    @property
    def event_ndim(self) -> int:
        return self.t.dim() - self.prefix

    def replace(self, t, m="same"):
        return Val(t, self.m if m == "same" else m, self.prefix)

    def with_event_ndim(self, n: int) -> "Val":
        """Insert singleton event dims so this value has ``n`` of them (right-aligned)."""
        k = n - self.event_ndim
        if k <= 0:
            return self
        shape = self.t.shape[:self.prefix] + (1,) * k + self.t.shape[self.prefix:]
        m = None
        if self.m is not None:
            m = self.m.reshape(self.m.shape[:self.prefix] + (1,) * k + self.m.shape[self.prefix:])
        return Val(self.t.reshape(shape), m, self.prefix)

    def aggregate(self, fn) -> "Val":
        """Reduce all event dims with ``fn(tensor, mask)`` over the last dim."""
        n = self.event_ndim
        t = self.t
        m = self.m if self.m is not None else torch.ones((), dtype=torch.bool)
        m = m.expand(t.shape) if m.shape != t.shape else m
        if n != 1:
            t = t.reshape(t.shape[:self.prefix] + (-1,))
            m = m.reshape(m.shape[:self.prefix] + (-1,))
        return Val(fn(t, m), None, self.prefix)


def align(vals):
    n = max(v.event_ndim for v in vals)
    return [v.with_event_ndim(n) for v in vals]


def float_of(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def combine(vals, fn, float_args=True) -> Val:
    vals = align(vals)
    ts = [float_of(v.t) if float_args else v.t for v in vals]
    masks = [v.m for v in vals if v.m is not None]
    m = None
    for x in masks:
        m = x if m is None else (m & x)
    return Val(fn(*ts), m, vals[0].prefix)
