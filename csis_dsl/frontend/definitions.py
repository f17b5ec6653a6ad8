"""Definitions: what a statement's left-hand side defines. A plain name, an element of
an indexed family (``y[i]`` inside its loop), another piece of a family defined in
pieces (``h[0] ~ ...; for t in range(1, T) { h[t] ~ ... }``), the same variable in
exclusive branches of an ``if``, and recursion (``h[t]`` reading ``h[t - 1]``)."""
from __future__ import annotations

import math
from typing import List, Optional, Set, Tuple

from ..catalogue.distributions import DistSpec
from . import ast as A
from .checked import Var
from .constants import Constants
from .expressions import MAX_ELEMENTS, ExprTyper
from .scopes import Scope
from .types import Type, broadcast


class Definitions:
    def __init__(self, scope: Scope, constants: Constants, typer: ExprTyper):
        self.scope, self.k, self.typer = scope, constants, typer

    def error(self, span, msg, notes=()):
        self.scope.error(span, msg, notes)

    def target(self, s, target) -> Tuple[Optional[str], List[A.Expr]]:
        if isinstance(target, A.Name):
            return target.id, []
        if isinstance(target, A.Index) and isinstance(target.base, A.Name):
            whole = next((i for i in target.indices if isinstance(i, A.Whole)), None)
            if whole is not None:
                self.error(whole.span, "':' cannot be on the left of a definition; define "
                           "the elements in a loop (for i in range(N) { x[i] ~ ... })")
                return None, []
            return target.base.id, target.indices
        op = "~" if isinstance(s, A.Sample) else "="
        self.error(target.span, f"'{op}' needs a variable on its left (a name or an "
                   f"indexed name such as y[i]), not an expression")
        return None, []

    def family_dims(self, indices) -> Optional[Tuple[int, ...]]:
        """Sizes of an indexed definition ``name[i, ...]``, from the loops it sits in."""
        dims = []
        for idx in indices:
            loop = self.scope.loop_var(idx.id) if isinstance(idx, A.Name) else None
            if loop is not None:
                dims.append(loop.lo + loop.size)
                continue
            c = self.k.try_const(idx)
            if c is None or float(c) != int(c) or c < 0:
                self.error(idx.span, "an index on the left of a definition must be a "
                           "loop variable or a non-negative integer constant")
                return None
            dims.append(int(c) + 1)
        return tuple(dims)

    def fills(self, indices) -> bool:
        """Whether an indexed definition sets every element of its array, in the
        layout of its loops: its indices are the enclosing loops' variables, in order,
        each loop starting at 0."""
        loops = list(self.scope.loop_stack)
        if len(indices) != len(loops):
            return False
        return all(isinstance(i, A.Name) and i.id == l.var and l.lo == 0
                   for i, l in zip(indices, loops))

    def element_type(self, name, kind, type_spec, value_type: Type,
                     dist: Optional[DistSpec]) -> Optional[Type]:
        """The element type: the definition's value type reconciled with a declared one."""
        declared = self.typer.type_spec(type_spec) if type_spec is not None else None
        if type_spec is not None and declared is None:
            return None
        elem = value_type
        if declared is None:
            return elem
        if declared.base == "int" and elem.base == "real" and kind != "deterministic":
            self.error(type_spec.span, f"'{name}' is declared int but {dist.name} "
                       "gives real values")
            return None
        if declared.shape and broadcast(declared.shape, elem.shape) != declared.shape:
            self.error(type_spec.span, f"'{name}' is declared {declared} but its "
                       f"definition has shape {list(elem.shape)}")
            return None
        if declared.shape:
            base = declared.base if kind == "deterministic" or declared.base != "real" \
                else elem.base
            return Type(base, declared.shape)
        return Type(elem.base if kind != "deterministic" else declared.base, elem.shape)

    def define(self, s, kind, type_spec, target, value_type: Optional[Type],
               dist: Optional[DistSpec], reads: Set[str]) -> Optional[Var]:
        """Register what statement ``s`` defines; returns its Var (new or extended)."""
        scope = self.scope
        name, indices = self.target(s, target)
        if name is None:
            return None
        if not scope.check_name(name, target.span):
            self.poison(name, kind, target.span)
            return None
        for i in indices:
            self.typer.expr(i)
        elem = self.element_type(name, kind, type_spec, value_type, dist) \
            if value_type is not None else None
        if elem is None:
            self.poison(name, kind, target.span)
            return None
        dims = self.family_dims(indices) if indices else ()
        if dims is not None and indices:
            used = {i.id for i in indices if isinstance(i, A.Name)}
            missing = [l.var for l in scope.loop_stack if l.var not in used]
            if missing:
                self.error(target.span, f"'{name}' would be set again at every iteration of "
                           f"the loop over '{missing[0]}' (the same element each time): "
                           f"index it by '{missing[0]}' too, or define it outside that loop")
                dims = None
        if dims is None:
            self.poison(name, kind, target.span)
            return None
        full = Type(elem.base, dims + elem.shape)
        if math.prod(full.shape) > MAX_ELEMENTS:
            self.error(target.span, f"'{name}' would have {math.prod(full.shape)} elements; "
                       f"a variable may have at most {MAX_ELEMENTS:,}")
            self.poison(name, kind, target.span)
            return None
        path = tuple(scope.branch_path)
        control = scope.control_reads()
        existing = scope.vars.get(name)
        if existing is not None and not existing.broken:
            return self.extend(existing, s, kind, indices, dims, elem, full, path, control,
                               reads, target)
        v = Var(name, kind, full, target.span, [s], list(scope.loop_stack), dims,
                dist=dist.name if dist else None, dist_key=dist.key if dist else None,
                reads=reads - {name}, control=control,
                pieces=1, partial=bool(indices) and not self.fills(indices))
        v.conditional = bool(scope.cond_stack) or any(not l.static for l in scope.loop_stack)
        scope.def_branch[name] = [(path, s)]
        if existing is None:
            scope.define(v)
        else:
            scope.vars[name] = v
        return v

    def poison(self, name, kind, span):
        """A definition that failed still defines its name, so that later uses do not
        add false 'unknown name' errors."""
        if name is not None and name not in self.scope.vars:
            self.scope.define(Var(name, kind, None, span, broken=True))

    def extend(self, existing: Var, s, kind, indices, dims, elem, full, path, control,
               reads, target) -> Optional[Var]:
        scope = self.scope
        name = existing.name
        if existing.kind == "arg":
            scope.redefined(name, target.span)
            return None
        prev = scope.def_branch.get(name, [])
        exclusive = all(_exclusive(path, p) for p, _ in prev)
        if indices and existing.family_dims and existing.kind == kind and \
                existing.elem_shape == elem.shape:
            # another piece of an indexed family (h[0] ~ ...; h[t] ~ ... for t >= 1)
            existing.type = Type(existing.type.base,
                                 tuple(max(a, b) for a, b in
                                       zip(existing.family_dims, dims)) + elem.shape)
            existing.family_dims = existing.type.shape[:len(dims)]
            existing.stmts.append(s)
            existing.reads |= reads - {name}
            existing.control |= control
            existing.pieces += 1
            if not path or not exclusive:
                scope.def_branch.setdefault(name, []).append((path, s))
            return existing
        if exclusive and prev and existing.kind == kind and existing.type == full:
            existing.stmts.append(s)
            existing.reads |= reads
            existing.control |= control
            scope.def_branch[name].append((path, s))
            return existing
        scope.redefined(name, target.span)
        return None

    def complete_cover(self, s: A.If):
        """A variable defined in every branch of an if/else is not conditional."""
        scope = self.scope
        n = len(s.branches) + 1
        depth = len(scope.branch_path)
        for name, defs in scope.def_branch.items():
            here = {p[depth][1] for p, _ in defs if len(p) > depth and p[depth][0] is s}
            if len(here) == n:
                v = scope.vars[name]
                v.conditional = bool(scope.cond_stack) or any(not l.static for l in v.loops)

    # ------------------------------------------------------------------ recursion
    def check_recursion(self, v: Var, s):
        """A statement that reads its own family: allowed at an earlier index (h[t - 1])
        of its innermost loop; a same-index read is a cycle."""
        scope = self.scope
        root = s.dist.call if isinstance(s, A.Sample) else s.value
        for sub in A.walk_expr(root):
            if not (isinstance(sub, A.Name) and sub.id == v.name):
                continue
            parent = _parent_index(root, sub)
            if parent is None or not scope.loop_stack:
                self.error(sub.span, f"'{v.name}' depends on itself (a cycle): a "
                           "variable cannot be read in its own definition")
                return
            inner = scope.loop_stack[-1]
            outer = {l.var for l in scope.loop_stack[:-1]}
            ok = len(parent.indices) == len(v.family_dims)
            for k, idx in enumerate(parent.indices):
                if k == len(parent.indices) - 1:
                    lag = self.lag(idx, inner.var)
                    ok = ok and lag is not None and lag >= 1
                elif not (isinstance(idx, A.Name) and idx.id in outer):
                    ok = False
            if not ok:
                self.error(sub.span, f"'{v.name}' depends on itself (a cycle): a "
                           f"recursive definition may only read earlier elements of "
                           f"its innermost loop, as in {v.name}[{inner.var} - 1]")
                return
            v.recursive = True
            v.max_lag = max(v.max_lag, lag)
            inner.sequential = True

    def lag(self, idx, var) -> Optional[int]:
        """k for an index ``var - k`` with k a constant, else None."""
        if isinstance(idx, A.Binary) and idx.op == "-" and isinstance(idx.left, A.Name) \
                and idx.left.id == var:
            c = self.k.try_const(idx.right)
            return int(c) if c is not None and float(c) == int(c) else None
        return None


def _parent_index(root, name_node):
    for sub in A.walk_expr(root):
        if isinstance(sub, A.Index) and sub.base is name_node:
            return sub
    return None


def _exclusive(p1, p2) -> bool:
    """Two branch paths that part at the same if, in different branches."""
    for (a, i), (b, j) in zip(p1, p2):
        if a is not b:
            return False
        if i != j:
            return True
    return False
