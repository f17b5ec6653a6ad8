"""Which likelihoods are exactly Gaussian in a latent: a static reading of the checked
program, made once per site.

The informed proposal of a continuous site (:mod:`..proposals.families.continuous`)
locates itself by Newton steps on log prior + the log density of the observations it
informs from. Where every one of those observations is ``Normal(loc, scale)`` (or a
``MultivariateNormal``) whose location is an affine function of the site and whose
scale does not read it, and the site lives on the real line, that log density is a
quadratic in the site's value: one Newton step is then its exact Laplace location, and
the second pass over the observations (which would only confirm it) is saved. That is
the linear-Gaussian part of a model: regression coefficients given the noise scale,
the group means of a hierarchical model, a latent mean seen through noisy measurements.

``degree(expr, name)`` is the polynomial degree of an expression in ``name`` as far as
this reading can tell: 0 (does not read it), 1 (affine in it), or None (anything else,
or not known to be affine).
"""
from __future__ import annotations

from typing import Optional

from torch.distributions import constraints

from ..frontend import ast as A
from ..frontend.checked import Checked

# functions linear in every argument (sum, mean, ...) or in one argument when the others
# are constant (dot)
LINEAR = {"sum", "mean", "cumsum", "transpose", "diag"}
BILINEAR = {"dot"}
# distributions whose log density is a quadratic in the location when the other
# parameters are fixed, with the location's parameter position
GAUSSIAN = {"Normal": 0, "MultivariateNormal": 0}


def degree(e: A.Expr, name, defs=None) -> Optional[int]:
    """``name``: one variable, or a set of them (the degree jointly in all: a product of
    two of them is not affine). ``defs``: deterministic values read through their
    definitions, name -> its value expression (``mu`` of ``mu = X @ beta``, or of
    ``mu[n] = a + b * x[n]`` read as ``mu[n]``)."""
    if isinstance(e, (A.Num, A.Bool, A.Whole)):
        return 0
    if isinstance(e, A.Name):
        if defs and e.id in defs:
            return degree(defs[e.id], name, defs)
        return 1 if (e.id == name if isinstance(name, str) else e.id in name) else 0
    if isinstance(e, A.Keyword):
        return degree(e.value, name, defs)
    if isinstance(e, A.Unary):
        d = degree(e.operand, name, defs)
        return d if e.op == "-" else (0 if d == 0 else None)
    if isinstance(e, A.Binary):
        a, b = degree(e.left, name, defs), degree(e.right, name, defs)
        if a is None or b is None:
            return None
        if e.op in ("+", "-"):
            return max(a, b)
        if e.op in ("*", "@"):
            return a + b if a + b <= 1 else None
        if e.op == "/":
            return a if b == 0 else None
        return 0 if a == b == 0 else None            # ^, comparisons, logic
    if isinstance(e, A.Cond):
        if degree(e.test, name, defs) != 0:
            return None
        a, b = degree(e.then, name, defs), degree(e.orelse, name, defs)
        return None if a is None or b is None else max(a, b)
    if isinstance(e, A.Index):
        if any(degree(i, name, defs) != 0 for i in e.indices):
            return None
        return degree(e.base, name, defs)
    if isinstance(e, A.Vector):
        ds = [degree(i, name, defs) for i in e.items]
        return None if any(d is None for d in ds) else max(ds, default=0)
    if isinstance(e, A.Call):
        ds = [degree(a, name, defs) for a in e.args]
        if any(d is None for d in ds):
            return None
        if all(d == 0 for d in ds):
            return 0
        if e.func in LINEAR:
            return max(ds)
        if e.func in BILINEAR:
            return sum(ds) if sum(ds) <= 1 else None
        return None
    return None


# increasing functions of one argument: a link of an affine function keeps the
# likelihood's single mode (a GLM's) -- unlike x ^ 2 or abs(x), whose sign symmetry
# makes a posterior with mirrored modes that one Gaussian fit cannot locate
MONOTONE = {"exp", "log", "log1p", "expm1", "sqrt", "tanh", "sigmoid", "logit", "softplus"}


def monotone(e: A.Expr, name, defs=None) -> bool:
    """Whether ``e`` is affine in ``name`` (:func:`degree` at most 1), or an increasing
    function of one argument (``MONOTONE``) of such an expression, shifted or scaled by
    what does not read ``name``."""
    d = degree(e, name, defs)
    if d is not None:
        return True
    if isinstance(e, A.Name) and defs and e.id in defs:
        return monotone(defs[e.id], name, defs)
    if isinstance(e, A.Index) and all(degree(i, name, defs) == 0 for i in e.indices):
        return monotone(e.base, name, defs)
    if isinstance(e, A.Unary) and e.op == "-":
        return monotone(e.operand, name, defs)
    if isinstance(e, A.Call) and e.func in MONOTONE and len(e.args) == 1:
        return monotone(e.args[0], name, defs)
    if isinstance(e, A.Binary) and e.op in ("+", "-", "*", "/"):
        a, b = degree(e.left, name, defs), degree(e.right, name, defs)
        if b == 0:
            return monotone(e.left, name, defs)
        if a == 0 and e.op != "/":
            return monotone(e.right, name, defs)
    return False


def gaussian_in(checked: Checked, site, observed: str) -> bool:
    """Whether the log density of observed statement ``observed`` is a quadratic in the
    value of ``site`` (a name, or a set of names: jointly in them): a Gaussian without
    truncation whose location is affine in the site, whose other parameters and whose
    guards do not read it."""
    v = checked.vars[observed]
    names = {site} if isinstance(site, str) else set(site)
    if len(v.stmts) != 1 or not isinstance(v.stmts[0], A.Sample) or names & v.control:
        return False
    return gaussian_stmt(v.stmts[0], site, definitions(checked))


def definitions(checked: Checked) -> dict:
    """The deterministic values of one assignment (not produced in order), read through
    their definitions by :func:`degree`: name -> value expression."""
    return {n: v.stmts[0].value for n, v in checked.vars.items()
            if v.kind == "deterministic" and len(v.stmts) == 1 and not v.is_family
            and isinstance(v.stmts[0], A.Assign)}


def gaussian_stmt(s: A.Sample, site, defs=None) -> bool:
    """Whether sample statement ``s``'s log density is a quadratic in ``site`` (as
    :func:`gaussian_in`, its guards left to the caller)."""
    loc = GAUSSIAN.get(s.dist.call.func)
    if loc is None or s.dist.trunc is not None:
        return False
    for k, a in enumerate(s.dist.call.args):
        d = degree(a, site, defs)
        if d is None or (k != loc and d != 0):
            return False
    return True


def quadratic_likelihood(checked: Checked, site: str, observed) -> bool:
    """Whether the local log-likelihood of latent ``site`` from the statements
    ``observed`` is a quadratic in its unconstrained value: the site is real (the
    identity is its unconstrained map) and every statement is :func:`gaussian_in` it."""
    if not observed or not on_the_line(checked, site):
        return False
    return all(gaussian_in(checked, site, o) for o in observed)


def on_the_line(checked: Checked, name: str) -> bool:
    """A latent whose value is its unconstrained value (real, not ordered)."""
    v = checked.vars[name]
    return not v.ordered and v.support in (constraints.real, constraints.real_vector)


def quadratic_block(checked: Checked, names, observed) -> list:
    """The latents among ``names`` in which the log density of the statements
    ``observed`` is jointly a quadratic (each real, and every statement
    :func:`gaussian_in` all of them together: regression coefficients given the noise
    scale); empty where the whole set of such candidates is not."""
    cand = [n for n in names if on_the_line(checked, n)
            and all(gaussian_in(checked, n, o) for o in observed)]
    if cand and all(gaussian_in(checked, frozenset(cand), o) for o in observed):
        return cand
    return []
