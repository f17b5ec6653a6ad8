"""Facts about supports (``torch.distributions.constraints`` objects) in one place: the
words a modeller reads, and the static value range the checker reasons with."""
from __future__ import annotations

import math
from typing import Tuple

from torch.distributions import constraints

INF = math.inf


def is_dependent(sup) -> bool:
    """A support that depends on other variables (each trace has its own)."""
    return isinstance(sup, type(constraints.dependent))


def value_range(sup) -> Tuple[float, float]:
    """The closed hull [lo, hi] of a univariate support (infinite where unbounded)."""
    if sup is None or is_dependent(sup):
        return (-INF, INF)
    if sup in (constraints.nonnegative_integer, constraints.nonnegative):
        return (0.0, INF)
    if sup is constraints.positive:
        return (0.0, INF)
    if sup in (constraints.boolean, constraints.unit_interval, constraints.simplex):
        return (0.0, 1.0)
    lo = getattr(sup, "lower_bound", -INF)
    hi = getattr(sup, "upper_bound", INF)
    try:
        return (float(lo), float(hi))
    except (TypeError, ValueError, RuntimeError):   # bounds that are tensors
        return (-INF, INF)


def int_range(sup):
    """(lo, hi) of a bounded integer support, else None (used for loop trip counts and
    indices)."""
    if sup is constraints.boolean:
        return (0, 1)
    if isinstance(sup, constraints.integer_interval):
        return (int(sup.lower_bound), int(sup.upper_bound))
    return None


def describe(sup) -> str:
    """A support in a modeller's words."""
    if is_dependent(sup):
        return "bounds that depend on other variables"
    if sup is constraints.positive:
        return "positive reals"
    if sup is constraints.nonnegative_integer:
        return "non-negative integers"
    if sup is constraints.boolean:
        return "0 or 1"
    if sup is constraints.unit_interval:
        return "[0, 1]"
    if sup is constraints.simplex:
        return "the simplex: non-negative, summing to 1"
    if sup in (constraints.real, constraints.real_vector):
        return "real numbers"
    if isinstance(sup, constraints.integer_interval):
        return f"integers {sup.lower_bound}..{sup.upper_bound}"
    if hasattr(sup, "lower_bound") and hasattr(sup, "upper_bound"):
        return f"[{sup.lower_bound}, {sup.upper_bound}]"
    if hasattr(sup, "lower_bound"):
        return f"> {sup.lower_bound}"
    if hasattr(sup, "upper_bound"):
        return f"< {sup.upper_bound}"
    return str(sup)


def bracket(sup) -> str:
    """'[lo, hi]' with infinities as ∞ (for messages about bounds)."""
    lo, hi = value_range(sup)
    return f"[{lo}, {hi}]".replace("inf", "∞")
