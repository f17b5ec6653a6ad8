"""Look-ahead for a chain: the observations of later elements, brought to each element.

In a chain (``h[t] ~ D(f(h[t - 1]))``, observed through ``y[t] ~ ...(h[t])``) the
informed proposal of element t starts from its prior given h[t - 1] times its own
observation's likelihood: the *filtering* conditional p(h[t] | h[t - 1], y[t]). The
conditional the proposal should match, p(h[t] | h[t - 1], y[t:]), also weighs every later
observation, through the chain. This module computes that extra factor, a *message*
per element: the backward pass of a smoother.

* Discrete elements (a hidden Markov model): the exact backward recursion of the
  forward-backward algorithm, in log space, with the transition probabilities read from
  the prior (:func:`discrete_messages`). The informed proposal is then exactly
  p(z[t] | z[t - 1], y, the chain's parameters).
* Continuous one-dimensional elements: a backward information filter (the backward pass
  of a Kalman smoother, in information form) in the family's unconstrained space, on
  the chain linearised at a reference path (:func:`gaussian_messages`):

  - the reference path: the chain's mode given its data (:func:`~.chains.chain_mode`,
    Newton's method on the whole chain, each step the Kalman smoother's mean), so
    that the later observations are expanded where the posterior puts the chain --
    not at each element's own fit, which one count of zero sends far off; with
    Gaussian observations, where any expansion is exact, each element's own fit;
  - each element's likelihood as a Gaussian in u: precision ``lam = -d2 loglik``
    (clamped at 0) and information ``lam * ref + d loglik``, at the reference;
  - each transition as u[t + 1] ~ Normal(a[t] u[t] + b[t + 1], s[t + 1]): its prior's
    location and scale in unconstrained space (moment matching, as the proposal locates
    itself) at the reference, and its derivative a by automatic differentiation;
  - the message to element t, (P[t], e[t]): the Gaussian integral over u[t + 1] of the
    transition times element t + 1's likelihood times its own message.

  For a linear-Gaussian chain (a random walk or AR(1) with Gaussian observations) the
  linearisation is exact, and so is the informed proposal: the smoothing conditional
  given the chain's parameters. Elsewhere (counts with a log link, a stochastic
  volatility) it is the Laplace approximation at the chain's mode, which the network
  corrects.

A message only locates the proposal; the proposal's own density is what is scored, so
the importance weights stay exact either way. Only first-order chains (element t reads
element t - 1, not t - 2) of one-dimensional elements get messages.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch


def gaussian_messages(family, loglik: Callable, transition: Callable, M: int, n: int
                      ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The message (precision, information) of every element, (M, n, 1) each, or None.

    ``loglik(x)``: the local log-likelihood (M, n) of every element at values x
    (M, n, 1); ``transition(u)``: the prior (location, scale) of every element in
    unconstrained space, (M, n, 1) each, given the elements before at unconstrained
    values u (differentiable in u). The chain is linearised at its mode
    (:func:`~.chains.chain_mode`, from the prior simulations' means); a row whose mode
    was not found gets no message (its elements are proposed from their own data).
    Where the likelihood is a quadratic in the chain (``family.quadratic``: Gaussian
    observations), its expansion is exact anywhere: the reference is then each
    element's own fit, as the transitions are read there."""
    from .chains import chain_mode
    from .families.continuous import local_fit
    ref = family.stats("mean", M, n, 0)
    if getattr(family, "quadratic", False):
        ref = family.inform((ref, family.stats("std", M, n, 0)) * 2, loglik)[0]
        lin = linearised(family, loglik, transition, ref)
        return None if lin is None else _backward(ref, *lin)
    lin = linearised(family, loglik, transition, ref)
    if lin is None:
        return None
    _, _, A, b, s2, first = lin
    dd = torch.float64
    zero = torch.zeros(M, 1, dtype=dd)
    A_ = torch.cat([zero, A[..., 0].to(dd)], 1)
    B_ = torch.cat([first[0][..., 0].to(dd), b[..., 0].to(dd)], 1)
    s_ = torch.cat([first[1][..., 0].to(dd), s2[..., 0].to(dd).sqrt()], 1)
    dtype = ref.dtype

    def expand(u):
        u = u.to(dtype).unsqueeze(-1)
        ll, g, hvp = local_fit(loglik, family.transform, u)
        return ll, g[..., 0], -hvp(torch.ones_like(u))[..., 0]

    def value(u):
        with torch.no_grad():
            return loglik(family.transform(u.to(dtype).unsqueeze(-1)))

    mode, found = chain_mode(A_, B_, s_, ref[..., 0], expand, value)
    ref = torch.where(found.reshape(M, 1, 1), mode.to(dtype).unsqueeze(-1), ref)
    lin = linearised(family, loglik, transition, ref)
    if lin is None:
        return None
    P, e = _backward(ref, *lin)
    keep = found.reshape(M, 1, 1)
    return torch.where(keep, P, torch.zeros_like(P)), torch.where(keep, e, torch.zeros_like(e))


def linearised(family, loglik: Callable, transition: Callable, ref: torch.Tensor):
    """The chain at the reference path ref (M, n, 1): every element's local likelihood as
    a Gaussian factor in u, precision ``lam = -d2 loglik`` (clamped at 0) and information
    ``eta = lam ref + d loglik``, and every transition as u[t + 1] ~ Normal(A[t] u[t] +
    b[t], s[t]) (A by automatic differentiation), element 0's prior (location, scale);
    None where the likelihood does not depend on the chain or its elements do not read
    each other."""
    cur = family.curvature(loglik, ref)
    if cur is None:
        return None
    g, hess = cur
    lam = (-hess).clamp(min=0.0)
    eta = lam * ref + g
    with torch.enable_grad():
        u = ref.detach().clone().requires_grad_(True)
        loc, scale = transition(u)
        if not loc.requires_grad:             # the elements do not read each other
            return None
        a, = torch.autograd.grad(loc.sum(), u)   # a[t] = d loc[t + 1] / d u[t]
    loc, scale = loc.detach(), scale.detach()
    # the transition into element t + 1: u[t + 1] = a[t] u[t] + b[t + 1] + s[t + 1] noise
    b = loc[:, 1:] - a[:, :-1] * ref[:, :-1]
    return lam, eta, a[:, :-1], b, scale[:, 1:] ** 2, (loc[:, :1], scale[:, :1])


def _backward(ref, lam, eta, A, b, s2, first):
    """The backward information filter on the linearised chain: the message to element
    t, (P[t], e[t]), the Gaussian integral over u[t + 1] of the transition times element
    t + 1's likelihood times its own message."""
    M, n = ref.shape[:2]
    ok = torch.isfinite(A) & torch.isfinite(b) & torch.isfinite(s2) & torch.isfinite(lam[:, 1:]) \
        & torch.isfinite(eta[:, 1:])
    zero = torch.zeros_like(ref[:, 0])        # (M, 1)
    P, e = [zero], [zero]                     # the last element has nothing after it
    for t in range(n - 2, -1, -1):
        lam_next = lam[:, t + 1] + P[-1]
        eta_next = eta[:, t + 1] + e[-1]
        denom = 1 + s2[:, t] * lam_next
        p_t = A[:, t] ** 2 * lam_next / denom
        e_t = A[:, t] * (eta_next - b[:, t] * lam_next) / denom
        good = ok[:, t] & torch.isfinite(p_t) & torch.isfinite(e_t)
        P.append(torch.where(good, p_t, zero))
        e.append(torch.where(good, e_t, zero))
    P = torch.stack(P[::-1], 1).reshape(M, n, 1)
    e = torch.stack(e[::-1], 1).reshape(M, n, 1)
    return P, e


def discrete_messages(ll: torch.Tensor, log_t: torch.Tensor) -> torch.Tensor:
    """The backward messages of a discrete chain (exact: the backward pass of the
    forward-backward algorithm), (M, n, k): element t's message at value i is the log
    likelihood of the observations of elements t + 1 .. n - 1 given element t = i, up to
    a constant per trace and element.

    ``ll`` (M, n, k): each element's own log-likelihood at each value; ``log_t``
    (M, n, k, k): log p(element t = j | element t - 1 = i) at [:, t, i, j]."""
    M, n, k = ll.shape
    zero = torch.zeros(M, k, dtype=ll.dtype)
    out = [zero]
    for t in range(n - 2, -1, -1):
        nxt = ll[:, t + 1] + out[-1]                                  # (M, k_j)
        b = torch.logsumexp(log_t[:, t + 1] + nxt.unsqueeze(1), -1)  # (M, k_i)
        b = b - b.max(-1, keepdim=True).values
        # no value explains the later data (or it cannot be computed): no message
        good = torch.isfinite(b).any(-1, keepdim=True) & ~torch.isnan(b).any(-1, keepdim=True)
        out.append(torch.where(good, b.nan_to_num(nan=0.0), zero))
    return torch.stack(out[::-1], 1)
