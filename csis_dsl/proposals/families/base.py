"""What every proposal family provides, and the static facts it is built from.

A family is an ``nn.Module`` per latent variable. The network gives it a hidden vector
per instance; the family turns it into a proposal distribution located relative to the
prior ("facts": the prior's location and scale, or its log-probabilities, in this trace),
exactly on the prior's support. Values are flat per instance: ``(rows, de)`` where
``de`` is the number of elements of one instance.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...catalogue.distributions import DISTRIBUTIONS
from ...frontend.checked import Var


DIST_IDS = 64    # embedding rows for distribution names, room for the catalogue to grow


def dist_id(name: str) -> int:
    """A stable id in [1, DIST_IDS) for a distribution name: its place in the catalogue,
    where new distributions are appended, so trained networks keep their meaning."""
    order = list(dict.fromkeys(d.name for d in DISTRIBUTIONS.values()))
    assert len(order) < DIST_IDS, "the catalogue outgrew DIST_IDS"
    return order.index(name) + 1


class LatentInfo:
    """Static facts about one latent variable."""

    def __init__(self, addr: int, v: Var):
        self.name = v.name
        self.addr = addr
        self.dist_name = v.dist
        self.dist = dist_id(v.dist)                           # id for an embedding
        self.family = DISTRIBUTIONS[v.dist_key or v.dist].proposal
        self.plate = not v.is_family   # False: a family whose instances are its elements
        self.inst_shape = tuple(v.family_dims)
        self.elem_shape = tuple(v.elem_shape)
        self.n = int(math.prod(self.inst_shape))
        self.de = int(math.prod(self.elem_shape))
        self.support = v.support
        self.lag = v.max_lag           # a chain of this order (h[t] reads h[t - lag])


class ProposalFamily(nn.Module):
    name = ""
    # whether the site can take part in a joint Laplace fit with others
    # (:mod:`..marginal`); only a continuous family can
    joinable = False

    def __init__(self, info: LatentInfo, config):
        super().__init__()
        self.info = info

    @property
    def feat_dim(self) -> int:
        """The width of one instance's value features (what the next site reads)."""
        raise NotImplementedError

    def fit(self, x: torch.Tensor):
        """Statistics of prior simulations, x: (S, n, de)."""

    def facts(self, d, M: int, width: int, j0: int = 0) -> Tuple[torch.Tensor, ...]:
        """Where to place the proposal of instances j0 .. j0 + width - 1: tensors
        (M, width, ...) from the prior ``d`` (batch (M, width, *element batch)), or from
        the statistics when ``d`` is None."""
        raise NotImplementedError

    def features(self, x: torch.Tensor, j0: int = 0) -> torch.Tensor:
        """x: (M, m, de) values of instances j0.. -> (M, m, feat_dim), standardised."""
        raise NotImplementedError

    def inform(self, facts, loglik, message=None, start=None, prior=None):
        """The facts moved by the observations that depend on this site: ``loglik(x)``
        gives, for candidate values x (M, m, de), the log density of those observations
        (M, m); ``message``, what :meth:`lookahead` gave for these elements; ``start``,
        where a continuous family's Newton steps may begin; ``prior``, the site's exact
        log prior density where a continuous family's fit is to use it instead of the
        Gaussian it locates with. Default: unchanged."""
        return facts

    def instance_prior(self, d, M: int):
        """The exact log prior density of each instance under ``d`` at unconstrained
        values, for :meth:`inform`'s ``prior``; None where the family's own facts serve
        (the default: a finite family's facts are the prior itself)."""
        return None

    def lookahead(self, loglik, pieces, M: int):
        """For a first-order chain (element t reads element t - 1): what the
        observations of the later elements say about each element, as a message
        :meth:`inform` multiplies in (:mod:`..lookahead`): a tuple of tensors
        (M, n, ...), or None where the family has none. ``loglik`` as for
        :meth:`inform`, for all n elements at once; ``pieces(x)``: the prior of every
        element given the elements of x (M, n, de) before it, as (start, stop,
        distribution, where it runs) pieces."""
        return None

    def adapter_shapes(self, context: int = 0) -> dict:
        """Per-instance parameters a refinement adds (name -> shape of one instance),
        each zero at the start: adapting the proposal to one set of observations.
        ``context`` is the width of the site's context features."""
        return {}

    def adapt_step(self, x: torch.Tensor, w: torch.Tensor, params: dict, rate: float,
                   ctx=None, present=None):
        """One closed-form update of the adapters towards the weighted draws: x (K, n,
        de) drawn from the current proposal, w (K, n) their weights (normalised over K,
        zero where an instance is absent), ctx (K, n, p) their context features,
        present (K, n) where the instances exist (None: everywhere)."""

    def forward(self, h: torch.Tensor, facts, adapt=None, defensive: float = 0.0) -> "Proposal":
        """h: (rows, hidden); facts flattened to rows; ``adapt`` the refinement's
        per-instance parameters for these rows, or None -> the proposal over (rows, de).
        ``defensive`` > 0 mixes in a broad component at that weight (the proposal
        widened, or the prior), so that the importance weights stay bounded."""
        raise NotImplementedError

    # ------------------------------------------------------------ shared helpers
    def stats(self, name: str, M: int, width: int, j0: int):
        s = getattr(self, name)[j0:j0 + width]
        return s.unsqueeze(0).expand((M,) + tuple(s.shape))


class Rows:
    """Hidden vectors of M traces x m instances, kept factored -- a part shared by the
    instances of a trace, (M, H), plus per-instance terms x @ W^T -- so that a head reads
    them without the (M * m, H) tensor ever being built (a plate of 1000 instances then
    costs little more than its inputs)."""

    def __init__(self, shared, terms, m: int):
        self.shared, self.terms, self.m = shared, terms, m

    @property
    def shape(self):
        return (self.shared.shape[0] * self.m, self.shared.shape[1])

    def dense(self) -> torch.Tensor:
        out = self.shared.unsqueeze(1)
        for x, W in self.terms:
            out = out + F.linear(x, W)
        return out.expand(self.shared.shape[0], self.m, -1).reshape(self.shape)


def _log1m(p: float) -> float:
    """log(1 - p), -inf at p = 1 (a defensive mixture made of its broad part alone)."""
    return -math.inf if p >= 1.0 else math.log1p(-p)


class OutputLayer(nn.Linear):
    """A family's output layer, its weights small at the start and its bias ``bias``
    (what places the untrained proposal). It keeps that bias: while ``networkless`` is
    set it gives it whatever its input, so the family proposes from the program alone
    -- the prior, or an informed site's exact local posterior, Laplace fit or message
    at its own width -- which inference mixes in where the trained network is
    extrapolating (:func:`csis_dsl.engine.posterior.mixture_draws`)."""

    networkless = False

    def __init__(self, hidden: int, width: int, bias: Optional[torch.Tensor] = None):
        super().__init__(hidden, width)
        with torch.no_grad():
            self.weight.mul_(0.1)
            self.bias.copy_(torch.zeros(width) if bias is None else bias.reshape(width))
        self.register_buffer("initial_bias", self.bias.detach().clone(), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.networkless:
            return self.initial_bias.expand(tuple(h.shape[:-1]) + (self.out_features,))
        return super().forward(h)


def linear(layer: nn.Linear, h) -> torch.Tensor:
    """layer(h) for a hidden tensor (rows, H) or factored :class:`Rows`."""
    if not isinstance(h, Rows):
        return layer(h)
    if getattr(layer, "networkless", False):
        return layer.initial_bias.expand(h.shape[0], -1)
    y = F.linear(h.shared, layer.weight, layer.bias).unsqueeze(1)
    for x, W in h.terms:
        y = y + F.linear(x, layer.weight @ W)
    M = h.shared.shape[0]
    return y.expand(M, h.m, -1).reshape(M * h.m, -1)


class Proposal:
    """A proposal over flat values (rows, de): ``sample()`` and ``log_prob(x)`` -> (rows,)."""

    def sample(self) -> torch.Tensor:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def place(pieces, default, fn, base: int = 0):
    """Per-element tensors from a family's pieces (start, stop, distribution, where it
    runs): ``fn(d, width, start)`` gives a tuple of tensors (M, width, ...) for each
    piece, placed at its elements (counted from ``base``) where it runs; ``default``
    (a tuple of tensors (M, m, ...)) elsewhere. Differentiable in what ``fn`` returns."""
    out = [t.clone() for t in default]
    for a, b, d, active in pieces:
        at = slice(a - base, b - base)
        for k, t in enumerate(fn(d, b - a, a)):
            if active is not None:
                m = active.reshape(active.shape + (1,) * (t.dim() - 2))
                t = torch.where(m, t, out[k][:, at])
            out[k][:, at] = t
    return tuple(out)


def moments(d, M: int, width: int, de: int) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The prior's mean and standard deviation reshaped to (M, width, de), or None where
    the distribution has no closed form."""
    if d is None:
        return None
    try:
        return d.mean.reshape(M, width, de), d.stddev.reshape(M, width, de)
    except (NotImplementedError, AttributeError, RuntimeError):
        return None


def _regression(u, c, w, ridge=1e-4):
    """Weighted least squares of u (K, n, d) on [1, c] (K, n, p), per instance:
    coefficients (n, 1 + p, d) and residual sd (n, d)."""
    X = torch.cat([torch.ones(c.shape[:-1] + (1,), dtype=u.dtype), c], -1)   # (K, n, 1 + p)
    Xw = X * w.unsqueeze(-1)
    A = torch.einsum("kni,knj->nij", Xw, X)
    A = A + ridge * torch.eye(A.shape[-1], dtype=A.dtype) * A.diagonal(dim1=-2, dim2=-1).mean(-1)[:, None, None].clamp(min=1e-12)
    b = torch.einsum("kni,knd->nid", Xw, u)
    beta = torch.linalg.solve(A, b)
    res = u - torch.einsum("kni,nid->knd", X, beta)
    sd = ((w.unsqueeze(-1) * res ** 2).sum(0) / w.sum(0).clamp(min=1e-30).unsqueeze(-1)).sqrt()
    return beta, sd


def affine_match(u, w, shift, log_factor, rate, ctx=None, coupling=None, present=None,
                 max_ratio=5.0):
    """Update an affine adapter u -> u exp(log_factor) + shift [+ coupling @ ctx] (in
    place) so that the draws u (K, n, d) of the current proposal, mapped once more, get
    the weighted conditional mean and sd given the context ctx (K, n, p): the
    regression of u on the context moves ``rate`` of the way to the weighted one, the
    residual sd by (weighted / current) ** rate (at most ``max_ratio`` per step).
    ``present`` (K, n): where each instance exists (default: everywhere)."""
    w = w.to(u.dtype)                                              # (K, n)
    present = torch.ones_like(w) if present is None else present.to(u.dtype)
    K, p = u.shape[0], 0 if ctx is None else ctx.shape[-1]
    if coupling is None or K < 4 * (p + 2):
        ctx, p = u[..., :0], 0
    beta_q, s_q = _regression(u, ctx, present)
    beta_w, s_w = _regression(u, ctx, w)
    ok = (torch.isfinite(beta_w).all(1) & torch.isfinite(beta_q).all(1) & torch.isfinite(s_w)
          & torch.isfinite(s_q) & (s_q > 0) & (s_w > 0)
          & (present.sum(0) > p + 2).unsqueeze(-1))                # (n, d)
    r = (s_w / s_q).clamp(1 / max_ratio, max_ratio) ** rate
    beta_t = beta_q + rate * (beta_w - beta_q)
    new_shift = r * shift + beta_t[:, 0] - r * beta_q[:, 0]
    new_factor = (log_factor + torch.log(r)).clamp(-40.0, 10.0)
    if p:
        # coupling (n, d, p): u'' = r u' + (beta_t - r beta_q) . ctx, with u' = ... + coupling . ctx
        new = r.unsqueeze(-1) * coupling + (beta_t[:, 1:] - r.unsqueeze(1) * beta_q[:, 1:]).transpose(1, 2)
        ok = ok & torch.isfinite(new).all(-1)
        coupling.copy_(torch.where(ok.unsqueeze(-1), new, coupling))
    ok = ok & torch.isfinite(new_shift) & torch.isfinite(new_factor)
    shift.copy_(torch.where(ok, new_shift, shift))
    log_factor.copy_(torch.where(ok, new_factor, log_factor))
