"""Constant folding, kept with the plan: an expression made of literals alone
(``sqrt(2.0)``, ``1.0 / 3``, ``-0.5``) has one value for every trace of every run, so
it is evaluated once per compiled program (and per device and dtype) and read back
after; a distribution's parameter of that kind is checked once too
(:meth:`..backend.interpreter.Runtime.parameter`). At batch 1 a training step is host
time, and the seed model's ``sqrt(...)`` scales cost a tensor creation, a square root, a
cast and a check at each of their six evaluations a step.

Only literals fold: args and data are constant within one compiled model too, but a
model's args are bound per run (``model.args(args)``), and nothing here may go stale.
Every function in the catalogue is pure (:mod:`..catalogue.functions`), so a folded
call is the call."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from ..frontend import ast as A


class Folding:
    """The literal-only expressions of one program and their values, per (device,
    dtype); tensors without the batch and loop dims (a value's own shape)."""

    def __init__(self):
        self._literal: Dict[A.Expr, bool] = {}
        self._values: Dict[Tuple[A.Expr, str, torch.device, torch.dtype], torch.Tensor] = {}

    def literal(self, e: A.Expr) -> bool:
        """Whether ``e`` reads no variable, loop index or arg: literals, and arithmetic,
        comparisons, conditionals, vectors and catalogue calls of them."""
        hit = self._literal.get(e)
        if hit is None:
            if isinstance(e, (A.Num, A.Bool)):
                hit = True
            elif isinstance(e, A.Unary):
                hit = self.literal(e.operand)
            elif isinstance(e, A.Binary):
                hit = self.literal(e.left) and self.literal(e.right)
            elif isinstance(e, A.Cond):
                hit = self.literal(e.test) and self.literal(e.then) and self.literal(e.orelse)
            elif isinstance(e, A.Vector):
                hit = all(self.literal(i) for i in e.items)
            elif isinstance(e, A.Call):
                hit = all(self.literal(a) for a in e.args)
            else:
                hit = False
            self._literal[e] = hit
        return hit

    def get(self, e: A.Expr, what: str, device: torch.device):
        """The value kept for ``e`` as ``what`` ("value", or a parameter's kind once
        checked), or None."""
        return self._values.get((e, what, device, torch.get_default_dtype()))

    def put(self, e: A.Expr, what: str, device: torch.device, t: torch.Tensor, prefix: int):
        """Keep ``t`` (``prefix`` batch and loop dims, then the value's own) where its
        batch and loop dims are all of size 1 -- and not inside torch's inference mode,
        whose tensors no later autograd run could use."""
        if all(n == 1 for n in t.shape[:prefix]) and not torch.is_inference_mode_enabled():
            self._values[e, what, device, torch.get_default_dtype()] = \
                t.detach().reshape(t.shape[prefix:])
