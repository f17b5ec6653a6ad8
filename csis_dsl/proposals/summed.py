"""Allocations summed out: discrete latents proposed after a site, marginalised exactly
in its joint fit (:mod:`.marginal`).

A mixture written with one allocation per observation::

    simplex[2] w ~ Dirichlet(ones(2));
    real[2] mu ~ Normal([1.5, 5.5], 1.0);
    real[2] sigma ~ HalfNormal(2.0);
    for n in range(N) {
        c[n] ~ Categorical(w);
        observe y[n] ~ Normal(mu[c[n]], sigma[c[n]]);
    }

proposes ``w``, ``mu`` and ``sigma`` before the allocations ``c``. Every observation
reads an allocation, so none informs the weights, locations or scales when they are
proposed: they had only the network, which has seen only prior simulations -- with a
thousand real observations, a posterior a hundred times narrower than anything it was
trained on (the earthquake depths: ESS 0 of 5000).

Given the globals, the allocations are independent across the plate, each with finitely
many values, so they sum out exactly::

    log p(y | w, mu, sigma) = sum_n log sum_k p(c[n] = k | w) p(y[n] | c[n] = k, mu, sigma),

a differentiable function of the globals that the joint Laplace fit maximises like any
other log-likelihood. Which latents can be summed so is chosen from the
program (:func:`.context.summable`); this module evaluates that sum
(:func:`summed_loglik`); the allocations
themselves are then proposed from their exact local posteriors given the drawn globals
(:meth:`~.families.finite.FiniteProposal.inform`). A chain of latents summed out the
same way, by a filter's forward pass, is :mod:`.chains`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from ..backend.values import Stored


@dataclass(frozen=True)
class Summed:
    """A discrete latent summed out, and the observations that read it."""
    name: str
    values: Tuple[float, ...]       # its support
    observed: Tuple[str, ...]       # its children, all observed, aligned with it

    def loglik(self, rt, observations, overlay, M: int, family=None, memo=None) -> torch.Tensor:
        """log p(its observations | overlay) with the latent summed out, (M,): per
        instance, log sum over its values of its prior times its observations' density;
        summed over the instances."""
        st = rt.checked.vars[self.name].stmts[0]
        v = rt.checked.vars[self.name]
        shape = (1,) + tuple(v.family_dims) + tuple(v.elem_shape)
        terms = []
        for val in self.values:
            x = torch.full(shape, val)
            here = {**overlay, self.name: Stored(x)}
            lp = rt.stmt_log_prob(st, x, here).reshape(M, -1)
            for o in self.observed:
                ost = rt.checked.vars[o].stmts[0]
                lp = lp + rt.stmt_log_prob(ost, observations[o], here).reshape(M, lp.shape[1], -1).sum(-1)
            terms.append(lp)
        return torch.logsumexp(torch.stack(terms, 0), 0).sum(-1)


def summed_loglik(rt, summed: List, observations, overlay, M: int, families,
                  memo: Optional[dict] = None) -> torch.Tensor:
    """log p(the observations of ``summed`` | overlay) with those latents summed out,
    (M,): each a :class:`Summed` allocation or a :class:`~.chains.Chain`. ``memo``: a
    dict kept across the evaluations of one fit (a chain's last mode, where the next
    evaluation starts looking for its own)."""
    total = torch.zeros(M)
    for s in summed:
        total = total + s.loglik(rt, observations, overlay, M, families[s.name], memo)
    return total
