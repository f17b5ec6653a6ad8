"""Continuous supports: a mixture of K Normals in unconstrained space, pushed through
``biject_to(support)`` so the proposal's support is exactly the prior's (real line,
(0, inf), [a, b], one-sided truncations, the simplex by stick breaking, increasing
vectors by cumulative exponentials, Cholesky factors of correlation matrices). Components are
located and scaled relative to the prior's own location and scale (in a family
produced in order, the prior given the elements before). Components are diagonal,
except for MultivariateNormal priors, whose components get a full covariance (a
learned Cholesky factor), so correlated posteriors are proposed jointly."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import (Categorical, Independent, MixtureSameFamily,
                                 MultivariateNormal, Normal, StudentT,
                                 TransformedDistribution, biject_to, constraints)
from torch.distributions.transforms import Transform
from torch.distributions.transforms import (ComposeTransform, IndependentTransform,
                                            ReshapeTransform)

from ...catalogue.supports import is_dependent
from ..lookahead import gaussian_messages
from .base import _log1m, linear, place, Proposal, ProposalFamily, affine_match, moments


BIG = 1e30      # no proposal draw is larger: far beyond any prior, still finite in float32
WIDEN = 2.0     # the defensive component's scale, relative to the proposal's


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
        self.out = nn.Linear(hidden, k * self.per)
        with torch.no_grad():
            self.out.weight.mul_(0.1)
            b = self.out.bias.view(k, self.per)
            b.zero_()
            b[:, 1:1 + unconstrained_dim] = torch.linspace(-1.0, 1.0, k).unsqueeze(-1) \
                if k > 1 else 0.0
            b[:, 1 + unconstrained_dim:1 + 2 * unconstrained_dim] = -0.5
        if self.full:
            self.register_buffer("tril_idx", torch.tril_indices(unconstrained_dim,
                                                                unconstrained_dim, -1))

    def forward(self, h, loc_u, scale_u, adapt=None, defensive=0.0, pooled=None):
        """h: (M, H); loc_u, scale_u: (M, udim) -> a mixture over (M, udim).

        ``adapt`` (a refinement's per-instance parameters, rows first): an affine map
        u -> u exp(log_factor) + shift of the whole mixture in unconstrained space, and
        offsets of the component logits. ``defensive`` > 0: the mixture becomes
        (1 - defensive) q + defensive q_wide, q_wide its components WIDEN times wider.

        ``pooled`` (the statistics of prior simulations, mean and sd): each component is
        the prior (loc_u, scale_u) times a Gaussian pseudo-observation the network
        gives in those units -- precision-weighted. In a family produced in order the
        prior's location is the previous element's, and the smoothing posterior is
        exactly such a product: how much of the previous element to keep is then a
        ratio of precisions, not something the network must compute."""
        u = self.udim
        raw = linear(self.out, h).view(h.shape[0], self.k, self.per)
        logits = raw[..., 0]
        if pooled is None:
            loc = loc_u.unsqueeze(1) + scale_u.unsqueeze(1) * raw[..., 1:1 + u]
            diag = F.softplus(raw[..., 1 + u:1 + 2 * u]) + 1e-5
            scale = scale_u.unsqueeze(1) * diag                        # (rows, K, udim)
        else:
            mean, sd = (t.unsqueeze(1) for t in pooled)
            m = mean + sd * raw[..., 1:1 + u]
            tau = F.softplus(raw[..., 1 + u:1 + 2 * u] - 4.0) / sd ** 2
            prec = 1 / scale_u.unsqueeze(1) ** 2 + tau
            loc = (loc_u.unsqueeze(1) / scale_u.unsqueeze(1) ** 2 + tau * m) / prec
            diag = torch.ones_like(prec)
            scale = prec.rsqrt()
        if adapt is not None:
            shift, log_factor, dlogits, coupled = adapt
            factor = torch.exp(log_factor).unsqueeze(1)
            loc = loc * factor + (shift + coupled).unsqueeze(1)
            scale = scale * factor
            logits = logits + dlogits
        # finite whatever the prior of this trace (an absurd earlier draw can make it so)
        loc = loc.nan_to_num(0.0, BIG, -BIG).clamp(-BIG, BIG)
        scale = scale.nan_to_num(1.0, BIG, 1.0).clamp(1e-30, BIG)
        tril = None
        if self.full:
            # L = diag(scale) @ (I + strictly lower part), the scale as above
            tril = torch.diag_embed(torch.ones_like(diag))
            tril[..., self.tril_idx[0], self.tril_idx[1]] = raw[..., 1 + 2 * u:]
        if defensive:
            logits = torch.cat([torch.log_softmax(logits, -1) + _log1m(defensive),
                                torch.log_softmax(logits, -1) + math.log(defensive)], -1)
            loc = torch.cat([loc, loc], 1)
            scale = torch.cat([scale, scale * WIDEN], 1)
            tril = None if tril is None else torch.cat([tril, tril], 1)
        if self.full:
            comp = MultivariateNormal(loc, scale_tril=scale.unsqueeze(-1) * tril,
                                      validate_args=False)
        elif self.student:
            df = 2.0 + F.softplus(self.raw_df)
            if defensive:
                df = torch.cat([df, df])
            comp = Independent(StudentT(df.unsqueeze(-1).expand(loc.shape), loc, scale,
                                        validate_args=False), 1, validate_args=False)
        else:
            comp = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)
        return MixtureSameFamily(Categorical(logits=logits, validate_args=False), comp,
                                 validate_args=False)


class PushedMixture(Proposal):
    """The unconstrained mixture pushed through the support's bijection; values are
    flat (rows, dim)."""

    def __init__(self, base, transform, support):
        self.t, self.support = transform, support
        t = transform if transform.codomain.event_dim else IndependentTransform(transform, 1)
        self.d = TransformedDistribution(base, [t], validate_args=False)

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
                                full_covariance=info.dist_name == "MultivariateNormal",
                                tails=config.tails)
        self.register_buffer("mean", torch.zeros(info.n, self.udim))
        self.register_buffer("std", torch.ones(info.n, self.udim))
        # the prior's moments locate the proposal where they are one number per
        # element on the real line or (0, inf) (log-normal moment matching there)
        self.moments_usable = self.udim == info.de and \
            info.support in (constraints.real, constraints.positive)
        self.log_moments = info.support is constraints.positive

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
        function of the values its parameters read (not detached): moment matching, or
        the statistics of prior simulations where that is not possible."""
        mean, std = self.stats("mean", M, width, j0), self.stats("std", M, width, j0)
        mom = moments(d, M, width, self.info.de) if self.moments_usable and d is not None \
            else None
        if mom is None:
            return mean, std
        m, s = mom
        if self.log_moments:
            v = torch.log1p((s / m) ** 2)
            m, s = torch.log(m) - 0.5 * v, v.sqrt()
        ok = torch.isfinite(m) & torch.isfinite(s) & (s > 0)
        return torch.where(ok, m, mean), torch.where(ok, s, std)

    @property
    def informable(self) -> bool:
        """Whether the observations can locate this family's proposal (a Newton step in
        its one-dimensional unconstrained space)."""
        return self.moments_usable and self.info.de == 1 and not self.dependent

    def curvature(self, loglik, u):
        """The gradient and second derivative (M, m, 1) of the local log-likelihood at
        unconstrained values u (per element), or None where it does not depend on them."""
        with torch.enable_grad():
            u = u.detach().clone().requires_grad_(True)
            ll = loglik(self.transform(u))
            if not ll.requires_grad:
                return None
            g, = torch.autograd.grad(ll.sum(), u, create_graph=True)
            hess, = torch.autograd.grad(g.sum(), u, allow_unused=True)
        g = g.detach()
        return g, torch.zeros_like(g) if hess is None else hess.detach()

    def inform(self, facts, loglik, message=None):
        """One Newton step from the prior location in unconstrained space, on the
        log-likelihood of the observations that depend on the site: the Gaussian
        (Laplace) approximation of prior x local likelihood. Where the likelihood is not
        log-concave there, only the location moves, at most 5 prior scales.

        ``message`` (precision, information), (M, m, 1) each: a Gaussian factor from
        observations further away (:mod:`..lookahead`), multiplied in after the step."""
        if not self.informable:
            return facts
        loc, scale = facts[:2]
        cur = self.curvature(loglik, loc)
        if cur is not None:
            g, hess = cur
            prec = 1 / scale ** 2 - hess.clamp(max=0.0)
            step = (g / prec).clamp(-5 * scale, 5 * scale)
            ok = torch.isfinite(step) & torch.isfinite(prec) & (prec > 0)
            loc = torch.where(ok, loc + step, loc)
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
        return (u - self.mean[j0:j0 + m]) / self.std[j0:j0 + m]

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
        if adapt is not None:
            ctx = adapt.get("context")
            coupled = torch.zeros_like(adapt["shift"]) if ctx is None else \
                torch.einsum("rdp,rp->rd", adapt["coupling"], ctx)
            adapt = (adapt["shift"], adapt["log_factor"], adapt["logits"], coupled)
        if self.dependent:
            transform, support = bounded_transform(*facts[4:])
            return PushedMixture(self.head(h, loc, scale, adapt, defensive), transform, support)
        pooled = None if self.info.plate else (mean, std)
        return PushedMixture(self.head(h, loc, scale, adapt, defensive, pooled),
                             self.transform, self.info.support)


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
