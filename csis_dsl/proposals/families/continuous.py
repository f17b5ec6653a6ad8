"""Continuous supports: a mixture of K Normals in unconstrained space, pushed through
``biject_to(support)`` so the proposal's support is exactly the prior's (real line,
(0, inf), [a, b], one-sided truncations, the simplex by stick breaking, increasing
vectors by cumulative exponentials, Cholesky factors of correlation matrices). Components are
located and scaled relative to the prior's own location and scale (in a family
produced in order, the prior given the elements before). Components have a full covariance
(:class:`TriangularNormal`) wherever the unconstrained value has at most
``NetworkConfig.full_covariance`` elements, and always for MultivariateNormal priors,
so that correlated elements of a vector (regression coefficients, a Gaussian's mean
and scale parameters) are proposed jointly; wider ones are diagonal."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import (Beta, Distribution, Independent, LogNormal,
                                 MixtureSameFamily, Normal, StudentT,
                                 TransformedDistribution, biject_to, constraints)
from torch.distributions.transforms import AffineTransform, Transform
from torch.distributions.transforms import (ComposeTransform, IndependentTransform,
                                            ReshapeTransform)

from ...catalogue.distributions import Categorical
from ...catalogue.supports import is_dependent
from ..standardise import squash
from ..lookahead import gaussian_messages
from .base import (_log1m, affine_match, linear, moments, OutputLayer, place, Proposal,
                   ProposalFamily)


BIG = 1e30      # no proposal draw is larger: far beyond any prior, still finite in float32
RESOLUTION = 16  # the narrowest component, in ulps of its location (MixtureHead)
WIDEN = 2.0     # the defensive component's scale, relative to the proposal's
TAIL_DF = 6.0   # its degrees of freedom: a Student-t, so that its tails are polynomial
                # (3 reached the label-switched mode of bench/real's coal HMM, with
                # large weights: sd ratios up to 2.25; 6 did not, and kept surgical's
                # and eight schools' gains)


def broadening(n: int):
    """The broad component of a site of ``n`` instances, per instance: (its scale
    relative to the proposal's, its degrees of freedom). One instance: WIDEN times wider
    and a Student-t of TAIL_DF degrees of freedom, whose polynomial tails cover a
    posterior's exponential or skewed tail (a hierarchical model's group scale, or its
    mean, whose marginal is a scale mixture). A site of n instances spreads that over
    them, WIDEN ** (1 / n) and TAIL_DF * n each: at the proposal's centre the whole
    site's broad density is below the proposal's by about log WIDEN, whatever n.
    Widening every instance by WIDEN costs 0.32 n nats on average (the Kullback-Leibler
    divergence), so a trace broadened in every instance of a plate had almost no
    density where the posterior is and bounded nothing: a draw whose hyperparameters
    lay in their tail was weighted by p over the broad trace's density, 12 effects x
    0.8 nats too small on surgical mortality (bench/real), whose program proposal had
    ESS/N 0.22-0.34 in three seeds of eight and 0.62-0.78 in all eight after. (The
    effects are drawn from their conditionals given the hyperparameters: exact, or
    Laplace fits. A plate's instances are each protected little; before, a plate of
    more than a few was not protected either.)"""
    n = max(int(n), 1)
    return WIDEN ** (1.0 / n), TAIL_DF * n


class TriangularNormal(Distribution):
    """A Gaussian over the last dim, parameterised by its precision factor: log density
    -sum log s - |y|^2 / 2 - d log(2 pi) / 2 with y = T z, z = (x - loc) / s and T unit
    lower triangular with strictly lower entries ``lower`` (..., d (d - 1) / 2) in the
    order of ``torch.tril_indices(d, d, -1)``. The covariance is
    diag(s) T^-1 T^-T diag(s); scaling s scales the value, as for a diagonal Normal.

    Scoring needs no triangular solve or factorisation (two products with fixed 0/1
    matrices), which is what makes full covariances cheap enough for training."""
    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, loc, scale, lower, idx, pick, put):
        self.loc, self.scale, self.lower = loc, scale, lower
        self.idx = idx                             # (2, n): rows and columns of lower
        self.pick, self.put = pick, put            # (d, n) and (n, d): one-hot
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    def whitened(self, x):
        """y = T (x - loc) / s: standard normal under this Gaussian."""
        z = (x - self.loc) / self.scale
        return z + (self.lower * (z @ self.pick)) @ self.put

    def log_prob(self, x):
        y = self.whitened(x)
        d = self.loc.shape[-1]
        return -self.scale.log().sum(-1) - 0.5 * (y * y).sum(-1) - 0.5 * d * math.log(2 * math.pi)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()):
        """z = T^-1 y with y standard normal (forward substitution), x = loc + s z."""
        shape = self._extended_shape(sample_shape)
        y = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        T = self._matrix().expand(shape + shape[-1:])
        z = torch.linalg.solve_triangular(T, y.unsqueeze(-1), upper=False,
                                          unitriangular=True).squeeze(-1)
        return self.loc + self.scale * z

    def _matrix(self):
        """T as a dense matrix (..., d, d)."""
        d = self.loc.shape[-1]
        batch = torch.broadcast_shapes(self.loc.shape[:-1], self.lower.shape[:-1])
        T = torch.eye(d, dtype=self.loc.dtype, device=self.loc.device).expand(
            batch + (d, d)).clone()
        T[..., self.idx[0], self.idx[1]] = self.lower.expand(batch + self.lower.shape[-1:])
        return T


class TriangularStudentT(TriangularNormal):
    """The multivariate Student-t with ``df`` degrees of freedom and the scale matrix of
    a :class:`TriangularNormal` of the same parameters: a draw is that Gaussian's
    deviation from loc times sqrt(df / g), g ~ chi-square(df)."""

    def __init__(self, df: float, loc, scale, lower, idx, pick, put):
        super().__init__(loc, scale, lower, idx, pick, put)
        self.df = df

    def log_prob(self, x):
        y = self.whitened(x)
        d, nu = self.loc.shape[-1], self.df
        const = (math.lgamma((nu + d) / 2) - math.lgamma(nu / 2)
                 - 0.5 * d * math.log(nu * math.pi))
        return const - self.scale.log().sum(-1) - 0.5 * (nu + d) * torch.log1p((y * y).sum(-1) / nu)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()):
        x = super().sample(sample_shape)
        g = torch.distributions.Chi2(torch.full(x.shape[:-1], self.df, dtype=x.dtype,
                                                device=x.device)).sample()
        return self.loc + (x - self.loc) * (self.df / g).sqrt().unsqueeze(-1)


class Defensive(Distribution):
    """(1 - weight) main + weight broad, two distributions of one shape: the defensive
    mixture of a proposal and its broad version, whose weights p / q are then bounded by
    p / (weight broad) wherever the proposal is too narrow or too light-tailed."""
    arg_constraints = {}

    def __init__(self, main, broad, weight: float):
        self.main, self.broad, self.weight = main, broad, weight
        super().__init__(main.batch_shape, main.event_shape, validate_args=False)

    @property
    def support(self):
        return self.main.support

    def log_prob(self, x):
        return torch.logaddexp(self.main.log_prob(x) + _log1m(self.weight),
                               self.broad.log_prob(x) + math.log(self.weight))

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()):
        a, b = self.main.sample(sample_shape), self.broad.sample(sample_shape)
        pick = torch.rand(a.shape[:a.dim() - len(self.event_shape)], device=a.device) < self.weight
        return torch.where(pick.reshape(pick.shape + (1,) * len(self.event_shape)), b, a)


class Unwhiten(Transform):
    """w -> loc + L^-T w, rows (.., d): whitened coordinates onto the space of a Gaussian
    N(loc, (L L^T)^-1) given by its precision's Cholesky factor L. Scoring multiplies
    by L^T; only drawing solves a triangular system."""
    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, loc, L):
        super().__init__(cache_size=0)
        self.loc, self.L = loc, L

    def _call(self, w):
        z = torch.linalg.solve_triangular(self.L.transpose(-1, -2), w.unsqueeze(-1), upper=True)
        return self.loc + z.squeeze(-1)

    def _inverse(self, u):
        return ((u - self.loc).unsqueeze(-2) @ self.L).squeeze(-2)

    def log_abs_det_jacobian(self, w, u):
        return -self.L.diagonal(dim1=-2, dim2=-1).log().sum(-1)


class MixtureHead(nn.Module):
    def __init__(self, hidden: int, dim: int, unconstrained_dim: int, k: int,
                 full_covariance: bool = False, tails: str = "normal"):
        super().__init__()
        self.dim, self.udim, self.k = dim, unconstrained_dim, k
        self.full = full_covariance and unconstrained_dim > 1
        # "student": Student-t components (learned degrees of freedom, 2 + softplus),
        # heavier-tailed than Normals; full-covariance components stay Normal
        self.student = tails == "student" and not self.full
        if self.student:
            self.raw_df = nn.Parameter(torch.full((k,), 2.0))
        self.n_tril = unconstrained_dim * (unconstrained_dim - 1) // 2 if self.full else 0
        self.per = 1 + 2 * unconstrained_dim + self.n_tril
        b = torch.zeros(k, self.per)
        if self.full:
            # every component the base Gaussian (the prior, or the Laplace
            # approximation of an informed site) at the start: in several
            # dimensions a spread of components would mostly miss; the random
            # output weights set them apart
            b[:, 1 + unconstrained_dim:1 + 2 * unconstrained_dim] = math.log(math.e - 1)
        else:
            # components spread over the base Gaussian's +-1 sd, each narrower, the
            # mixture's variance the base's (an informed site's Laplace
            # approximation is then proposed at its own width before training)
            grid = torch.linspace(-1.0, 1.0, k) if k > 1 else torch.zeros(1)
            b[:, 1:1 + unconstrained_dim] = grid.unsqueeze(-1)
            width = math.sqrt(1.0 - float(grid.pow(2).mean()))
            b[:, 1 + unconstrained_dim:1 + 2 * unconstrained_dim] = math.log(math.expm1(width))
        self.out = OutputLayer(hidden, k * self.per, b)
        if self.full:
            d = unconstrained_dim
            idx = torch.tril_indices(d, d, -1)
            self.register_buffer("tril_idx", idx, persistent=False)
            # one-hot (d, n) and (n, d): what T's strictly lower entries read and write
            self.register_buffer("pick", F.one_hot(idx[1], d).T.to(torch.get_default_dtype()),
                                 persistent=False)
            self.register_buffer("put", F.one_hot(idx[0], d).to(torch.get_default_dtype()),
                                 persistent=False)

    # In the whitened coordinates of a Laplace approximation the components stay within
    # these bounds (softly): the approximation is meant to be roughly right, and where
    # it is badly off in training data, chasing it there would teach the network
    # outputs that send other traces' draws to absurd values
    WHITE_LOC, WHITE_SCALE, WHITE_LOWER = 5.0, 3.0, 1.0
    # Elsewhere the components are placed relative to the site's facts (its prior's
    # location and scale, or an informed site's fit), also within soft bounds: at most
    # LOC scales from the facts' location, at most SCALE times their scale. A network
    # shown observations unlike its training simulations extrapolates: surgical
    # mortality's, on the real counts, put a hierarchical sd's whole mass on a component
    # 18 scales from its fit and 580 times as wide (sigma drawn at 1e-30 and 1e30 in
    # half the draws, ESS/N 0.002). A posterior 8 prior sds from its prior, or 5 times
    # wider than its Laplace fit, is beyond what a proposal located this way can serve.
    LOC, SCALE = 8.0, 5.0

    def forward(self, h, loc_u, scale_u, adapt=None, defensive=0.0, pooled=None,
                whitened=False, broad=(WIDEN, TAIL_DF)):
        """h: (M, H); loc_u, scale_u: (M, udim) -> a mixture over (M, udim).

        ``adapt`` (a refinement's per-instance parameters, rows first): an affine map
        u -> u exp(log_factor) + shift of the whole mixture in unconstrained space, and
        offsets of the component logits. ``defensive`` > 0: the mixture becomes
        (1 - defensive) q + defensive q_broad, q_broad its components ``broad`` =
        (widening, degrees of freedom): that many times wider, and Student-ts
        (:func:`broadening`).

        ``pooled`` (the statistics of prior simulations, mean and sd): each component is
        the prior (loc_u, scale_u) times a Gaussian pseudo-observation the network
        gives in those units -- precision-weighted. In a family produced in order the
        prior's location is the previous element's, and the smoothing posterior is
        exactly such a product: how much of the previous element to keep is then a
        ratio of precisions, not something the network must compute.

        ``whitened``: the components are in the whitened coordinates of an informed
        site's Laplace approximation (loc_u and scale_u unused), within soft bounds."""
        u = self.udim
        raw = linear(self.out, h).view(h.shape[0], self.k, self.per)
        logits = raw[..., 0]
        lower = raw[..., 1 + 2 * u:] if self.full else None
        if whitened or pooled is None:
            # offsets and widths within soft bounds: in the whitened coordinates of a
            # Laplace approximation, or in units of the facts' location and scale
            at, wide = (self.WHITE_LOC, self.WHITE_SCALE) if whitened else (self.LOC, self.SCALE)
            loc = _soft(raw[..., 1:1 + u], at)
            scale = _soft(F.softplus(raw[..., 1 + u:1 + 2 * u]) + 1e-5, wide)   # (rows, K, udim)
            if whitened:
                lower = _soft(lower, self.WHITE_LOWER)
            else:
                loc = loc_u.unsqueeze(1) + scale_u.unsqueeze(1) * loc
                scale = scale_u.unsqueeze(1) * scale
        else:
            mean, sd = (t.unsqueeze(1) for t in pooled)
            m = mean + sd * _soft(raw[..., 1:1 + u], self.LOC)
            tau = F.softplus(raw[..., 1 + u:1 + 2 * u] - 4.0) / sd ** 2
            prec = 1 / scale_u.unsqueeze(1) ** 2 + tau
            loc = (loc_u.unsqueeze(1) / scale_u.unsqueeze(1) ** 2 + tau * m) / prec
            scale = prec.rsqrt()
        if adapt is not None:
            shift, log_factor, dlogits, coupled = adapt
            factor = torch.exp(log_factor).unsqueeze(1)
            loc = loc * factor + (shift + coupled).unsqueeze(1)
            scale = scale * factor
            logits = logits + dlogits
        # finite whatever the prior of this trace (an absurd earlier draw can make it so)
        loc = loc.nan_to_num(0.0, BIG, -BIG).clamp(-BIG, BIG)
        # and no narrower than the float's resolution at the location (RESOLUTION
        # ulps): the pumps model's prior simulates counts near 1e17, whose rates' logs
        # (36.5) a Laplace fit gives an sd of 1.5e-9, a 2500th of an ulp there -- a
        # component no draw can resolve, whose variance's square underflows, so that
        # its density's derivative in the training loss was 0 x inf = NaN
        floor = RESOLUTION * torch.finfo(loc.dtype).eps * (1.0 + loc.abs())
        scale = torch.maximum(scale.nan_to_num(1.0, BIG, 1.0).clamp(max=BIG), floor)
        mix = Categorical(logits=logits, validate_args=False)
        if not defensive:
            return MixtureSameFamily(mix, self._components(loc, scale, lower), validate_args=False)
        # the broad version: every component wider and a Student-t (a Gaussian, however
        # wide, has lighter tails than a scale's or a skewed location's posterior, whose
        # weights then have no finite variance)
        widen, df = broad
        broad = MixtureSameFamily(mix, self._components(loc, scale * widen, lower, df),
                                  validate_args=False)
        if defensive >= 1.0:
            return broad
        main = MixtureSameFamily(mix, self._components(loc, scale, lower), validate_args=False)
        return Defensive(main, broad, defensive)

    def _components(self, loc, scale, lower, df=None):
        """The K components (rows, K, udim): Normals, or Student-ts of ``df`` degrees of
        freedom (at most the learned ones with ``tails="student"``)."""
        if self.full:
            # the precision factor T diag(1 / scale), T unit lower triangular
            if df is None:
                return TriangularNormal(loc, scale, lower, self.tril_idx, self.pick, self.put)
            return TriangularStudentT(df, loc, scale, lower, self.tril_idx, self.pick, self.put)
        if self.student:
            learned = 2.0 + F.softplus(self.raw_df)
            df = learned if df is None else learned.clamp(max=df)
            return Independent(StudentT(df.unsqueeze(-1).expand(loc.shape), loc, scale,
                                        validate_args=False), 1, validate_args=False)
        if df is not None:
            return Independent(StudentT(torch.full_like(loc, df), loc, scale,
                                        validate_args=False), 1, validate_args=False)
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


def _logit_moments(d, M: int, width: int):
    """The mean and sd of logit(x), x ~ Beta(a, b) (M, width, 1): digamma(a) -
    digamma(b) and sqrt(trigamma(a) + trigamma(b)), exactly; None where the shapes do
    not fit."""
    try:
        a, b = torch.broadcast_tensors(d.concentration1, d.concentration0)
        m = (torch.digamma(a) - torch.digamma(b)).reshape(-1, width, 1).expand(M, width, 1)
        s = (torch.polygamma(1, a) + torch.polygamma(1, b)).sqrt().reshape(-1, width, 1) \
            .expand(M, width, 1)
    except RuntimeError:
        return None
    return m, s


def _lognormal(m, s):
    """The (location, scale) of the log-normal with mean m and sd s."""
    v = torch.log1p((s / m) ** 2)
    return torch.log(m) - 0.5 * v, v.sqrt()


def _log_spread(d, M: int, width: int):
    """For a positive prior whose log has a closed form -- Gamma (Chi2, Exponential),
    InverseGamma, LogNormal, HalfNormal, HalfCauchy, Weibull -- the mode of the log's
    density and the log's exact sd (M, width, 1) each; None for others.

    The log-normal matched to the moments of x, which locates a positive prior,
    misjudges a skewed prior's spread in log space by orders of magnitude: a Gamma(0.1,
    1) rate's log has sd 10.1 (its 5% quantile is 1e-13), where the matched log-normal
    has 1.5; BUGS's Gamma(0.001, 0.001) precision has logs of sd 1000 (90% of them below
    float32's least positive number), where the matched one has 2.6 -- and the fits
    that locate a site take their steps and differences in units of that scale. A
    HalfCauchy has no moments at all: it is centred at its log's mode."""
    import pyro.distributions as pdist
    try:
        if isinstance(d, torch.distributions.Gamma):        # Chi2 too
            a, b = torch.broadcast_tensors(d.concentration, d.rate)
            m, v = torch.log(a) - torch.log(b), torch.polygamma(1, a)
        elif isinstance(d, pdist.InverseGamma):
            a, b = torch.broadcast_tensors(d.concentration, d.rate)
            m, v = torch.log(b) - torch.log(a), torch.polygamma(1, a)
        elif isinstance(d, torch.distributions.Exponential):
            m = -torch.log(d.rate)
            v = torch.full_like(m, math.pi ** 2 / 6)
        elif isinstance(d, LogNormal):
            m, s = torch.broadcast_tensors(d.loc, d.scale)
            v = s ** 2
        elif isinstance(d, torch.distributions.HalfNormal):
            m = torch.log(d.scale)
            v = torch.full_like(m, math.pi ** 2 / 8)
        elif isinstance(d, torch.distributions.HalfCauchy):
            m = torch.log(d.scale)
            v = torch.full_like(m, math.pi ** 2 / 4)
        elif isinstance(d, torch.distributions.Weibull):
            lam, k = torch.broadcast_tensors(d.scale, d.concentration)
            m, v = torch.log(lam), (math.pi ** 2 / 6) / k ** 2
        else:
            return None
        shape = tuple(d.batch_shape)
        m, v = m.expand(shape), v.expand(shape)
        return m.reshape(-1, width, 1).expand(M, width, 1), \
            v.sqrt().reshape(-1, width, 1).expand(M, width, 1)
    except (RuntimeError, AttributeError):
        return None


def _soft(x: torch.Tensor, bound: float) -> torch.Tensor:
    """x within (-bound, bound), softly: about x where |x| is well below the bound."""
    return bound * torch.tanh(x / bound)


class PushedMixture(Proposal):
    """The unconstrained mixture pushed through the support's bijection; values are
    flat (rows, dim)."""

    def __init__(self, base, transform, support, pre=()):
        self.t, self.support = transform, support
        t = transform if transform.codomain.event_dim else IndependentTransform(transform, 1)
        self.d = TransformedDistribution(base, [*pre, t], validate_args=False)

    def sample(self):
        with torch.no_grad():   # inside the open support even where exp/sigmoid saturate
            return clamp_to_support(self.d.sample(), self.support)

    def log_prob(self, x):
        return self.d.log_prob(clamp_to_support(x, self.support))


def clamp_to_support(x, dom):
    """Keep boundary values (a Beta draw of exactly 1.0, an exp that underflows to 0 or
    overflows to infinity) inside the open support ``dom`` (a constraint), and finite."""
    x = x.clamp(-BIG, BIG)
    tiny = 1e-6
    if hasattr(dom, "lower_bound") and hasattr(dom, "upper_bound"):
        lo, hi = torch.as_tensor(dom.lower_bound), torch.as_tensor(dom.upper_bound)
        both = torch.isfinite(lo) & torch.isfinite(hi)
        span = torch.where(both, (hi - lo) * tiny, torch.zeros_like(hi - lo))
        lo_in = torch.where(both, lo + span, torch.where(
            torch.isfinite(lo), lo + (lo.abs() + 1e-24) * tiny, lo))
        hi_in = torch.where(both, hi - span, torch.where(
            torch.isfinite(hi), hi - (hi.abs() + 1e-24) * tiny, hi))
        return torch.minimum(torch.maximum(x, lo_in), hi_in)
    if hasattr(dom, "lower_bound"):
        lo = torch.as_tensor(dom.lower_bound)
        return torch.maximum(x, lo + (lo.abs() + 1e-24) * tiny)
    if hasattr(dom, "upper_bound"):
        hi = torch.as_tensor(dom.upper_bound)
        return torch.minimum(x, hi - (hi.abs() + 1e-24) * tiny)
    if isinstance(dom, type(constraints.simplex)):
        x = x.clamp(min=1e-30)
        return x / x.sum(-1, keepdim=True)
    return x


class ContinuousProposal(ProposalFamily):
    name = "continuous"

    def __init__(self, info, config):
        super().__init__(info, config)
        # a support that depends on other variables: each trace's comes with the prior
        # (facts), and the proposal is mapped onto it per trace; statistics and
        # features are then of the raw values
        self.dependent = is_dependent(info.support)
        self.transform = biject_to(constraints.real if self.dependent else info.support)
        if len(info.elem_shape) > 1 and self.transform.codomain.event_dim > 1:
            # a matrix support (corr_cholesky): values stay flat (rows, de)
            self.transform = ComposeTransform([self.transform, ReshapeTransform(
                torch.Size(info.elem_shape), torch.Size((info.de,)))])
        self.udim = info.de if self.transform.codomain.event_dim == 0 else \
            int(math.prod(self.transform.inverse_shape(torch.Size((info.de,)))))
        self.head = MixtureHead(config.hidden, info.de, self.udim, config.mixture_components,
                                full_covariance=info.dist_name == "MultivariateNormal"
                                or self.udim <= config.full_covariance,
                                tails=config.tails)
        self.register_buffer("mean", torch.zeros(info.n, self.udim))
        self.register_buffer("std", torch.ones(info.n, self.udim))
        # the prior's moments locate the proposal where they are one number per
        # element on the real line or (0, inf) (log-normal moment matching there), and
        # for a MultivariateNormal prior (its mean and marginal sds)
        self.moments_usable = self.udim == info.de and \
            info.support in (constraints.real, constraints.positive, constraints.real_vector)
        self.log_moments = info.support is constraints.positive
        # a Beta prior's logit has closed-form moments (digamma(a) - digamma(b), and
        # trigamma(a) + trigamma(b)): located per trace like the two above, so the
        # observations can locate it too (a probability per group of a beta-binomial
        # hierarchy, the rats tumour data)
        self.logit_moments = info.support is constraints.unit_interval and \
            info.dist_name == "Beta" and self.udim == info.de == 1
        self.newton_steps = config.newton_steps
        # the local log-likelihood is a quadratic in the site (set by the network from
        # the program, :mod:`csis_dsl.middle.affine`): its Laplace location is one step
        self.quadratic = False

    @property
    def feat_dim(self):
        return self.udim

    def unconstrained(self, x):
        """x: (..., de) -> (..., udim) in unconstrained space."""
        u = self.transform.inv(clamp_to_support(x, self.info.support))
        return u.reshape(x.shape[:-1] + (self.udim,))

    @torch.no_grad()
    def fit(self, x):
        u = self.unconstrained(x)
        m, s = u.mean(0), u.std(0).clamp(min=1e-3)
        ok = torch.isfinite(m) & torch.isfinite(s)
        self.mean.copy_(torch.where(ok, m, torch.zeros_like(m)))
        self.std.copy_(torch.where(ok, s, torch.ones_like(s)))

    def facts(self, d, M, width, j0=0):
        """(location, scale) of the prior in unconstrained space, and the statistics of
        prior simulations (mean, sd) of the same elements; for a support that depends on
        other variables, also its bounds in this trace (lower, upper)."""
        mean, std = self.stats("mean", M, width, j0), self.stats("std", M, width, j0)
        if self.dependent:
            return dependent_facts(d, M, width, self.info.de, mean, std)
        loc, scale = self.located(d, M, width, j0)
        return loc.detach(), scale.detach(), mean.detach(), std.detach()

    def located(self, d, M, width, j0=0):
        """The prior's (location, scale) in unconstrained space (M, width, udim), as a
        function of the values its parameters read (not detached): moment matching (a
        positive prior: the log-normal matched to its moments, at least as wide as its
        log's exact spread, :func:`_log_spread`), or the statistics of prior
        simulations where that is not possible."""
        mean, std = self.stats("mean", M, width, j0), self.stats("std", M, width, j0)
        m, s = self._closed_form(d, M, width) or (mean, std)
        ok = torch.isfinite(m) & torch.isfinite(s) & (s > 0)
        return torch.where(ok, m, mean), torch.where(ok, s, std)

    def _closed_form(self, d, M, width):
        """The prior's (location, scale) in unconstrained space from its closed forms
        (:meth:`located`), or None: a Beta's logit moments; a real prior's moments; a
        positive prior's log-normal matched to its moments, no narrower than its log's
        exact spread, and centred at the log density's mode where it has no moments."""
        if self.logit_moments and isinstance(d, Beta):
            return _logit_moments(d, M, width)
        mom = moments(d, M, width, self.info.de) if self.moments_usable and d is not None \
            else None
        if not self.log_moments:
            return mom
        spread = _log_spread(d, M, width) if self.moments_usable and self.info.de == 1 \
            else None
        if mom is None:
            return spread
        m0, s0 = _lognormal(*mom)
        if spread is None:
            return m0, s0
        fine = torch.isfinite(m0) & torch.isfinite(s0) & (s0 > 0)
        return (torch.where(fine, m0, spread[0]),
                torch.where(fine, torch.maximum(s0, spread[1]), spread[1]))

    @property
    def informable(self) -> bool:
        """Whether the observations can locate this family's proposal: a Newton step in
        its unconstrained space, element by element for a scalar, jointly (with the full
        Hessian) for a vector whose components have a full covariance, and element by
        element for a wider vector where its elements do not interact in the likelihood
        (:func:`separable`)."""
        if not (self.moments_usable or self.logit_moments) or self.dependent:
            return False
        return self.info.de == 1 or self.info.plate

    @property
    def joinable(self) -> bool:
        """Whether this site can take part in a joint Laplace fit with others
        (:mod:`..marginal`): located in an unconstrained space of its own (not one that
        depends on other variables), where :meth:`located_at` places it."""
        return not self.dependent

    @staticmethod
    def separable(loglik, transform, u, tol: float = 1e-4):
        """Where (M, m) the Hessian of the log-likelihood in the elements of u (M, m, d)
        is diagonal (:func:`separable`), or None where it does not depend on u."""
        fit = local_fit(loglik, transform, u)
        return None if fit is None else separable(fit[2], u, tol)

    def curvature(self, loglik, u):
        """The gradient and second derivative (M, m, 1) of the local log-likelihood at
        unconstrained values u (per element), or None where it does not depend on them."""
        fit = local_fit(loglik, self.transform, u)
        return None if fit is None else (fit[1], hessian(fit[2], u, joint=False))

    def laplace(self, loglik, loc0, scale0, joint: bool, wide: bool = False, start=None,
                steps=None, prior=None):
        """The Laplace approximation of the prior N(loc0, scale0^2) (in unconstrained
        space, per element) times the local likelihood: up to ``steps`` (default
        ``newton_steps``) Newton steps on log prior + log likelihood, each from the best
        point found so far (a step that made it worse is halved next time), at most 5
        prior scales each; directions of positive curvature are dropped from the
        precision.

        Returns (location, precision) per element (M, m, d), or with ``joint`` (location,
        the precision's Cholesky factor (M, m, d, d)); None where the likelihood does not
        depend on the site. ``wide``: a vector fitted element by element, which only
        holds where its elements do not interact (:func:`separable`, checked at the
        first evaluation); elsewhere the prior is returned.

        One step is exact for a linear-Gaussian likelihood (the gradient at its end is
        then zero, and no further Hessian is computed); a second moves a scale parameter
        or a logistic regression that the first left far from its mode. Where the program
        shows the likelihood to be a quadratic (``quadratic``, from
        :func:`~csis_dsl.middle.affine.quadratic_likelihood`), one unclamped step is
        taken and the confirming pass over the observations is saved.

        ``start``: where the steps begin (a hint: the mode of a joint fit made for an
        earlier site, :mod:`..marginal`), instead of the prior's location.

        ``prior``: the site's exact log prior density at unconstrained values (M, m, d)
        -> (M, m) (:meth:`instance_prior`: scalar instances, their priors in this
        trace; :mod:`..marginal`'s joint fits: scalars whose priors read only args):
        the steps then climb log
        prior + log-likelihood exactly, the prior's curvature its own where that is
        larger than a tenth of the matched Gaussian's (:func:`prior_terms`). The
        Gaussian matched to a Gamma(2, 0.1) prior's moments in log nu puts nu = 1.35
        4.5 nats below nu = 20 where the prior puts it 3.5 below, and moved Newcomb's
        fits away from the small nu the data want."""
        prior_prec = 1 / scale0 ** 2
        prior_fac = torch.diag_embed(scale0.reciprocal()) if joint else prior_prec
        u, best, size, apart = loc0, None, torch.ones_like(loc0[..., 0]), None
        if start is not None:
            u = torch.where(torch.isfinite(start), start, loc0)

        def solve(L, g):            # the precision (factor) L applied inversely to g
            return torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1) if joint else g / L

        exact = self.quadratic and prior is None
        if exact and not wide:
            return self._exact_step(loglik, u, loc0, prior_prec, prior_fac, joint, solve)
        exact_prior = prior is not None and not joint and not wide
        converged = exact
        last = None                # the last Newton step (before its length), (M, m, d)
        total = 1 if exact else steps or self.newton_steps
        for it in range(total):
            fit = local_fit(loglik, self.transform, u)
            if fit is None:
                return None
            ll, g, hvp = fit
            if wide and apart is None:
                apart = separable(hvp, u)
                if not bool(apart.any()):
                    return u, prior_fac
            if exact_prior:          # the prior's value, gradient and curvature at u
                lp, pg, pc = prior_terms(prior, u, prior_prec)
            else:
                lp = -0.5 * (prior_prec * (u - loc0) ** 2).sum(-1)
                pg, pc = -prior_prec * (u - loc0), prior_prec
            obj = ll + lp
            fine = torch.isfinite(obj) & torch.isfinite(g).all(-1)
            g = torch.where(torch.isfinite(g), g, torch.zeros_like(g)) + pg
            if best is not None:
                # where the last step landed at the mode (the objective's gradient is
                # negligible there and it improved), the Hessian is not needed again
                rest = solve(L, g)
                done = fine & (obj >= best[1]) & (rest.abs() < 1e-3 * scale0).all(-1)
                if bool(done.all()):
                    converged = True
                    break
            H = hessian(hvp, u, joint)
            fine = fine & torch.isfinite(H).flatten(u.dim() - 1).all(-1) & torch.isfinite(g).all(-1)
            pc = pc.expand_as(g)
            if best is None:
                better = fine
                best = [u, torch.where(fine, obj, torch.full_like(obj, -math.inf)), g, H, pc]
            else:
                better = fine & (obj > best[1])
                size = torch.where(better, torch.ones_like(size), 0.5 * size)
            for k, new in enumerate((u, obj, g, H, pc)):
                best[k] = torch.where(better.reshape(better.shape + (1,) * (new.dim() - better.dim())),
                                      new, best[k])
            u0, _, g, H, pc = best
            L, ok = _fit_precision(H, pc if exact_prior else prior_prec, prior_fac, joint)
            ok = torch.ones_like(fine) if ok is None else ok
            step = solve(L, g)
            ok = ok & torch.isfinite(step).all(-1)
            if last is not None and it + 1 < total:
                # a step that improved, followed by one the same way at least half as
                # long, is Newton crawling (counts with a log link, approached from
                # above: each step at most one unit of the log): the next goes twice as
                # far, up to GROWTH times; a step that overshoots is undone and halved
                # at the next evaluation, and the last (unchecked) one is never grown
                crawl = better & ((step * last).sum(-1) >= 0.5 * (last * last).sum(-1))
                size = torch.where(crawl, (2 * grown).clamp(max=GROWTH), size)
            last, grown = torch.where(ok.unsqueeze(-1), step, torch.zeros_like(step)), size
            step = step * size.unsqueeze(-1)
            if not exact:
                # at most 5 prior scales in any element: the step shrunk, its direction
                # kept (an exact step of a quadratic goes all the way)
                step = step / (step.abs() / (5 * scale0)).amax(-1, keepdim=True).clamp(min=1.0)
            u = u0 + torch.where(ok.unsqueeze(-1), step, torch.zeros_like(step))
        if not converged and best is not None:
            L = _widened(L, u - best[0], joint, prior_fac)
        if apart is not None:
            keep = apart.unsqueeze(-1)
            return torch.where(keep, u, loc0), torch.where(keep, L, prior_fac)
        return u, L

    def _exact_step(self, loglik, u, loc0, prior_prec, prior, joint: bool, solve):
        """:meth:`laplace` where the likelihood is a quadratic (``quadratic``): one
        unclamped Newton step from u is the exact location, its precision the exact
        one -- no search, no comparison of objectives."""
        fit = local_fit(loglik, self.transform, u)
        if fit is None:
            return None
        _, g, hvp = fit
        H = hessian(hvp, u, joint)
        g = torch.where(torch.isfinite(g), g, torch.zeros_like(g)) - prior_prec * (u - loc0)
        L, ok = _fit_precision(H, prior_prec, prior, joint)
        step = solve(L, g)
        fine = torch.isfinite(step).all(-1)
        ok = fine if ok is None else ok & fine
        return u + torch.where(ok.unsqueeze(-1), step, torch.zeros_like(step)), L

    def instance_prior(self, d, M: int):
        """The exact prior log density of each instance at unconstrained values u
        (M, n, 1) -> (M, n), the transform's Jacobian included, under the prior ``d``
        (batch (M or 1, *instances)): the ``prior`` of :meth:`laplace` for a site whose
        instances are scalars -- a plate's, whose prior reads what was drawn before
        (the pumps' failure rates, theta[i] ~ Gamma(alpha, beta)). None where the
        family's matched Gaussian is the prior itself (an untruncated Normal or
        LogNormal) or the values are not scalars."""
        if d is None or self.dependent or self.udim != 1 or self.info.de != 1 \
                or not self.informable or isinstance(d, (Normal, LogNormal)):
            return None
        return lambda u: self.log_prior_at(d, u, M)

    def log_prior_at(self, d, u, M: int):
        """The prior ``d``'s log density (batch (M or 1, *instances)) at unconstrained
        values u (M, n, udim), the transform's Jacobian included: per instance (M, n),
        a density of u, as the proposal's is."""
        x = self.transform(u)
        lp = d.log_prob(x.reshape((M,) + tuple(d.batch_shape[1:]) + tuple(d.event_shape)))
        lp = lp.reshape(M, -1)
        return lp + self.transform.log_abs_det_jacobian(u, x).reshape(M, lp.shape[1], -1).sum(-1)

    def prior_log_density(self, rt, stmt, part, x, overlay) -> torch.Tensor:
        """The exact prior log density of this site's values ``x`` = transform(``part``)
        (M, 1, udim) under its statement ``stmt``, read through the runtime ``rt`` with
        ``overlay``, the transform's Jacobian included, (M,): not the Gaussian matched
        to the prior's moments that :meth:`facts` locates with."""
        M = part.shape[0]
        shape = (M,) + tuple(self.info.inst_shape) + tuple(self.info.elem_shape)
        lp = rt.stmt_log_prob(stmt, x.reshape(shape), overlay)
        jac = self.transform.log_abs_det_jacobian(part, x)
        return lp.reshape(M, -1).sum(-1) + jac.reshape(M, -1).sum(-1)

    def inform(self, facts, loglik, message=None, start=None, steps=None, prior=None):
        """The prior's location moved by the observations that depend on the site: the
        Laplace approximation of prior x local likelihood (:meth:`laplace`). A vector is
        fitted jointly (full Hessian); the facts then gain the precision's Cholesky
        factor L (M, m, d, d), and the components are placed in the whitened
        coordinates of that Gaussian, so correlated elements (regression coefficients)
        are located jointly before any training.

        ``message`` (precision, information), (M, m, 1) each: a Gaussian factor from
        observations further away (:mod:`..lookahead`) or shared with later latents
        (:mod:`..marginal`; ``loglik`` is then None), multiplied in after. ``start``:
        where the Newton steps begin (:meth:`laplace`)."""
        if not self.informable:
            return facts
        loc, scale = facts[:2]
        joint = self.info.de > 1 and self.head.full
        fit = None if loglik is None else self.laplace(
            loglik, loc, scale, joint, wide=self.info.de > 1 and not joint, start=start,
            steps=steps, prior=prior)
        if joint:
            if fit is None:
                return facts
            new_loc, L = fit
            sd = torch.cholesky_inverse(L).diagonal(dim1=-2, dim2=-1).clamp(min=0.0).sqrt()
            return self._whitened(facts, new_loc, sd, L, torch.ones_like(sd[..., 0], dtype=torch.bool))
        if fit is not None:
            new_loc, prec = fit
            ok = torch.isfinite(new_loc) & torch.isfinite(prec) & (prec > 0)
            loc = torch.where(ok, new_loc, loc)
            scale = torch.where(ok, prec.rsqrt(), scale)
        if message is not None:
            P, e = message
            prec = 1 / scale ** 2
            new_prec = prec + P
            new_loc = (loc * prec + e) / new_prec
            ok = torch.isfinite(new_loc) & torch.isfinite(new_prec) & (new_prec > 0)
            loc = torch.where(ok, new_loc, loc)
            scale = torch.where(ok, new_prec.rsqrt(), scale)
        return (loc.detach(), scale.detach()) + tuple(facts[2:])

    def located_at(self, facts, loc, cov, usable):
        """The facts of a site placed at the Gaussian N(loc, cov) of its unconstrained
        value (loc (M, n udim), cov (M, n udim, n udim), its n instances one after the
        other): a joint fit's marginal for it (:mod:`..marginal`), which already
        includes its prior. A vector whose components have a full covariance is placed
        in the whitened coordinates of each instance's block of that Gaussian (as
        :meth:`inform` places a jointly informed one); otherwise each element at its
        marginal mean and sd. Unchanged where not ``usable`` (M,)."""
        if self.dependent:
            return facts
        M, n, k = facts[0].shape
        idx = torch.arange(n * k).reshape(n, k)
        block = cov[:, idx.unsqueeze(-1), idx.unsqueeze(-2)]        # (M, n, udim, udim)
        return self.located_each(facts, loc.reshape(M, n, k), block,
                                 usable.reshape(M, 1).expand(M, n))

    def located_each(self, facts, loc, cov, usable):
        """The facts of a site's instances placed each at its own Gaussian N(loc, cov)
        of its unconstrained value (loc (M, n, udim), cov (M, n, udim, udim)): a
        vector with full-covariance components in that Gaussian's whitened
        coordinates, otherwise each element at its mean and sd. Unchanged where not
        ``usable`` (M, n)."""
        if self.dependent:
            return facts
        sd = cov.diagonal(dim1=-2, dim2=-1).clamp(min=0.0).sqrt()
        if not (self.info.de > 1 and self.head.full):
            ok = (usable & torch.isfinite(loc).all(-1) & torch.isfinite(sd).all(-1)
                  & (sd > 0).all(-1)).unsqueeze(-1)
            return (torch.where(ok, loc, facts[0]).detach(),
                    torch.where(ok, sd, facts[1]).detach()) + tuple(facts[2:])
        prec = torch.linalg.inv_ex(cov)[0]
        L, bad = torch.linalg.cholesky_ex(0.5 * (prec + prec.transpose(-1, -2)))
        return self._whitened(facts, loc, sd, L, usable & (bad == 0))

    def _whitened(self, facts, loc, sd, L, ok):
        """The facts of a Gaussian in unconstrained space given by its location and the
        Cholesky factor L of its precision (sd its marginal sds), all (M, m, ...): the
        components are then placed in its whitened coordinates (:class:`Unwhiten`).
        Where not ``ok`` (M, m), or not finite, the prior's location and scale."""
        loc0, scale0 = facts[:2]
        ok = ok & torch.isfinite(loc).all(-1) & torch.isfinite(sd).all(-1) & (sd > 0).all(-1) \
            & torch.isfinite(L).flatten(-2).all(-1)
        okv = ok.unsqueeze(-1)
        L = torch.where(okv.unsqueeze(-1), L, torch.diag_embed(1 / scale0))
        return (torch.where(okv, loc, loc0).detach(), torch.where(okv, sd, scale0).detach(),
                facts[2], facts[3], L.detach())

    def lookahead(self, loglik, pieces, M):
        """Gaussian messages from the later observations of a chain, by a backward
        information filter on the chain linearised at a reference path
        (:func:`..lookahead.gaussian_messages`)."""
        if not self.informable:
            return None
        n = self.info.n
        default = (self.stats("mean", M, n, 0), self.stats("std", M, n, 0))

        def transition(u):
            return place(pieces(self.transform(u)), default,
                         lambda d, width, a: self.located(d, M, width, a))
        return gaussian_messages(self, loglik, transition, M, n)

    def features(self, x, j0=0):
        u = torch.nan_to_num(self.unconstrained(x), 0.0, 10.0, -10.0)
        m = x.shape[1]
        return squash((u - self.mean[j0:j0 + m]) / self.std[j0:j0 + m])

    def adapter_shapes(self, context: int = 0):
        return {"shift": (self.udim,), "log_factor": (self.udim,),
                "logits": (self.head.k,), "coupling": (self.udim, context)}

    @torch.no_grad()
    def adapt_step(self, x, w, params, rate, ctx=None, present=None):
        if self.dependent:          # its unconstrained space differs from trace to trace
            return
        """Moment matching: move the affine adapter so that the proposal's mean (linear
        in the site's context: the values drawn before it) and sd of every unconstrained
        element become the weighted ones. x: (K, n, de) draws of the current proposal,
        w: (K, n) their normalised weights, ctx: (K, n, p) their contexts."""
        u = self.unconstrained(x)                                   # (K, n, udim)
        affine_match(u, w, params["shift"], params["log_factor"], rate, ctx,
                     params["coupling"] if params["coupling"].shape[-1] else None, present)

    def forward(self, h, facts, adapt=None, defensive=0.0):
        loc, scale, mean, std = facts[:4]
        broad = broadening(self.info.n)
        if adapt is not None:
            ctx = adapt.get("context")
            coupled = torch.zeros_like(adapt["shift"]) if ctx is None else \
                torch.einsum("rdp,rp->rd", adapt["coupling"], ctx)
            adapt = (adapt["shift"], adapt["log_factor"], adapt["logits"], coupled)
        if self.dependent:
            transform, support = bounded_transform(*facts[4:])
            return PushedMixture(self.head(h, loc, scale, adapt, defensive, broad=broad), transform, support)
        if len(facts) > 4:
            # informed jointly: the mixture lives in the whitened coordinates of the
            # Laplace approximation (loc, precision L L^T); a refinement's affine
            # adapter acts after it, in unconstrained units
            pre = [Unwhiten(loc, facts[4])]
            logits_only = None
            if adapt is not None:
                shift, log_factor, dlogits, coupled = adapt
                pre.append(AffineTransform(shift + coupled, torch.exp(log_factor), event_dim=1))
                logits_only = (torch.zeros_like(shift), torch.zeros_like(shift), dlogits,
                               torch.zeros_like(shift))
            base = self.head(h, loc, scale, logits_only, defensive, whitened=True,
                             broad=broad)
            return PushedMixture(base, self.transform, self.info.support, pre)
        pooled = None if self.info.plate else (mean, std)
        return PushedMixture(self.head(h, loc, scale, adapt, defensive, pooled, broad=broad),
                             self.transform, self.info.support)


def _fit_precision(H, prior_prec, prior, joint: bool):
    """The precision of a Laplace fit from the log-likelihood's Hessian H (non-finite
    entries taken as 0; directions of positive curvature dropped) and the prior's
    precision per element: per element, or with ``joint`` its Cholesky factor (the
    prior's, ``prior``, where it fails). Returns (L, where it was factored: None per
    element)."""
    H = torch.where(torch.isfinite(H), H, torch.zeros_like(H))
    if not joint:
        return prior_prec + (-H).clamp(min=0.0), None
    lam, V = torch.linalg.eigh(-0.5 * (H + H.transpose(-1, -2)))
    L, bad = torch.linalg.cholesky_ex(torch.diag_embed(prior_prec) + (
        V * lam.clamp(min=0.0).unsqueeze(-2)) @ V.transpose(-1, -2))
    ok = bad == 0
    return torch.where(ok[..., None, None], L, prior), ok


def _widened(L, step, joint: bool, prior):
    """The precision of a Laplace fit whose Newton steps stopped short of the mode (a
    likelihood far from quadratic: counts with a log link, far from where they began):
    the last step, ``step`` (M, m, d), is how far the mode may still be, so the fit is
    widened to make it at most one standard deviation long -- a proposal confidently in
    the wrong place has weights and a training loss without bound -- but never wider
    than the prior. Unchanged where the steps converged. L: the precision per element
    (``prior``: the prior's), or with ``joint`` its Cholesky factor (``prior``: the
    prior's, diagonal)."""
    if joint:
        z = (L.transpose(-1, -2) @ step.unsqueeze(-1)).squeeze(-1).norm(dim=-1)
        most = (L.diagonal(dim1=-2, dim2=-1) / prior.diagonal(dim1=-2, dim2=-1)).amin(-1)
        z = torch.minimum(z, most)
        z = torch.where(torch.isfinite(z), z, torch.ones_like(z)).clamp(min=1.0)
        return L / z.reshape(z.shape + (1, 1))
    z2 = torch.minimum(step ** 2 * L, L / prior)
    z2 = torch.where(torch.isfinite(z2), z2, torch.ones_like(z2)).clamp(min=1.0)
    return L / z2


PRIOR_FLOOR = 0.1     # the least prior curvature, relative to the matched Gaussian's
GROWTH = 8.0          # the most a crawling Newton step is lengthened (:meth:`laplace`)


def prior_terms(log_prior, u, prec):
    """An exact log prior density at unconstrained values u (..., 1) -> (...): its value
    (...), gradient and curvature (..., 1) -- minus the second derivative, at least
    ``PRIOR_FLOOR`` times ``prec`` (the precision of the Gaussian matched to the
    prior's moments): a Laplace fit's precision stays positive where the prior is flat
    (a half-Cauchy scale far below its scale) and the likelihood says little."""
    lp, g, hvp = local_fit(log_prior, lambda t: t, u)
    curv = torch.maximum(-hessian(hvp, u, joint=False), PRIOR_FLOOR * prec)
    return lp, g, torch.where(torch.isfinite(curv), curv, prec)


def local_fit(loglik, transform, u):
    """The local log-likelihood (M, m) at unconstrained values u (M, m, d) (``loglik``
    takes values pushed through ``transform``), its gradient (M, m, d), and ``hvp(v)``:
    the Hessian times v (..., d). None where it does not depend on u."""
    with torch.enable_grad():
        u = u.detach().clone().requires_grad_(True)
        ll = loglik(transform(u))
        if not ll.requires_grad:
            return None
        g, = torch.autograd.grad(ll.sum(), u, create_graph=True)

    def hvp(v):
        if not g.requires_grad:
            return torch.zeros_like(v)
        with torch.enable_grad():
            h, = torch.autograd.grad(g, u, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(v) if h is None else h.detach()
    return ll.detach(), g.detach(), hvp


def hessian(hvp, u, joint: bool):
    """The Hessian (..., d, d) at u (..., d) from its products (:func:`local_fit`), one
    backward pass per row; or, not ``joint``, the second derivative of each element
    (..., d) -- the row sums, which is it where the elements do not interact. (One
    vectorised pass for all rows, ``is_grads_batched``, was 6-8x slower than the rows
    one by one for d = 3-10 on 512 x 200 observations: its batching falls back to a loop
    with copies.)"""
    if not joint:
        return hvp(torch.ones_like(u))
    d = u.shape[-1]
    basis = torch.eye(d, dtype=u.dtype).reshape((d,) + (1,) * (u.dim() - 1) + (d,))
    return torch.stack([hvp(b) for b in basis.expand((d,) + tuple(u.shape))], -2)


def separable(hvp, u, tol: float = 1e-4):
    """Where (M, m) the Hessian at u (M, m, d) is diagonal -- a vector read element by
    element (``theta[group[i]]``, ``Normal(theta, sigma)``) -- by two Hessian-vector
    products: with all ones (the row sums) and with fixed random signs r; they agree
    (H r = rowsum * r) only where no element interacts with another."""
    r = (torch.randint(0, 2, u.shape[1:], generator=torch.Generator().manual_seed(0))
         * 2 - 1).to(u.dtype)
    rows, hr = hvp(torch.ones_like(u)), hvp(r.expand_as(u))
    gap = (hr - rows * r).abs()
    return (gap <= tol * (rows.abs() + 1e-12)).all(-1) & torch.isfinite(gap).all(-1)


def dependent_facts(d, M, width, de, mean, std):
    """Facts for a support that depends on other variables: its bounds in this trace
    (from the prior ``d``), and the prior located in the unconstrained coordinates of
    those bounds -- log(x - lower), log(upper - x) or logit of the relative position --
    by moment matching where the prior's moments exist (a uniform interval otherwise)."""
    inf = torch.full((M, width, de), math.inf)
    lo, hi, m, s = -inf, inf, None, None
    if d is not None:
        sup = d.support
        shape = tuple(d.batch_shape) + tuple(d.event_shape)

        def bound(name, default):
            b = getattr(sup, name, None)
            if b is None:
                return default
            return torch.as_tensor(b, dtype=default.dtype).expand(shape).reshape(M, width, de)
        lo, hi = bound("lower_bound", -inf), bound("upper_bound", inf)
        mom = moments(d, M, width, de)
        if mom is not None:
            m, s = mom
    lo_f, hi_f = torch.isfinite(lo), torch.isfinite(hi)
    if m is None:
        m, s = torch.where(lo_f & hi_f, (lo + hi) / 2, mean), torch.where(lo_f & hi_f, (hi - lo) / 4, std)
    both = lo_f & hi_f
    p = ((m - lo) / (hi - lo)).clamp(1e-4, 1 - 1e-4)
    loc_i, scale_i = torch.logit(p), (s / (hi - lo)) / (p * (1 - p))
    gap = torch.where(lo_f, m - lo, hi - m).clamp(min=1e-30)
    v = torch.log1p((s / gap) ** 2)
    loc_h, scale_h = torch.log(gap) - 0.5 * v, v.sqrt()
    loc = torch.where(both, loc_i, torch.where(lo_f | hi_f, loc_h, m))
    scale = torch.where(both, scale_i, torch.where(lo_f | hi_f, scale_h, s))
    ok = torch.isfinite(loc) & torch.isfinite(scale) & (scale > 0)
    loc = torch.where(ok, loc, torch.zeros_like(loc))
    scale = torch.where(ok, scale.clamp(max=10.0), torch.full_like(scale, 1.5))
    return (loc.detach(), scale.detach(), mean.detach(), std.detach(), lo.detach(), hi.detach())


class BoundedTransform(Transform):
    """The real line onto (lo, hi), elementwise, for bounds that differ from row to row
    and may be infinite on either side: lo + (hi - lo) sigmoid(u), lo + exp(u),
    hi - exp(u) or u."""
    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, lo, hi):
        super().__init__(cache_size=0)
        self.lo, self.hi = lo, hi
        self.lo_f, self.hi_f = torch.isfinite(lo), torch.isfinite(hi)
        self.both = self.lo_f & self.hi_f
        self._lo = torch.where(self.lo_f, lo, torch.zeros_like(lo))
        self._hi = torch.where(self.hi_f, hi, torch.zeros_like(hi))

    def _call(self, u):
        width = torch.where(self.both, self._hi - self._lo, torch.ones_like(self._lo))
        inner = self._lo + width * torch.sigmoid(u)
        e = torch.exp(u)
        return torch.where(self.both, inner, torch.where(
            self.lo_f, self._lo + e, torch.where(self.hi_f, self._hi - e, u)))

    def _inverse(self, x):
        width = torch.where(self.both, self._hi - self._lo, torch.ones_like(self._lo))
        inner = torch.logit(((x - self._lo) / width).clamp(1e-7, 1 - 1e-7))
        return torch.where(self.both, inner, torch.where(
            self.lo_f, torch.log((x - self._lo).clamp(min=1e-30)),
            torch.where(self.hi_f, torch.log((self._hi - x).clamp(min=1e-30)), x)))

    def log_abs_det_jacobian(self, u, x):
        width = torch.where(self.both, self._hi - self._lo, torch.ones_like(self._lo))
        inner = torch.log(width) + F.logsigmoid(u) + F.logsigmoid(-u)
        return torch.where(self.both, inner, torch.where(self.lo_f | self.hi_f, u,
                                                         torch.zeros_like(u)))


def bounded_transform(lo, hi):
    """The bijection from the real line onto (lo, hi) per row (either may be infinite),
    and that support as a constraint (for keeping draws inside it)."""
    return BoundedTransform(lo, hi), _Between(lo, hi)


class _Between(constraints.Constraint):
    def __init__(self, lo, hi):
        self.lower_bound, self.upper_bound = lo, hi
        super().__init__()

    def check(self, x):
        return (x > self.lower_bound) & (x < self.upper_bound)


FAMILY = ContinuousProposal
