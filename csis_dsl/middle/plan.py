"""The plan of execution, made once from the checked program: where each statement sits
(its loops and the branches that guard it), the name of each loop's plate, the pieces
of every family produced in order, and the sites defined in several branches. The
interpreter, the Pyro boundary and the guide read it; none of them re-derives it.

``make_plan`` also rejects, as compile errors, constructs the checker accepts but the
back end cannot run yet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import networkx as nx

from ..errors import CompileError, Diagnostic
from ..frontend import ast as A
from ..frontend.checked import Checked, Loop


@dataclass(eq=False)
class Guard:
    stmt: A.If
    branch: int             # index into branches; len(branches) = else
    depth: int              # loop depth at the if


@dataclass(eq=False)
class Placement:
    loops: List[Loop]
    guards: List[Guard]


@dataclass(eq=False)
class Piece:
    """One statement of a family produced in order: ``index`` is the constant element
    it defines (``h[0]``), or None for the elements of its innermost loop."""
    stmt: A.Stmt
    loops: List[Loop]
    index: Optional[int]

    def covers(self, j: int) -> bool:
        if self.index is not None:
            return j == self.index
        loop = self.loops[-1]
        return loop.lo <= j < loop.lo + loop.size

    @property
    def elements(self) -> Tuple[int, int]:
        """[start, stop) of the elements it may define."""
        if self.index is not None:
            return (self.index, self.index + 1)
        loop = self.loops[-1]
        return (loop.lo, loop.lo + loop.size)


@dataclass
class Plan:
    placement: Dict[A.Stmt, Placement]
    plate_names: Dict[Loop, str]
    depth: int                                  # the deepest loop nesting
    latents: List[str]
    observed: List[str]
    deterministic: List[str]
    pieces: Dict[str, List[Piece]] = field(default_factory=dict)   # families
    # families produced element by element together: each random family in order with
    # the deterministic families it forms a recursion with (``sigma[t]`` reads
    # ``y[t - 1]``, ``y[t]`` reads ``sigma[t]``), and groups of deterministic families
    # alone; ``group_of`` maps every member to its group (random family first)
    groups: List[List[str]] = field(default_factory=list)
    group_of: Dict[str, List[str]] = field(default_factory=dict)
    position: Dict[A.Stmt, int] = field(default_factory=dict)   # in program order
    switches: Dict[A.If, Dict[str, List[Tuple[int, A.Sample]]]] = field(default_factory=dict)

    def loops_of(self, s: A.Stmt) -> List[Loop]:
        return self.placement[s].loops


def make_plan(checked: Checked) -> Plan:
    placement: Dict[A.Stmt, Placement] = {}
    for s, loops, guards in _walk(checked, checked.program.body, [], []):
        placement[s] = Placement(loops, guards)
    plan = Plan(placement, _plate_names(checked), checked.max_depth,
                checked.names("latent"), checked.names("observed"),
                checked.names("deterministic"))
    groups, diags, recursion_of = _groups(checked)
    diags = _unsupported(checked, plan, recursion_of) + diags
    if diags:
        raise CompileError(diags, checked.source)
    for name, v in checked.vars.items():
        if v.kind != "arg" and v.is_family:
            plan.pieces[name] = [_piece(checked, plan, s) for s in v.stmts]
    plan.groups = groups
    plan.group_of = {n: g for g in groups for n in g}
    plan.position = {s: i for i, s in enumerate(placement)}
    for s in placement:
        if isinstance(s, A.If):
            hoisted = _switch_sites(checked, s)
            if hoisted:
                plan.switches[s] = hoisted
    return plan


def _walk(checked, stmts, loops, guards):
    """Every statement with the loops and guards around it, in program order."""
    for s in stmts:
        yield s, loops, guards
        if isinstance(s, A.For):
            yield from _walk(checked, s.body, loops + [checked.loops[s]], guards)
        elif isinstance(s, A.If):
            bodies = [body for _, body in s.branches] + ([s.orelse] if s.orelse else [])
            for k, body in enumerate(bodies):
                yield from _walk(checked, body, loops, guards + [Guard(s, k, len(loops))])


def _plate_names(checked) -> Dict[Loop, str]:
    loops = list(checked.loops.values())
    counts: Dict[str, int] = {}
    for l in loops:
        counts[l.var] = counts.get(l.var, 0) + 1
    # a leading '_' keeps them apart from every variable (whose names may not have one)
    return {l: (f"_{l.var}" if counts[l.var] == 1 else f"_{l.var}_{l.span.line}")
            for l in loops}


def _piece(checked, plan, s) -> Piece:
    from ..backend.evaluate import eval_static
    from ..frontend.types import INT
    loops = plan.loops_of(s)
    idx = s.target.indices[0]
    if loops and isinstance(idx, A.Name) and idx.id == loops[-1].var:
        return Piece(s, loops, None)
    return Piece(s, loops, int(eval_static(idx, checked.args, INT)))


def _groups(checked: Checked):
    """Families produced in order together: the strongly connected parts of the read
    graph among families (a recursion through several families), and every
    deterministic family defined in pieces or recursively. A group holds at most one
    random family, which leads it. Also returns every family's strongly connected part
    (the families it is in a recursion with)."""
    fams = [n for n in checked.order
            if checked.vars[n].kind != "arg" and checked.vars[n].is_family]
    g = nx.DiGraph()
    g.add_nodes_from(fams)
    g.add_edges_from((r, n) for n in fams for r in checked.vars[n].reads if r in g)
    groups, diags, recursion_of = [], [], {}
    for comp in nx.strongly_connected_components(g):
        recursion_of.update((n, comp) for n in comp)
        members = sorted(comp, key=checked.order.index)
        random = [n for n in members if checked.vars[n].kind != "deterministic"]
        if len(random) > 1:
            diags.append(Diagnostic(checked.vars[random[1]].span, "not supported yet: "
                                    f"random families {', '.join(repr(r) for r in random)} "
                                    "read each other's elements (a recursion through "
                                    "several random families); write it with one random "
                                    "family, the others deterministic"))
            continue
        if len(members) > 1:
            first = min(checked.order.index(n) for n in members)
            for n in members:
                for r in sorted(checked.vars[n].reads - comp):
                    if r in checked.order and checked.order.index(r) > first:
                        diags.append(Diagnostic(
                            checked.vars[n].stmts[-1].span, f"'{n}' is produced in order "
                            f"together with {', '.join(repr(m) for m in members if m != n)}"
                            f", and reads '{r}', which is defined after the first of them;"
                            f" define '{r}' before '{members[0]}'"))
        if random or len(members) > 1 or any(checked.vars[n].kind == "deterministic"
                                             for n in members):
            groups.append(random + [n for n in members if n not in random])
    return groups, diags, recursion_of


def _switch_sites(checked, s: A.If):
    """Random variables defined in several branches of ``s`` (not families, whose
    pieces are produced element by element): one site each."""
    out: Dict[str, List[Tuple[int, A.Sample]]] = {}
    bodies = [body for _, body in s.branches] + ([s.orelse] if s.orelse is not None else [])
    for k, body in enumerate(bodies):
        for st in body:
            if isinstance(st, A.Sample):
                name = A.target_name(st.target)
                if not checked.vars[name].is_family:
                    out.setdefault(name, []).append((k, st))
    return {n: d for n, d in out.items() if len(d) > 1}


def _unsupported(checked: Checked, plan: Plan, recursion_of) -> List[Diagnostic]:
    diags = []
    for name, v in checked.vars.items():
        if v.kind == "arg" or not v.is_family:
            continue
        if len(v.family_dims) != 1:
            diags.append(Diagnostic(v.span, f"not supported yet: '{name}' is defined in "
                                    "pieces or recursively but is not a 1-D family"))
        first = checked.order.index(name)
        for r in sorted(v.reads):
            if r in checked.order and checked.order.index(r) > first \
                    and r not in recursion_of.get(name, ()):
                diags.append(Diagnostic(v.stmts[-1].span,
                                        f"'{name}' is defined in pieces, and a later piece "
                                        f"reads '{r}', which is defined after the first "
                                        f"piece; define '{r}' before the first piece"))
    for s, place in plan.placement.items():
        if isinstance(s, (A.Sample, A.Assign)):
            name = A.target_name(s.target)
            if name not in checked.vars:
                continue
            loops = place.loops
            n_idx = len(s.target.indices) if isinstance(s.target, A.Index) else 0
            if loops and n_idx < len(loops):
                diags.append(Diagnostic(s.target.span,
                                        f"'{name}' is defined inside a loop but not indexed "
                                        f"by its loop variable; write "
                                        f"{name}[{', '.join(l.var for l in loops)}]"))
    return diags
