"""Keyword arguments: ``Normal(loc=0.0, scale=1.0)``, ``Bernoulli(logits=x)``. Before
anything else reads the program, every call with keywords is rewritten to positional
arguments in its parameters' order, and the parameterisation the keywords name is
picked (``Bernoulli(logits=x)`` becomes the catalogue entry ``Bernoulli(logits)``).
What cannot be resolved is reported, located, with the parameters that exist.

A probability written through its link function picks the logits parameterisation
too: ``Bernoulli(sigmoid(x))`` is ``Bernoulli(logits=x)``, ``Binomial(n, sigmoid(x))``
``Binomial(n, logits=x)`` and ``Categorical(softmax(x))`` ``Categorical(logits=x)`` --
the same distribution, without the rounding of a saturated sigmoid to exactly 0 or 1
(a data point of probability zero where it has a tiny one) and with a log density
whose derivatives do not go through 1 / p (what the informed proposals compute)."""
from __future__ import annotations

import dataclasses
from typing import Callable, List

from ..catalogue.distributions import DISTRIBUTIONS, NAMES, mixture_of, variants
from . import ast as A
from .scopes import close_match


def resolve_calls(program: A.Program, error: Callable) -> None:
    """Rewrite, in place, every call of ``program`` that has keyword arguments."""
    stack: List[object] = [program]
    while stack:
        node = stack.pop()
        if isinstance(node, A.Dist) and node.call.func == "Mixture":
            _mixture(node.call, error)
        if isinstance(node, A.Call) and any(isinstance(a, A.Keyword) for a in node.args):
            _resolve(node, error)
        if isinstance(node, A.Call) and not getattr(node, "unresolved", False):
            _through_link(node)
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, tuple):
            stack.extend(node)
        elif dataclasses.is_dataclass(node) and not isinstance(node, type):
            for f in dataclasses.fields(node):
                if f.name != "span" and not f.name.endswith("_span"):
                    stack.append(getattr(node, f.name))


def _resolve(call: A.Call, error) -> None:
    positional, keywords = [], []
    for a in call.args:
        if isinstance(a, A.Keyword):
            keywords.append(a)
        elif keywords:
            error(a.span, f"a positional argument cannot follow a keyword argument in "
                  f"{call.func}(...)")
            _failed(call, [k.value if isinstance(k, A.Keyword) else k for k in call.args])
            return
        else:
            positional.append(a)
    if call.func not in NAMES:
        error(keywords[0].name_span, f"'{call.func}' takes positional arguments only; "
              f"write {call.func}({', '.join('...' for _ in call.args)})")
        _failed(call, positional + [k.value for k in keywords])
        return
    seen = set()
    for k in keywords:
        if k.name in seen:
            error(k.name_span, f"'{k.name}' is given twice in {call.func}(...)")
            _failed(call, positional + [k.value for k in keywords])
            return
        seen.add(k.name)
    options = variants(call.func)
    fits = []
    for spec in options:
        names = [p.name for p in spec.params]
        if len(positional) > len(names):
            continue
        free = names[len(positional):]
        if all(k.name in free for k in keywords):
            fits.append(spec)
    if not fits:
        every = sorted({p.name for s in options for p in s.params})
        bad = next((k for k in keywords if k.name not in every), None)
        forms = " or ".join(f"{call.func}({', '.join(p.name for p in s.params)})"
                            for s in options)
        if bad is not None:
            error(bad.name_span, f"{call.func} has no parameter '{bad.name}'"
                  f"{close_match(bad.name, every)}; it is {forms}")
        else:
            error(keywords[0].name_span, f"these arguments do not fit {forms}: a keyword "
                  "names a parameter already given by position, or two parameterisations "
                  "are mixed")
        _failed(call, positional + [k.value for k in keywords])
        return
    spec = fits[0]
    by_name = {k.name: k.value for k in keywords}
    names = [p.name for p in spec.params]
    missing = [n for n in names[len(positional):] if n not in by_name]
    if missing:
        error(call.span, f"{call.func}({', '.join(names)}) is missing "
              f"{', '.join(missing)}")
        _failed(call, positional + [k.value for k in keywords])
        return
    call.func = spec.key
    call.args = positional + [by_name[n] for n in names[len(positional):]]


LINKS = {"real": "sigmoid", "vector": "softmax"}    # a logits parameter's kind: its link


def _through_link(call: A.Call) -> None:
    """``Bernoulli(sigmoid(x))`` becomes ``Bernoulli(logits)`` with argument x (and the
    like: see the module's doc)."""
    if call.func not in NAMES:
        return
    base = DISTRIBUTIONS.get(call.func)
    other = DISTRIBUTIONS.get(f"{call.func}(logits)")
    if base is None or other is None or len(call.args) != len(base.params):
        return
    for k, (p, q) in enumerate(zip(base.params, other.params)):
        if p.name == q.name:
            continue
        a = call.args[k]
        if isinstance(a, A.Call) and a.func == LINKS.get(q.kind) and len(a.args) == 1 \
                and not isinstance(a.args[0], A.Keyword):
            call.func = other.key
            call.args = call.args[:k] + [a.args[0]] + call.args[k + 1:]
        return


def _failed(call: A.Call, args) -> None:
    """Reported already: the checker reads the arguments but reports nothing more."""
    call.args = args
    call.unresolved = True


def _mixture(call: A.Call, error) -> None:
    """``Mixture(weights, Component(params...))`` becomes the catalogue entry
    ``Mixture(Component)`` with arguments ``weights, params...``."""
    usage = ("write Mixture(weights, Component(params...)), e.g. "
             "Mixture([0.3, 0.7], Normal(mu, sigma)) with mu and sigma vectors of 2")
    if len(call.args) != 2 or any(isinstance(a, A.Keyword) for a in call.args):
        error(call.span, f"Mixture takes 2 arguments: {usage}")
        _failed(call, [a.value if isinstance(a, A.Keyword) else a for a in call.args])
        return
    w, comp = call.args
    if not isinstance(comp, A.Call) or comp.func not in NAMES or comp.func == "Mixture":
        error(comp.span, f"the second argument of Mixture must be a distribution; {usage}")
        _failed(call, [w])
        return
    if any(isinstance(a, A.Keyword) for a in comp.args):
        _resolve(comp, error)
        if getattr(comp, "unresolved", False):
            _failed(call, [w] + comp.args)
            return
    spec = mixture_of(comp.func)
    if spec is None:
        mixable = [n for n in NAMES if n != "Mixture" and mixture_of(n) is not None]
        error(comp.func_span, f"{DISTRIBUTIONS[comp.func].name} cannot be a mixture "
              f"component (a multivariate distribution, or one whose support depends on "
              f"its parameters); components can be {', '.join(mixable)}")
        _failed(call, [w] + comp.args)
        return
    if len(comp.args) != len(spec.params) - 1:
        names = ", ".join(p.name for p in spec.params[1:])
        error(comp.span, f"{comp.func} takes {len(spec.params) - 1} argument(s) ({names}), "
              f"got {len(comp.args)}")
        _failed(call, [w] + comp.args)
        return
    call.func = spec.key
    call.args = [w] + comp.args
