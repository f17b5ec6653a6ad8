"""The plan of execution, made once from the checked program: where each statement sits
(its loops and the branches that guard it), the name of each loop's plate, the pieces
of every family produced in order, and the sites defined in several branches. The
interpreter, the Pyro boundary and the guide read it; none of them re-derives it.

``make_plan`` also rejects, as compile errors, constructs the checker accepts but the
back end cannot run yet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import networkx as nx

from ..errors import CompileError, Diagnostic
from ..frontend import ast as A
from ..frontend.checked import Checked, Loop
from .affine import gaussian_in
from .folding import Folding


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
    # the order in which the guide runs the top-level statements, and the variables in
    # the order the guide produces them (:func:`proposal_order`)
    proposal_body: List[A.Stmt] = field(default_factory=list)
    proposal_vars: List[str] = field(default_factory=list)
    # the literal-only expressions and their values, evaluated once (:mod:`.folding`)
    folding: Folding = field(default_factory=Folding)

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
    plan.proposal_body, plan.proposal_vars = proposal_order(checked)
    return plan


def _size(v) -> int:
    return int(math.prod(v.type.shape)) if v.type is not None and v.type.shape else 1


def _data_reads(checked, name) -> set:
    """The variables a variable reads, through deterministic ones."""
    out, todo = set(), list(checked.vars[name].reads | checked.vars[name].control)
    while todo:
        r = todo.pop()
        if r in out or r not in checked.vars:
            continue
        out.add(r)
        if checked.vars[r].kind == "deterministic":
            todo.extend(checked.vars[r].reads | checked.vars[r].control)
    return out


def proposal_order(checked) -> Tuple[List[A.Stmt], List[str]]:
    """The order in which the guide proposes the top-level statements: the program's,
    except that a small top-level latent B (``sigma``) that a larger one A before it
    (``real[K] beta``) shares an observation with (``y ~ Normal(X @ beta, sigma)``) is
    proposed before A when its prior reads nothing defined from A on. The guide may
    propose in any order its priors allow (the weights are p / q either way); this one
    lets the observation inform A's proposal given B (:func:`..proposals.context.informs`
    asks that an observation read nothing drawn after the site), so the larger block,
    often a correlated coefficient vector with a narrow posterior, starts at its exact
    conditional posterior for a linear-Gaussian likelihood, and the network is left the
    small one. The model itself always runs in program order."""
    body = list(checked.program.body)

    def single_latent(s):
        if not isinstance(s, A.Sample):
            return None
        v = checked.vars.get(A.target_name(s.target))
        return v if v is not None and v.kind == "latent" and len(v.stmts) == 1 \
            and not v.is_family and not v.family_dims else None

    observed = {n: _data_reads(checked, n) for n, v in checked.vars.items()
                if v.kind == "observed"}
    moved = True
    while moved:
        moved = False
        defined = {n for n, v in checked.vars.items() if v.kind == "arg"}
        for i, a in enumerate(body):
            va = single_latent(a)
            if va is not None:
                for j in range(i + 1, len(body)):
                    vb = single_latent(body[j])
                    if vb is None or _size(vb) > _size(va):
                        continue
                    if not (vb.reads | vb.control) <= defined:
                        continue
                    shared = [o for o, r in observed.items() if va.name in r and vb.name in r]
                    if not shared:
                        continue
                    if _size(vb) == _size(va) and not _scale_of(checked, vb.name, va.name, shared):
                        continue
                    body.insert(i, body.pop(j))
                    moved = True
                    break
            if moved:
                break
            defined |= _defines(checked, a)
    body = _early(checked, body)
    rank = {}
    for k, s in enumerate(body):
        for n in _defines(checked, s):
            rank.setdefault(n, k)
    names = sorted(checked.order, key=lambda n: (rank.get(n, -1), checked.order.index(n)))
    return body, names


def _scale_of(checked, b: str, a: str, shared) -> bool:
    """Whether latent ``b`` is what makes the observations ``shared`` with ``a`` other
    than Gaussian in ``a``: each of them that is Gaussian in ``a`` (its location
    affine in it), none Gaussian in ``b`` (``sigma`` of ``y ~ Normal(a + b * x,
    sigma)``). Proposed first, ``b`` leaves ``a`` its exact Gaussian conditional; after
    ``a``, ``a``'s proposal must be the marginal over ``b``, a scale mixture with
    tails no Gaussian fit has (a Student-t of few degrees of freedom with few data).
    Not where the observations read a discrete latent (a mixture's allocations)."""
    if any(checked.vars[r].discrete and checked.vars[r].kind == "latent"
           for o in shared for r in _data_reads(checked, o)):
        return False        # a mixture's allocations: its locations tell the components
                            # apart first (proposals.site_proposal._told_apart)
    return any(gaussian_in(checked, a, o) for o in shared) and \
        not any(gaussian_in(checked, b, o) for o in shared)


def _early(checked, body) -> List[A.Stmt]:
    """``body`` with each top-level statement that defines only deterministic values
    (each of one statement, not a family produced in order: ``real[N] mu = X @ beta``,
    or a loop of ``mu[n] = ...``) moved up to just after the last statement defining
    what they read: a value is computed as soon as it can be, so an observation that
    reads it (``y ~ Normal(mu, sigma)``) informs the sites proposed after its inputs
    (``sigma``) rather than waiting for the value's place in the program."""
    out = []
    for s in body:
        defs = _defines(checked, s)
        vs = [checked.vars[n] for n in defs]
        if not vs or any(v.kind != "deterministic" or len(v.stmts) != 1 or v.is_family
                         for v in vs):
            out.append(s)
            continue
        reads = set().union(*(v.reads | v.control for v in vs)) - defs
        at = max([k + 1 for k, t in enumerate(out) if _defines(checked, t) & reads], default=0)
        out.insert(at, s)
    return out


def _defines(checked, s) -> set:
    """The variables statement s (with everything nested in it) defines."""
    out = set()
    for st, _, _ in _walk(checked, [s], [], []):
        if isinstance(st, (A.Sample, A.Assign)):
            out.add(A.target_name(st.target))
    return out


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
