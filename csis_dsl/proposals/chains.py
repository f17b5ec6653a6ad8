"""Chains summed out: a Markov chain proposed after a site, marginalised in its joint
fit (:mod:`.marginal`) by the forward pass of a filter.

A state-space model -- the local level of the Nile's flow::

    sigma_level ~ HalfNormal(100.0);
    sigma_obs ~ HalfNormal(200.0);
    level[0] ~ Normal(1000.0, 300.0);
    for t in range(1, T) { level[t] ~ Normal(level[t - 1], sigma_level); }
    for t in range(T) { observe y[t] ~ Normal(level[t], sigma_obs); }

-- proposes the scales before the chain. Every observation reads an element of the
chain, so none informed the scales when they were proposed: they had only the network,
trained on prior simulations, and the chain's look-ahead messages (:mod:`.lookahead`),
exact given the scales, were only as good as the scales drawn (Nile: ESS/N 0.09). A
hidden Markov model's rates and transition probabilities are in the same place.

Given what the fit holds, the chain and its observations have a marginal likelihood
the forward pass of a filter computes exactly, and differentiably in the fit's values:

* a chain with finitely many values (a hidden Markov model): the forward algorithm,
  alpha[t](j) = log sum_i exp(alpha[t - 1](i) + log p(z[t] = j | z[t - 1] = i))
  + log p(y[t] | z[t] = j), with the transition probabilities read from the chain's
  statements along every constant path (as its look-ahead reads them), run as a
  product of matrices in the log semiring taken by pairs;
* a linear-Gaussian chain (each element ``Normal`` with a location affine in the
  element before and a scale that does not read it, on the real line, observed through
  ``Normal``s whose locations are affine in it): the Kalman filter's prediction-error
  decomposition. The affine coefficients and the observations' quadratics are read by
  evaluating the statements at three paths a prior standard deviation apart (exact for
  what is affine / quadratic, and well conditioned in float32 at the prior's scale); the
  filter runs in float64, its recursions as parallel prefix scans.

Both run in log2 n batched steps rather than n: the joint fit differentiates them twice
(its Newton steps' Hessians), for every row of a training batch.

Which chains can be summed so is chosen from the program (:func:`.context.chainable`).
The chain itself is then proposed as before, element by element, located by its
look-ahead messages given the drawn values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..backend.values import Stored


@dataclass(frozen=True)
class Chain:
    """A first-order chain summed out, and the observations that read it: finite
    (``values`` its support) or linear-Gaussian (``values`` None)."""
    name: str
    values: Optional[Tuple[float, ...]]
    observed: Tuple[str, ...]

    def loglik(self, rt, observations, overlay, M: int, family) -> torch.Tensor:
        """log p(the chain's observations | overlay) with the chain summed out, (M,)."""
        if self.values is not None:
            return _forward(self, rt, observations, overlay, M)
        return _kalman(self, rt, observations, overlay, M, family)


def _at(chain: Chain, rt, observations, overlay, path: torch.Tensor, priors: bool = True):
    """The chain at ``path`` (M, n): its observations' log density per element (M, n),
    and (with ``priors``) every element's prior given the path before it, as (start,
    stop, distribution with batch (M, stop - start))."""
    v = rt.checked.vars[chain.name]
    M, n = path.shape
    here = {**overlay, chain.name: Stored(path, torch.ones(M, n, dtype=torch.bool))}
    ll = 0.0
    for o in chain.observed:
        st = rt.checked.vars[o].stmts[0]
        ll = ll + rt.stmt_log_prob(st, observations[o], here).reshape(M, n, -1).sum(-1)
    pieces = rt.plan.pieces[chain.name] if priors else []
    return ll, [p.elements + (rt.dist_for(p.stmt, p.loops, None, None, here,
                                          elem_shape=v.elem_shape),) for p in pieces]


def _forward(chain: Chain, rt, observations, overlay, M: int) -> torch.Tensor:
    """The forward algorithm in log space."""
    n = rt.checked.vars[chain.name].family_dims[0]
    k = len(chain.values)
    lls, trans = [], []
    for vi in chain.values:
        ll, priors = _at(chain, rt, observations, overlay, torch.full((M, n), vi))
        lls.append(ll)
        # log p(element t = j | element t - 1 = i), i the path's value: (M, n, k_j)
        row = torch.zeros(M, n, k)
        for a, b, d in priors:
            shape = tuple(d.batch_shape)
            row[:, a:b] = torch.stack([d.log_prob(torch.full(shape, vj)).reshape(M, b - a)
                                       for vj in chain.values], -1)
        trans.append(row)
    ll = torch.stack(lls, -1)                       # (M, n, k)
    log_t = torch.stack(trans, 2)                   # (M, n, k_i, k_j)
    alpha = log_t[:, 0, 0] + ll[:, 0]               # element 0 reads no element before
    # the forward recursion alpha[t] = alpha[t - 1] (x) L[t] in the log semiring, with
    # L[t](i, j) = log p(element t = j | i) + its own log-likelihood at j: the product
    # of the L's by pairs (log2 n batched steps, cheap to differentiate twice)
    L = log_t[:, 1:] + ll[:, 1:].unsqueeze(2)
    while L.shape[1] > 1:
        odd = L[:, L.shape[1] - 1:] if L.shape[1] % 2 else L[:, :0]
        L = torch.cat([torch.logsumexp(L[:, 0:-1:2].unsqueeze(-1) + L[:, 1::2].unsqueeze(-3), -2),
                       odd], 1)
    if L.shape[1]:
        alpha = torch.logsumexp(alpha.unsqueeze(-1) + L[:, 0], 1)
    return torch.logsumexp(alpha, -1)


def _kalman(chain: Chain, rt, observations, overlay, M: int, family) -> torch.Tensor:
    """The Kalman filter's log marginal likelihood of a linear-Gaussian chain."""
    n = rt.checked.vars[chain.name].family_dims[0]
    r = family.stats("mean", M, n, 0).reshape(M, n)       # a reference path and a step
    h = family.stats("std", M, n, 0).reshape(M, n).clamp(min=1e-3)   # at the prior's scale
    f0, priors0 = _at(chain, rt, observations, overlay, r)
    fp, priors1 = _at(chain, rt, observations, overlay, r + h)
    fm, _ = _at(chain, rt, observations, overlay, r - h, priors=False)
    dd = torch.float64
    f0, fp, fm, r, h = (t.to(dd) for t in (f0, fp, fm, r, h))
    # each element's observations: f0 + g (u - r) - lam / 2 (u - r)^2
    g = (fp - fm) / (2 * h)
    lam = -(fp - 2 * f0 + fm) / h ** 2
    # each element's prior given the one before: u[t] ~ Normal(a[t] u[t - 1] + b[t], s[t])
    loc0, loc1, s = torch.zeros(M, n, dtype=dd), torch.zeros(M, n, dtype=dd), \
        torch.zeros(M, n, dtype=dd)
    for (a, b, d0), (_, _, d1) in zip(priors0, priors1):
        loc0[:, a:b] = d0.mean.reshape(M, b - a).to(dd)
        loc1[:, a:b] = d1.mean.reshape(M, b - a).to(dd)
        s[:, a:b] = d0.stddev.reshape(M, b - a).to(dd)
    r_prev = torch.cat([torch.zeros_like(r[:, :1]), r[:, :-1]], 1)
    h_prev = torch.cat([torch.ones_like(h[:, :1]), h[:, :-1]], 1)
    A = (loc1 - loc0) / h_prev
    B = loc0 - A * r_prev
    A = torch.cat([torch.zeros_like(A[:, :1]), A[:, 1:]], 1)      # element 0 reads none
    return kalman_filter(A, B, s, r, f0, g, lam).to(torch.get_default_dtype())


def kalman_filter(A, B, s, r, f0, g, lam):
    """log of the integral over u of prod_t N(u[t]; A[t] u[t - 1] + B[t], s[t]) (A[0] =
    0) times exp(f0[t] + g[t] w[t] - lam[t] w[t]^2 / 2), w = u - r; all (M, n): the
    Kalman filter's prediction-error decomposition, with the filter's two recursions
    run as parallel prefix scans (log2 n batched steps, cheap to differentiate twice,
    where the filter element by element is n small steps): the predicted variances by
    products of 2 x 2 matrices (each step is a Mobius map of the variance before), the
    filtered means by composing affine maps. NaN where a variance stops being positive
    (a likelihood not concave in the chain)."""
    M, n = A.shape
    lam_prev = torch.cat([torch.zeros_like(lam[:, :1]), lam[:, :-1]], 1)
    s2 = s ** 2
    # predicted variance v[t] = T[t](v[t - 1]), T = [[A^2 + s^2 lam', s^2], [lam', 1]]
    # (lam' of element t - 1); element 0's map is the constant s[0]^2
    a, b, c, d = A ** 2 + s2 * lam_prev, s2, lam_prev, torch.ones_like(s2)
    k = 1
    while k < n:         # element t's map after element t - k's: (their product)
        a2, b2, c2, d2 = (torch.cat([x[:, :k], y[:, k:] * z[:, :-k] + w[:, k:] * u[:, :-k]], 1)
                          for x, y, z, w, u in ((a, a, a, b, c), (b, a, b, b, d),
                                                (c, c, a, d, c), (d, c, b, d, d)))
        a, b, c, d = (x / d2 for x in (a2, b2, c2, d2))   # defined up to scale
        k *= 2
    v = b / d                                         # predicted variances
    den = 1 + lam * v
    # filtered mean m[t] = alpha[t] m[t - 1] + beta[t]
    alpha = A / den
    beta = (B + r * (den - 1) + v * g) / den
    k = 1
    while k < n:
        beta = torch.cat([beta[:, :k], alpha[:, k:] * beta[:, :-k] + beta[:, k:]], 1)
        alpha = torch.cat([alpha[:, :k], alpha[:, k:] * alpha[:, :-k]], 1)
        k *= 2
    m_prev = torch.cat([torch.zeros_like(beta[:, :1]), beta[:, :-1]], 1)
    dev = A * m_prev + B - r                          # predicted mean - reference
    terms = f0 - 0.5 * torch.log(den) + (v * g ** 2 + 2 * g * dev - lam * dev ** 2) / (2 * den)
    out = terms.sum(-1)
    ok = (v > 0).all(-1) & (den > 0).all(-1)
    return torch.where(ok, out, torch.full_like(out, float("nan")))
