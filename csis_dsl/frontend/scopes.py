"""Scopes: the variables defined so far, the loops and branches around the statement
being checked, name lookup with suggestions, and the diagnostics collected on the way.

One ``Scope`` is shared by the checker's parts (constants, expression types,
definitions, the statement walk) for one program.
"""
from __future__ import annotations

import difflib
from typing import Dict, List, Optional, Set, Tuple

from ..catalogue.distributions import NAMES as DISTRIBUTIONS
from ..catalogue.functions import FUNCTIONS
from ..errors import Diagnostic, Span
from . import ast as A
from .checked import Loop, Var
from .types import INT, Type

def close_match(name: str, candidates) -> str:
    """'; did you mean 'x'?' for the nearest candidate, or ''."""
    m = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{m[0]}'?" if m else ""


class Scope:
    def __init__(self, program: A.Program):
        self.program = program
        self.diags: List[Diagnostic] = []
        self.vars: Dict[str, Var] = {}
        self.order: List[str] = []
        self.loops: Dict[A.For, Loop] = {}
        self.types: Dict[A.Expr, Type] = {}
        self.loop_stack: List[Loop] = []
        self.cond_stack: List[Set[str]] = []          # names read by enclosing if tests
        self.branch_path: List[Tuple[A.If, int]] = []  # (if statement, branch index)
        self.def_branch: Dict[str, List[Tuple[Tuple, A.Stmt]]] = {}
        self.current_target: Optional[str] = None     # the variable being defined
        self.max_depth = 0
        self._defined_later = None
        self.refused: Set[str] = set()     # names whose definition was an error already

    # ------------------------------------------------------------------ diagnostics
    def error(self, span, msg, notes=()):
        self.diags.append(Diagnostic(span, msg, notes=list(notes)))

    # ------------------------------------------------------------------ names
    def loop_var(self, name: str) -> Optional[Loop]:
        for loop in reversed(self.loop_stack):
            if loop.var == name:
                return loop
        return None

    def lookup(self, name: str, span: Span) -> Optional[Var]:
        """The variable ``name`` at this point, or None after reporting why not."""
        loop = self.loop_var(name)
        if loop is not None:
            return Var(name, "loopvar", INT, loop.span, bounds=(loop.lo, loop.lo + loop.size - 1))
        v = self.vars.get(name)
        if v is not None:
            return None if v.broken else v
        if name == self.current_target:
            hint = ""
            if self.loop_stack:
                l = self.loop_stack[-1]
                hint = (f"; for a recursion, define its first element before the loop "
                        f"({name}[{l.lo}] = ... or ~ ...) and run the loop from "
                        f"{l.lo + 1}, reading {name}[{l.var} - 1]")
            self.error(span, f"'{name}' depends on itself (a cycle): a variable cannot be "
                       f"read in its own definition{hint}")
            return None
        if name in self.refused:        # reported where it was defined
            return None
        if name in FUNCTIONS or name in DISTRIBUTIONS:
            what = "function" if name in FUNCTIONS else "distribution"
            self.error(span, f"'{name}' is a built-in {what}, not a variable: call it, "
                       f"{name}(...)")
            return None
        later = self.defined_later().get(name)
        if later is not None:
            self.error(span, f"'{name}' is used before it is defined",
                       [(later.span, f"'{name}' is defined here")])
            return None
        hint = close_match(name, list(self.vars) + [l.var for l in self.loop_stack])
        if not hint:
            hint = close_match(name, list(FUNCTIONS) + list(DISTRIBUTIONS))
        self.error(span, f"unknown name '{name}'{hint}")
        return None

    def defined_later(self) -> Dict[str, A.Stmt]:
        """The first statement defining each name anywhere in the program."""
        if self._defined_later is None:
            out = {}
            for s in A.walk_stmts(self.program.body):
                name = A.target_name(getattr(s, "target", None))
                if name is not None:
                    out.setdefault(name, s)
            self._defined_later = out
        return self._defined_later

    def check_name(self, name: str, span: Span) -> bool:
        if name.startswith("_"):
            self.error(span, f"names may not begin with '_' ('{name}'): those are "
                       "csis_dsl's own (its trace plate is '_traces'); choose another name")
            return False
        if name in FUNCTIONS or name in DISTRIBUTIONS:
            what = "function" if name in FUNCTIONS else "distribution"
            self.error(span, f"'{name}' is a built-in {what}; choose another name")
            self.refused.add(name)
            return False
        return True

    def define(self, v: Var):
        self.vars[v.name] = v
        self.order.append(v.name)

    def redefined(self, name, span):
        first = self.vars[name]
        self.error(span, f"'{name}' is defined twice",
                   [(first.span, f"'{name}' is first defined here")])

    # ------------------------------------------------------------------ dependence
    def reads(self, *exprs) -> Set[str]:
        """The variables (not loop variables) that these expressions read."""
        out = set()
        local = {l.var for l in self.loop_stack}
        for e in exprs:
            for sub in A.walk_expr(e):
                if isinstance(sub, A.Name) and sub.id in self.vars and sub.id not in local:
                    out.add(sub.id)
        return out

    def control_reads(self) -> Set[str]:
        """The variables that decide whether the current statement runs."""
        out = set()
        for c in self.cond_stack:
            out |= c
        for loop in self.loop_stack:
            out |= self.reads(loop.start, loop.stop)
        return out

    def arg_values(self):
        return {n: v.value for n, v in self.vars.items() if v.kind == "arg"}
