"""The distribution catalogue: one entry per distribution owns everything the compiler
knows about it -- its parameters and their legal values, its value type, its support
(from what is known when compiling), its event shape, its constructor and the proposal
family that proposes it. The checker, the interpreter and the proposal network ask the
entry; none of them tests a distribution's name.

Adding a distribution is one ``DistSpec`` in ``DISTRIBUTIONS`` (plus its tests and its
line in the language reference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Tuple

import pyro.distributions as pdist
import torch
from torch.distributions import constraints


@dataclass(frozen=True)
class ParamKind:
    """What values a parameter may take. ``safe`` is a legal value that traces where the
    statement does not run use, so that a distribution is always constructible;
    ``vector_dims`` trailing dims belong to the distribution, not to the batch."""
    constraint: object
    safe: Optional[float]
    words: str
    vector_dims: int = 0


class _Integer(constraints.Constraint):
    is_discrete = True

    def check(self, value):
        return torch.isfinite(value) & (value == torch.round(value))


PARAM_KINDS = {
    "real": ParamKind(constraints.real, 0.0, "a finite number"),
    "positive": ParamKind(constraints.positive, 1.0, "positive and finite"),
    "probability": ParamKind(constraints.unit_interval, 0.5, "in [0, 1]"),
    "count": ParamKind(constraints.nonnegative_integer, 1.0, "a non-negative integer"),
    "integer": ParamKind(_Integer(), 0.0, "an integer"),
    "probs": ParamKind(constraints.simplex, None, "non-negative weights", 1),
    "concentration": ParamKind(constraints.positive, 1.0, "positive and finite", 1),
    "vector": ParamKind(constraints.real_vector, 0.0, "finite", 1),
    "covariance": ParamKind(constraints.positive_definite, None, "positive definite", 2),
    "cholesky": ParamKind(constraints.lower_cholesky, None,
                          "lower triangular with a positive diagonal", 2),
}
MATRIX_KINDS = ("covariance", "cholesky")     # checked as relations (``problems``)


@dataclass(frozen=True)
class Param:
    name: str
    kind: str                 # a key of PARAM_KINDS

    @property
    def vector_dims(self) -> int:
        return PARAM_KINDS[self.kind].vector_dims


class StaticArgs(Protocol):
    """What the checker knows about a call's arguments when compiling."""

    def const(self, i: int): ...               # the value, or None
    def shape(self, i: int) -> Tuple[int, ...]: ...
    def int_range(self, i: int): ...           # (lo, hi) of an integer argument, or None


class _Tensors:
    """Parameter tensors seen as StaticArgs (what ``event_of`` reads at run time)."""

    def __init__(self, params):
        self.params = params

    def const(self, i):
        return float(self.params[i].reshape(-1)[0])


def _square_of(i):
    """The event (n, n) of a size argument n (argument i)."""
    def event(args):
        n = args.const(i)
        if n is None or isinstance(n, bool) or float(n) != int(n) or int(n) < 1:
            return None
        return (int(n), int(n))
    return event


def _lkj_cholesky(dim, concentration):
    return pdist.LKJCholesky(int(dim.reshape(-1)[0]), concentration, validate_args=False)


def _real(args) -> object:
    return constraints.real


@dataclass(frozen=True)
class DistSpec:
    name: str
    params: Tuple[Param, ...]
    make: Callable                          # parameters (tensors) -> a torch distribution
    value_type: str = "real"                # real | int | bool
    proposal: str = "continuous"            # the proposal family (proposals/families/)
    support: Callable = _real               # StaticArgs -> constraint
    event_param: Optional[int] = None       # the parameter whose last dim is the event
    truncatable: bool = False
    variant: str = ""                       # another parameterisation: "logits"
    # an event shape set by a size argument (LKJCholesky(dim, ...)): StaticArgs ->
    # the shape, or None where the size is not known when compiling
    event_of: Optional[Callable] = None

    @property
    def key(self) -> str:
        """Its key in DISTRIBUTIONS: the name, or ``Name(variant)``, which no spec can
        spell (the checker rewrites ``Bernoulli(logits=x)`` to it)."""
        return f"{self.name}({self.variant})" if self.variant else self.name

    @property
    def discrete(self) -> bool:
        return self.value_type != "real"

    @property
    def arity(self) -> int:
        return len(self.params)

    def event_shape(self, params) -> Tuple[int, ...]:
        """The event shape of a distribution built from these parameter tensors."""
        if self.event_of is not None:
            return self.event_of(_Tensors(params))
        if self.event_param is None:
            return ()
        return tuple(params[self.event_param].shape[-1:])

    def build(self, params):
        """The torch distribution (no argument validation: the interpreter checks the
        parameters itself and names the statement)."""
        return self.make(*params)


def _torch(name, **fixed):
    cls = getattr(pdist, name)
    return lambda *p: cls(*p, validate_args=False, **fixed)


def _const_support(c):
    return lambda args: c


def _uniform_support(args):
    lo, hi = args.const(0), args.const(1)
    if lo is not None and hi is not None:
        return constraints.interval(lo, hi)
    return constraints.dependent      # bounds that are other variables: per trace


def _categorical_support(args):
    return constraints.integer_interval(0, args.shape(0)[-1] - 1)


def _binomial_support(args, i=0):
    r = args.int_range(i)
    return constraints.integer_interval(0, int(r[1])) if r else constraints.nonnegative_integer


def _discrete_uniform_support(args):
    lo, hi = args.int_range(0), args.int_range(1)
    if lo is not None and hi is not None:
        return constraints.integer_interval(int(lo[0]), int(hi[1]))
    return constraints.integer_interval(-2 ** 62, 2 ** 62)


def _discrete_uniform(lo, hi):
    """Every integer in [low, high] equally likely: a Categorical over high - low + 1
    values, shifted. Its number of values must be known when compiling."""
    return _Shifted(lo, hi)


class Categorical(pdist.Categorical):
    """Pyro's Categorical, drawn by inverting its CDF: one uniform per draw and a
    comparison with the cumulative probabilities, several times faster than
    ``torch.multinomial`` for the many small categoricals of a plate (a mixture's
    allocations). Exact: value j comes out with probability p_j, and a value of
    probability zero never does (the search is for the first cumulative sum above u, and
    a rounding overshoot falls back to the last value of positive probability)."""

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            p = self.probs.expand(shape + self.probs.shape[-1:])
            cdf = p.cumsum(-1)
            u = torch.rand(shape + (1,), dtype=cdf.dtype, device=cdf.device) * cdf[..., -1:]
            j = (cdf <= u).sum(-1)
            k = p.shape[-1]
            over = j == k                   # u rounded up to the total (rare)
            if bool(over.any()):
                last = torch.where(p > 0, torch.arange(k, device=p.device), 0).amax(-1)
                j = torch.where(over, last, j)
            return j


# torch's Poisson sampler is exact up to rates of about 1e18 and returns garbage beyond
# (negative counts near -2**63). There a Poisson is a normal of variance ``rate`` to far
# better than any float's precision (its skewness is rate**-0.5 < 1e-7).
_POISSON_EXACT = 1e15


def poisson_draw(rate: torch.Tensor) -> torch.Tensor:
    """Poisson counts of ``rate`` (any shape): torch's exact sampler up to
    ``_POISSON_EXACT``, the rounded normal beyond, so that a far-tail rate a heavy prior
    reaches (the pumps model's Gamma(alpha, beta) with beta ~ Gamma(0.1, 1)) gives a
    count in the support rather than a trace dropped as a sampler's failure. No
    synchronisation: both are drawn and one is kept per element."""
    big = rate > _POISSON_EXACT
    exact = torch.poisson(torch.where(big, torch.zeros_like(rate), rate))
    normal = (rate + rate.sqrt() * torch.randn_like(rate)).round().clamp(min=0)
    return torch.where(big, normal, exact)


class Poisson(pdist.Poisson):
    """Pyro's Poisson, drawn by :func:`poisson_draw` (right at every finite rate)."""

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return poisson_draw(self.rate.expand(self._extended_shape(sample_shape)))


class NegativeBinomial(pdist.NegativeBinomial):
    """Pyro's NegativeBinomial (a gamma mixture of Poissons), its Poisson drawn by
    :func:`poisson_draw`."""

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return poisson_draw(self._gamma.sample(sample_shape=sample_shape))


class _Shifted(pdist.TorchDistribution):
    arg_constraints = {}
    has_enumerate_support = True

    def __init__(self, lo, hi, validate_args=False):
        self.lo, self.hi = torch.broadcast_tensors(lo, hi)
        super().__init__(self.lo.shape, torch.Size(), validate_args=False)

    @constraints.dependent_property
    def support(self):
        return constraints.integer_interval(self.lo, self.hi)

    def sample(self, sample_shape=torch.Size()):
        u = torch.rand(torch.Size(sample_shape) + self.lo.shape)
        return (self.lo + torch.floor(u * (self.hi - self.lo + 1))).clamp(max=self.hi)

    def log_prob(self, value):
        n = self.hi - self.lo + 1
        ok = (value >= self.lo) & (value <= self.hi) & (value == torch.round(value))
        return torch.where(ok, -torch.log(n.to(torch.get_default_dtype())),
                           torch.full_like(n, -float("inf"), dtype=torch.get_default_dtype()))

    @property
    def mean(self):
        return (self.lo + self.hi) / 2.0

    @property
    def variance(self):
        n = (self.hi - self.lo + 1).to(torch.get_default_dtype())
        return (n * n - 1) / 12.0


class _Multinomial(pdist.TorchDistribution):
    """Multinomial(total_count, probs) with a total count per batch element (torch's
    takes one number for the whole batch): sampled as a chain of Binomials, each count
    given those before."""
    arg_constraints = {}
    support = constraints.nonnegative_integer

    def __init__(self, total_count, probs, validate_args=False):
        probs = probs / probs.sum(-1, keepdim=True)
        batch = torch.broadcast_shapes(torch.as_tensor(total_count).shape, probs.shape[:-1])
        self.probs = probs.expand(batch + probs.shape[-1:])
        self.total_count = torch.as_tensor(total_count, dtype=probs.dtype).expand(batch)
        super().__init__(batch, probs.shape[-1:], validate_args=False)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        p = self.probs.expand(shape + self.event_shape)
        left = self.total_count.expand(shape).clone()
        rest = torch.ones(shape, dtype=p.dtype)
        out = []
        with torch.no_grad():
            for k in range(p.shape[-1] - 1):
                q = (p[..., k] / rest.clamp(min=1e-30)).clamp(0.0, 1.0)
                x = torch.distributions.Binomial(left, q, validate_args=False).sample()
                out.append(x)
                left = left - x
                rest = rest - p[..., k]
            out.append(left)
        return torch.stack(out, -1)

    def log_prob(self, value):
        x = value.to(self.probs.dtype)
        n = x.sum(-1)
        logp = torch.where(x > 0, x * torch.log(self.probs), torch.zeros_like(x)).sum(-1)
        lp = torch.lgamma(n + 1) - torch.lgamma(x + 1).sum(-1) + logp
        ok = (x >= 0).all(-1) & (x == torch.round(x)).all(-1) & (n == self.total_count)
        return torch.where(ok, lp, torch.full_like(lp, -float("inf")))

    @property
    def mean(self):
        return self.total_count.unsqueeze(-1) * self.probs

    @property
    def variance(self):
        return self.total_count.unsqueeze(-1) * self.probs * (1 - self.probs)


def _spec(name, params, make=None, **kw):
    return DistSpec(name, tuple(Param(n, k) for n, k in params), make or _torch(name), **kw)


_POSITIVE = _const_support(constraints.positive)
_UNIT = _const_support(constraints.unit_interval)
_NONNEG_INT = _const_support(constraints.nonnegative_integer)
MIXABLE_SUPPORTS = (_real, _POSITIVE, _UNIT, _NONNEG_INT)
_COUNT = dict(value_type="int", proposal="count", support=_NONNEG_INT)

DISTRIBUTIONS = {d.key: d for d in [
    _spec("Normal", [("loc", "real"), ("scale", "positive")], truncatable=True),
    _spec("HalfNormal", [("scale", "positive")], truncatable=True, support=_POSITIVE),
    _spec("LogNormal", [("loc", "real"), ("scale", "positive")], truncatable=True,
          support=_POSITIVE),
    _spec("StudentT", [("df", "positive"), ("loc", "real"), ("scale", "positive")]),
    _spec("Cauchy", [("loc", "real"), ("scale", "positive")], truncatable=True),
    _spec("HalfCauchy", [("scale", "positive")], truncatable=True, support=_POSITIVE),
    _spec("Laplace", [("loc", "real"), ("scale", "positive")], truncatable=True),
    _spec("Gumbel", [("loc", "real"), ("scale", "positive")], truncatable=True),
    _spec("Gamma", [("concentration", "positive"), ("rate", "positive")], truncatable=True,
          support=_POSITIVE),
    _spec("InverseGamma", [("concentration", "positive"), ("rate", "positive")],
          truncatable=True, support=_POSITIVE),
    _spec("Exponential", [("rate", "positive")], truncatable=True, support=_POSITIVE),
    _spec("Beta", [("concentration1", "positive"), ("concentration0", "positive")],
          support=_UNIT),
    _spec("Uniform", [("low", "real"), ("high", "real")], truncatable=True,
          support=_uniform_support),
    _spec("Chi2", [("df", "positive")], truncatable=True, support=_POSITIVE),
    _spec("Weibull", [("scale", "positive"), ("concentration", "positive")],
          truncatable=True, support=_POSITIVE),
    _spec("Bernoulli", [("probs", "probability")], value_type="bool", proposal="finite",
          make=lambda p: pdist.Bernoulli(probs=p, validate_args=False),
          support=_const_support(constraints.boolean)),
    _spec("Binomial", [("total_count", "count"), ("probs", "probability")],
          value_type="int", proposal="finite", support=_binomial_support,
          make=lambda n, p: pdist.Binomial(total_count=n, probs=p, validate_args=False)),
    _spec("Categorical", [("probs", "probs")], value_type="int", proposal="finite",
          support=_categorical_support,
          make=lambda p: Categorical(probs=p, validate_args=False)),
    _spec("Poisson", [("rate", "positive")], **_COUNT,
          make=lambda r: Poisson(r, validate_args=False)),
    _spec("Geometric", [("probs", "probability")], **_COUNT,
          make=lambda p: pdist.Geometric(probs=p, validate_args=False)),
    _spec("NegativeBinomial", [("total_count", "positive"), ("probs", "probability")],
          **_COUNT, make=lambda n, p: NegativeBinomial(total_count=n, probs=p,
                                                       validate_args=False)),
    _spec("Dirichlet", [("concentration", "concentration")], event_param=0,
          support=_const_support(constraints.simplex)),
    _spec("MultivariateNormal", [("loc", "vector"), ("covariance_matrix", "covariance")],
          event_param=0, support=_const_support(constraints.real_vector),
          make=lambda m, c: pdist.MultivariateNormal(m, covariance_matrix=c,
                                                     validate_args=False)),
    _spec("DiscreteUniform", [("low", "integer"), ("high", "integer")], value_type="int",
          proposal="finite", support=_discrete_uniform_support, make=_discrete_uniform),
    _spec("BetaBinomial", [("concentration1", "positive"), ("concentration0", "positive"),
                           ("total_count", "count")], value_type="int", proposal="finite",
          support=lambda args: _binomial_support(args, 2),
          make=lambda a, b, n: pdist.BetaBinomial(a, b, total_count=n, validate_args=False)),
    _spec("LKJCholesky", [("dim", "count"), ("concentration", "positive")],
          support=_const_support(constraints.corr_cholesky), event_of=_square_of(0),
          make=_lkj_cholesky),
    _spec("Multinomial", [("total_count", "count"), ("probs", "probs")], value_type="int",
          proposal="multinomial", event_param=1, support=_NONNEG_INT, make=_Multinomial),
    # other parameterisations (keyword arguments pick them: Bernoulli(logits=x))
    _spec("MultivariateNormal", [("loc", "vector"), ("scale_tril", "cholesky")],
          event_param=0, support=_const_support(constraints.real_vector),
          variant="scale_tril",
          make=lambda m, L: pdist.MultivariateNormal(m, scale_tril=L, validate_args=False)),
    _spec("Bernoulli", [("logits", "real")], value_type="bool", proposal="finite",
          make=lambda l: pdist.Bernoulli(logits=l, validate_args=False),
          support=_const_support(constraints.boolean), variant="logits"),
    _spec("Binomial", [("total_count", "count"), ("logits", "real")],
          value_type="int", proposal="finite", support=_binomial_support, variant="logits",
          make=lambda n, l: pdist.Binomial(total_count=n, logits=l, validate_args=False)),
    _spec("Categorical", [("logits", "vector")], value_type="int", proposal="finite",
          support=_categorical_support, variant="logits",
          make=lambda l: Categorical(logits=l, validate_args=False)),
]}
NAMES = sorted({d.name for d in DISTRIBUTIONS.values()} | {"Mixture"})   # what a spec writes

# a mixture's component parameters carry one more (last) dim: one value per component
for _k, _pk in list(PARAM_KINDS.items()):
    if _pk.vector_dims == 0:
        PARAM_KINDS[_k + "[]"] = ParamKind(_pk.constraint, _pk.safe, _pk.words, 1)


def mixture_of(component: str) -> Optional["DistSpec"]:
    """``Mixture(weights, Component(params...))`` (Pyro's MixtureSameFamily): the
    catalogue entry ``Mixture(Component)``, made on first use; None for a component that
    cannot be mixed (a multivariate one, or one whose support depends on its
    parameters)."""
    key = f"Mixture({component})"
    if key in DISTRIBUTIONS:
        return DISTRIBUTIONS[key]
    comp = DISTRIBUTIONS.get(component)
    if comp is None or comp.event_param is not None or comp.event_of is not None or \
            comp.variant or \
            comp.support not in MIXABLE_SUPPORTS:
        return None

    def make(w, *ps):
        return pdist.MixtureSameFamily(Categorical(probs=w, validate_args=False),
                                       comp.make(*ps), validate_args=False)
    spec = DistSpec("Mixture", (Param("weights", "probs"),) + tuple(
        Param(p.name, p.kind + "[]") for p in comp.params), make, value_type=comp.value_type,
        proposal=comp.proposal, support=comp.support, variant=component)
    DISTRIBUTIONS[key] = spec
    return spec


def variants(name: str):
    """Every parameterisation of the distribution ``name``."""
    return [d for d in DISTRIBUTIONS.values() if d.name == name]


def problems(spec: "DistSpec", params, sums: bool = True) -> list:
    """What is wrong with a distribution's parameter values, beyond each one's kind: a
    list of (mask of bad batch elements, message). Probabilities that do not sum to one
    (more than rounding), a covariance that is not positive definite, a Uniform whose
    low is not below its high."""
    out = []
    for p, t in zip(spec.params, params):
        if p.kind == "probs" and sums:
            total = t.sum(-1)
            bad = (total - 1).abs() > 1e-5 * total.abs().clamp(min=1)
            out.append((bad, f"the {p.name} of {spec.name} must sum to 1, "
                             f"they sum to {float(total[bad].reshape(-1)[0]) if bool(bad.any()) else 1:g}"))
        elif p.kind == "covariance":
            sym = (t - t.transpose(-1, -2)).abs().amax((-1, -2)) <= 1e-6 * t.abs().amax((-1, -2)).clamp(min=1)
            bad = ~sym | (torch.linalg.cholesky_ex(t.double())[1] != 0)
            out.append((bad, f"the {p.name} of {spec.name} must be symmetric positive definite"))
        elif p.kind == "cholesky":
            upper = torch.triu(t, diagonal=1).abs().amax((-1, -2)) > 0
            diag = torch.diagonal(t, dim1=-2, dim2=-1)
            bad = upper | ~(diag > 0).all(-1) | ~torch.isfinite(t).all(-1).all(-1)
            out.append((bad, f"the {p.name} of {spec.name} must be lower triangular with a "
                             "positive diagonal (a Cholesky factor, e.g. diag(tau) @ L)"))
    if spec.name == "Uniform":
        lo, hi = params
        bad = ~(lo < hi)
        out.append((bad, "Uniform needs low < high"))
    return [(b, m) for b, m in out if bool(b.any())]


def check_values(kind: str, p: torch.Tensor) -> torch.Tensor:
    """Which elements of a parameter tensor are legal for ``kind`` (batch shape: the
    parameter's shape less its vector dims). Probability vectors are checked after
    normalisation (see ``normalise``)."""
    k = PARAM_KINDS[kind]
    if kind in MATRIX_KINDS:
        return torch.ones(p.shape[:-2], dtype=torch.bool)
    if kind == "probs":
        return (p >= 0).all(-1)
    if kind in ("real", "vector"):
        ok = torch.isfinite(p)
    else:
        ok = k.constraint.check(p)
        if kind in ("positive", "concentration"):
            ok = ok & torch.isfinite(p)      # an infinite scale or rate is no density
    return ok.all(-1) if k.vector_dims and ok.dim() == p.dim() else ok


def normalise(kind: str, p: torch.Tensor) -> torch.Tensor:
    """Probability weights are normalised to sum to one; other kinds pass through."""
    return p / p.sum(-1, keepdim=True) if kind == "probs" else p
