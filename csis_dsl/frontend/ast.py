"""The AST of a .ppl spec: plain dataclasses, a source span on every node."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from ..errors import Span


@dataclass(eq=False)
class Node:
    span: Span


# ---------------------------------------------------------------- expressions
@dataclass(eq=False)
class Expr(Node):
    pass


@dataclass(eq=False)
class Num(Expr):
    value: float
    is_int: bool


@dataclass(eq=False)
class Bool(Expr):
    value: bool


@dataclass(eq=False)
class Name(Expr):
    id: str


@dataclass(eq=False)
class Unary(Expr):
    op: str          # "-" | "not"
    operand: Expr


@dataclass(eq=False)
class Binary(Expr):
    op: str          # + - * / ^ == != < <= > >= and or
    left: Expr
    right: Expr


@dataclass(eq=False)
class Cond(Expr):
    test: Expr
    then: Expr
    orelse: Expr


@dataclass(eq=False)
class Call(Expr):
    func: str
    func_span: Span
    args: List[Expr]


@dataclass(eq=False)
class Whole(Expr):
    """``:`` as an index (``X[i, :]``): the whole dimension."""


@dataclass(eq=False)
class Keyword(Expr):
    """``name=value`` among a call's arguments; the checker resolves every one to its
    parameter's position (:mod:`.calls`) before anything else reads the call."""
    name: str
    name_span: Span
    value: Expr


@dataclass(eq=False)
class Index(Expr):
    base: Expr
    indices: List[Expr]


@dataclass(eq=False)
class Vector(Expr):
    items: List[Expr]


# ---------------------------------------------------------------- types
@dataclass(eq=False)
class TypeSpec(Node):
    base: str                      # real | int | bool | simplex
    lower: Optional[Expr] = None
    upper: Optional[Expr] = None
    dims: List[Expr] = field(default_factory=list)


# ---------------------------------------------------------------- statements
@dataclass(eq=False)
class Stmt(Node):
    pass


@dataclass(eq=False)
class ArgDecl(Stmt):
    type: TypeSpec
    name: str
    name_span: Span
    default: Optional[Expr]


@dataclass(eq=False)
class Dist(Node):
    call: Call
    trunc: Optional[Tuple[Optional[Expr], Optional[Expr]]] = None


@dataclass(eq=False)
class Sample(Stmt):
    """``[observe] [type] target ~ Dist(...)``; ``target`` is checked to be a name or
    an indexed name."""
    type: Optional[TypeSpec]
    target: Expr
    dist: Dist
    observed: bool


@dataclass(eq=False)
class Assign(Stmt):
    type: Optional[TypeSpec]
    target: Expr
    value: Expr
    observed: bool = False         # `observe y = expr;` -- always an error


@dataclass(eq=False)
class For(Stmt):
    var: str
    var_span: Span
    start: Optional[Expr]
    stop: Expr
    body: List[Stmt]


@dataclass(eq=False)
class If(Stmt):
    branches: List[Tuple[Expr, List[Stmt]]]
    orelse: Optional[List[Stmt]]


@dataclass(eq=False)
class Program(Node):
    name: str
    body: List[Stmt]
    source: str
    file: str


def walk_stmts(stmts):
    """Yield every statement, depth first, in program order."""
    for s in stmts:
        yield s
        if isinstance(s, For):
            yield from walk_stmts(s.body)
        elif isinstance(s, If):
            for _, body in s.branches:
                yield from walk_stmts(body)
            if s.orelse:
                yield from walk_stmts(s.orelse)


def walk_expr(e):
    """Yield every sub-expression of ``e`` (including ``e``)."""
    if e is None:
        return
    yield e
    if isinstance(e, Unary):
        yield from walk_expr(e.operand)
    elif isinstance(e, Binary):
        yield from walk_expr(e.left)
        yield from walk_expr(e.right)
    elif isinstance(e, Cond):
        yield from walk_expr(e.test)
        yield from walk_expr(e.then)
        yield from walk_expr(e.orelse)
    elif isinstance(e, Call):
        for a in e.args:
            yield from walk_expr(a)
    elif isinstance(e, Keyword):
        yield from walk_expr(e.value)
    elif isinstance(e, Index):
        yield from walk_expr(e.base)
        for i in e.indices:
            yield from walk_expr(i)
    elif isinstance(e, Vector):
        for i in e.items:
            yield from walk_expr(i)


def target_name(target: Expr) -> Optional[str]:
    if isinstance(target, Name):
        return target.id
    if isinstance(target, Index) and isinstance(target.base, Name):
        return target.base.id
    return None


MAX_DEPTH = 200     # levels of nesting a spec may have (expressions and blocks)


def children(node):
    """The AST nodes directly under ``node`` (expressions, statements, types)."""
    if isinstance(node, Unary):
        return [node.operand]
    if isinstance(node, Binary):
        return [node.left, node.right]
    if isinstance(node, Cond):
        return [node.test, node.then, node.orelse]
    if isinstance(node, Call):
        return list(node.args)
    if isinstance(node, Index):
        return [node.base] + list(node.indices)
    if isinstance(node, Vector):
        return list(node.items)
    if isinstance(node, TypeSpec):
        return [b for b in (node.lower, node.upper) if b is not None] + list(node.dims)
    if isinstance(node, ArgDecl):
        return [node.type] + ([node.default] if node.default is not None else [])
    if isinstance(node, Sample):
        out = ([node.type] if node.type else []) + [node.target, node.dist.call]
        return out + [b for b in node.dist.trunc or () if b is not None]
    if isinstance(node, Assign):
        return ([node.type] if node.type else []) + [node.target, node.value]
    if isinstance(node, For):
        return [e for e in (node.start, node.stop) if e is not None] + list(node.body)
    if isinstance(node, If):
        out = []
        for cond, body in node.branches:
            out += [cond] + list(body)
        return out + list(node.orelse or [])
    if isinstance(node, Program):
        return list(node.body)
    return []


def too_deep(program: "Program", limit: int = MAX_DEPTH):
    """The first node nested more than ``limit`` levels deep, or None -- found without
    recursion, so that every later (recursive) walk of the tree is safe."""
    stack = [(program, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return node
        stack.extend((c, depth + 1) for c in children(node))
    return None
