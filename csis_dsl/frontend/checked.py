"""The checked program (the "middle IR"): the AST plus a variable table, a static type
for every expression, resolved arg values and the loop facts the later stages need.
Plain data; built by :mod:`.statements`, read by the plan, the graph and the back end."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch

from ..errors import Span
from . import ast as A
from .types import Type


@dataclass(eq=False)
class Loop:
    var: str
    span: Span
    start: A.Expr
    stop: A.Expr
    size: int                 # the most iterations any trace runs
    static: bool              # trip count fixed when compiling
    lo: int                   # the smallest first index
    stmt: Optional[A.For] = None
    sequential: bool = False  # some statement reads a family it defines at another index


@dataclass(eq=False)
class Var:
    name: str
    kind: str                         # arg | latent | observed | deterministic
    type: Optional[Type]              # the whole value: family dims + element shape
    span: Span
    stmts: List[A.Stmt] = field(default_factory=list)
    loops: List[Loop] = field(default_factory=list)
    family_dims: Tuple[int, ...] = ()
    dist: Optional[str] = None
    dist_key: Optional[str] = None   # its catalogue entry (Mixture(Normal), Bernoulli(logits))
    support: object = None
    discrete: bool = False
    conditional: bool = False
    reads: Set[str] = field(default_factory=set)       # data dependence
    control: Set[str] = field(default_factory=set)     # control dependence
    value: Optional[torch.Tensor] = None               # args only
    bounds: Optional[Tuple[float, float]] = None       # static value range (ints)
    recursive: bool = False                            # reads itself at other indices
    max_lag: int = 0          # the largest k of its reads h[t - k] (a chain of order k)
    pieces: int = 0
    partial: bool = False     # one indexed definition that does not fill the array
                              # exactly with its loops (s[0] = ..., h[t] for t from 1)
    broken: bool = False      # its definition failed to check: later uses stay silent
    ordered: Optional[str] = None   # "ordered" | "positive_ordered": sorted iid draws

    @property
    def elem_shape(self) -> Tuple[int, ...]:
        return self.type.shape[len(self.family_dims):]

    @property
    def is_family(self) -> bool:
        """Defined in pieces or recursively: one site over the whole array, its elements
        produced in order."""
        return self.pieces > 1 or self.recursive or self.partial


@dataclass
class Checked:
    program: A.Program
    vars: Dict[str, Var]
    args: Dict[str, torch.Tensor]
    order: List[str]                  # variables in definition order
    loops: Dict[A.For, Loop]
    types: Dict[A.Expr, Type]
    max_depth: int = 0

    def names(self, kind: str) -> List[str]:
        return [n for n in self.order if self.vars[n].kind == kind]

    @property
    def source(self) -> str:
        return self.program.source

    @property
    def file(self) -> str:
        return self.program.file
