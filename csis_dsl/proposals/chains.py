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
  filter runs in float64, its recursions as parallel prefix scans;
* the same chain observed through anything smooth in it (``Poisson(exp(x[t]))``, a
  stochastic volatility's ``Normal(0, exp(h[t] / 2))``): the Laplace approximation of
  that integral, the observations expanded to second order at the chain's mode
  (:func:`chain_mode`: Newton's method, each step the Kalman smoother's mean, halved
  until the log posterior improves), by differences in float64 a hundredth of a prior
  standard deviation apart.

All run in log2 n batched steps rather than n: the joint fit differentiates them twice
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
from .marginal import line_search


@dataclass(frozen=True)
class Chain:
    """A first-order chain summed out, and the observations that read it: finite
    (``values`` its support) or linear-Gaussian (``values`` None)."""
    name: str
    values: Optional[Tuple[float, ...]]
    observed: Tuple[str, ...]
    gaussian: bool = True         # (continuous) its observations are Gaussian in it

    def loglik(self, rt, observations, overlay, M: int, family, memo=None) -> torch.Tensor:
        """log p(the chain's observations | overlay) with the chain summed out, (M,);
        ``memo``: see :func:`~.summed.summed_loglik`."""
        if self.values is not None:
            return _forward(self, rt, observations, overlay, M)
        return _kalman(self, rt, observations, overlay, M, family, memo)


def _at(chain: Chain, rt, observations, overlay, path: torch.Tensor, ll: bool = True,
        priors: bool = True):
    """The chain at ``path`` (M, n): (with ``ll``) its observations' log density per
    element (M, n), and (with ``priors``) every element's prior given the path before
    it, as (start, stop, distribution with batch (M, stop - start))."""
    v = rt.checked.vars[chain.name]
    M, n = path.shape
    here = {**overlay, chain.name: Stored(path, torch.ones(M, n, dtype=torch.bool))}
    out = 0.0
    for o in chain.observed if ll else ():
        st = rt.checked.vars[o].stmts[0]
        out = out + rt.stmt_log_prob(st, observations[o], here).reshape(M, n, -1).sum(-1)
    pieces = rt.plan.pieces[chain.name] if priors else []
    return out, [p.elements + (rt.dist_for(p.stmt, p.loops, None, None, here,
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


def _kalman(chain: Chain, rt, observations, overlay, M: int, family, memo=None) -> torch.Tensor:
    """The Kalman filter's log marginal likelihood of a linear-Gaussian chain; with
    observations not Gaussian in it, its Laplace approximation: the observations
    expanded to second order at the chain's mode (:func:`chain_mode`, outside the fit's
    derivatives, from the mode found at the fit's last evaluation, ``memo``); NaN where
    the mode was not found."""
    n = rt.checked.vars[chain.name].family_dims[0]
    r = family.stats("mean", M, n, 0).reshape(M, n)       # a reference path and a step
    h = family.stats("std", M, n, 0).reshape(M, n).clamp(min=1e-3)   # at the prior's scale
    A, B, s = _transitions(chain, rt, observations, overlay, r, h)
    if chain.gaussian:
        return kalman_filter(A, B, s, *_expanded(chain, rt, observations, overlay, r, h)
                             ).to(torch.get_default_dtype())
    r = r.to(torch.float64)
    h = 1e-2 * h.to(torch.float64)   # differences of non-quadratics: small steps, float64
    memo = {} if memo is None else memo
    last = memo.get(chain.name)
    if last is not None and last.shape == r.shape:
        r = last
    with torch.no_grad():
        r, found = chain_mode(A.detach(), B.detach(), s.detach(), r,
                              lambda u: _expanded(chain, rt, observations, overlay, u, h)[1:],
                              lambda u: _at(chain, rt, observations, overlay, u, priors=False)[0])
    memo[chain.name] = r
    out = kalman_filter(A, B, s, *_expanded(chain, rt, observations, overlay, r, h))
    return torch.where(found, out, torch.full_like(out, float("nan"))).to(torch.get_default_dtype())


MODE_STEPS = 25      # Newton steps at most to a chain's mode
HALVINGS = 10        # step halvings each


def chain_mode(A, B, s, r, expand, value, steps: int = MODE_STEPS):
    """The mode of a chain's posterior, u[t] ~ Normal(A[t] u[t - 1] + B[t], s[t]) times
    every element's observation density, by Newton's method from the path r (M, n):
    each step goes to the smoothed mean of the chain with the observations expanded to
    second order at the current path (:func:`kalman_smoother`; their curvature clamped
    at 0), halved per row until the log posterior improves -- far from the mode the
    expansion of counts with a log link (exp(u)) sends a full step far past it. Exact in
    one step for observations Gaussian in the chain.

    ``expand(u)`` -> (f0, g, lam), the observations' log density, gradient and
    curvature per element (M, n); ``value(u)`` -> f0 alone. Returns (the path, where
    (M,) the steps converged: no element would move by more than 0.1 of its posterior
    standard deviation)."""
    dd = torch.float64
    A, B, s, r = (t.to(dd) for t in (A, B, s, r))

    def objective(u, f0):
        prev = torch.cat([torch.zeros_like(u[:, :1]), u[:, :-1]], 1)
        return (f0.to(dd) - 0.5 * ((u - A * prev - B) / s) ** 2).sum(-1)

    f0, g, lam = (x.to(dd) for x in expand(r))
    obj = objective(r, f0)
    found = torch.zeros(r.shape[0], dtype=torch.bool)
    for _ in range(steps):
        lam = lam.clamp(min=0.0)
        step = kalman_smoother(A, B, s, r, g, lam) - r
        fine = torch.isfinite(step).all(-1) & torch.isfinite(obj)
        step = torch.where(fine.unsqueeze(-1), step, torch.zeros_like(step))
        # the step's length in posterior standard deviations, element by element
        length = (step.abs() * (lam + s ** -2).sqrt()).amax(-1)
        found = fine & (length < 0.1)
        if bool((found | ~fine).all()):
            break
        t, moved = line_search(lambda u: objective(u, value(u)), r, step, obj,
                               fine & ~found, HALVINGS)
        r = torch.where(moved.unsqueeze(-1), r + t.unsqueeze(-1) * step, r)
        # a whole step this short lands within 0.1 sd of the mode (Newton's convergence
        # is quadratic there); one too short to improve the objective in its precision
        # starts at the mode
        found = found | (fine & moved & (t == 1) & (length < 0.3)) \
            | (fine & ~moved & (length < 0.5))
        if not bool(moved.any()) or bool((found | ~fine).all()):
            break
        f0, g, lam = (x.to(dd) for x in expand(r))
        obj = torch.where(moved, objective(r, f0), obj)
    return r, found


def _transitions(chain: Chain, rt, observations, overlay, r, h):
    """Every element's prior given the one before, u[t] ~ Normal(A[t] u[t - 1] + B[t],
    s[t]), (M, n) each in float64, read from the chain's statements at the paths r and
    r + h (exact: the locations are affine in the element before)."""
    M, n = r.shape
    dd = torch.float64
    _, priors0 = _at(chain, rt, observations, overlay, r, ll=False)
    _, priors1 = _at(chain, rt, observations, overlay, r + h, ll=False)
    loc0, loc1, s = torch.zeros(M, n, dtype=dd), torch.zeros(M, n, dtype=dd), \
        torch.zeros(M, n, dtype=dd)
    for (a, b, d0), (_, _, d1) in zip(priors0, priors1):
        loc0[:, a:b] = d0.mean.reshape(M, b - a).to(dd)
        loc1[:, a:b] = d1.mean.reshape(M, b - a).to(dd)
        s[:, a:b] = d0.stddev.reshape(M, b - a).to(dd)
    r_prev = torch.cat([torch.zeros_like(r[:, :1]), r[:, :-1]], 1).to(dd)
    h_prev = torch.cat([torch.ones_like(h[:, :1]), h[:, :-1]], 1).to(dd)
    A = (loc1 - loc0) / h_prev
    B = loc0 - A * r_prev
    A = torch.cat([torch.zeros_like(A[:, :1]), A[:, 1:]], 1)      # element 0 reads none
    return A, B, s


def _expanded(chain: Chain, rt, observations, overlay, r, h):
    """The chain's observations' log density per element to second order about the
    reference path r, f0 + g (u - r) - lam / 2 (u - r)^2, by differences at r, r + h,
    r - h (exact for a quadratic). Returns (r, f0, g, lam), (M, n) each in float64."""
    f0, fp, fm = (_at(chain, rt, observations, overlay, path, priors=False)[0]
                  for path in (r, r + h, r - h))
    dd = torch.float64
    f0, fp, fm, r, h = (t.to(dd) for t in (f0, fp, fm, r, h))
    return r, f0, (fp - fm) / (2 * h), -(fp - 2 * f0 + fm) / h ** 2


def kalman_filter(A, B, s, r, f0, g, lam):
    """log of the integral over u of prod_t N(u[t]; A[t] u[t - 1] + B[t], s[t]) (A[0] =
    0) times exp(f0[t] + g[t] w[t] - lam[t] w[t]^2 / 2), w = u - r; all (M, n): the
    Kalman filter's prediction-error decomposition (:func:`_filtered`). NaN where a
    variance stops being positive (a likelihood not concave in the chain)."""
    v, den, m = _filtered(A, B, s, r, g, lam)
    m_prev = torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], 1)
    dev = A * m_prev + B - r                          # predicted mean - reference
    terms = f0 - 0.5 * torch.log(den) + (v * g ** 2 + 2 * g * dev - lam * dev ** 2) / (2 * den)
    out = terms.sum(-1)
    ok = (v > 0).all(-1) & (den > 0).all(-1)
    return torch.where(ok, out, torch.full_like(out, float("nan")))


def kalman_smoother(A, B, s, r, g, lam):
    """The smoothed means (M, n) of the chain of :func:`kalman_filter` given all its
    observation factors -- the mode of the chain's Gaussian posterior -- by the
    Rauch-Tung-Striebel recursion, m_s[t] = m[t] + J[t] (m_s[t + 1] - A[t + 1] m[t] -
    B[t + 1]) with J[t] = P[t] A[t + 1] / v[t + 1] (m, P the filtered means and
    variances, v the predicted variances), an affine recursion backwards in time, run
    as a prefix scan like the filter's."""
    v, den, m = _filtered(A, B, s, r, g, lam)
    P = v / den
    A_next = torch.cat([A[:, 1:], torch.zeros_like(A[:, :1])], 1)
    B_next = torch.cat([B[:, 1:], torch.zeros_like(B[:, :1])], 1)
    v_next = torch.cat([v[:, 1:], torch.ones_like(v[:, :1])], 1)
    J = P * A_next / v_next                           # 0 at the last element
    c = m - J * (A_next * m + B_next)
    return _affine_scan(J.flip(1), c.flip(1)).flip(1)


def _filtered(A, B, s, r, g, lam):
    """The Kalman filter's predicted variances v, the factors den = 1 + lam v, and the
    filtered means, (M, n) each; its two recursions run as parallel prefix scans (log2 n
    batched steps, cheap to differentiate twice, where the filter element by element is
    n small steps): the predicted variances by products of 2 x 2 matrices (each step is
    a Mobius map of the variance before), the filtered means by composing affine maps."""
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
    return v, den, _affine_scan(A / den, (B + r * (den - 1) + v * g) / den)


def _affine_scan(alpha, beta):
    """x[t] = alpha[t] x[t - 1] + beta[t] from x[-1] = 0 (alpha[0] is not read), all
    (M, n): the composition of the affine maps by a prefix scan."""
    n = alpha.shape[1]
    k = 1
    while k < n:
        beta = torch.cat([beta[:, :k], alpha[:, k:] * beta[:, :-k] + beta[:, k:]], 1)
        alpha = torch.cat([alpha[:, :k], alpha[:, k:] * alpha[:, :-k]], 1)
        k *= 2
    return beta
