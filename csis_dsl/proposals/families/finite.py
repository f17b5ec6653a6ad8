"""Finite supports (Bernoulli, Categorical, Binomial, DiscreteUniform): a Categorical
over exactly the prior's support (the integers lo..hi, as indices 0..hi - lo), its logits the prior's log-probabilities in this trace (in a family
produced in order, given the elements before) plus a learned correction."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Independent, constraints

from ...catalogue.distributions import Categorical
from ..lookahead import discrete_messages
from .base import _log1m, linear, OutputLayer, place, Proposal, ProposalFamily


class CategoricalProposal(Proposal):
    def __init__(self, logits, lo=0):
        self.d = Independent(Categorical(logits=logits, validate_args=False), 1)
        self.lo = lo

    def sample(self):
        with torch.no_grad():
            return (self.d.sample() + self.lo).to(torch.get_default_dtype())

    def log_prob(self, x):
        i = x.long() - self.lo
        k = self.d.base_dist.logits.shape[-1]
        ok = ((i >= 0) & (i < k)).all(-1)
        lp = self.d.log_prob(i.clamp(0, k - 1))
        return torch.where(ok, lp, torch.full_like(lp, -float("inf")))


class FiniteProposal(ProposalFamily):
    name = "finite"

    def __init__(self, info, config):
        super().__init__(info, config)
        sup = info.support
        self.lo = 0 if sup is constraints.boolean else int(sup.lower_bound)
        self.k = 2 if sup is constraints.boolean else int(sup.upper_bound) - self.lo + 1
        self.out = OutputLayer(config.hidden, info.de * self.k)

    @property
    def feat_dim(self):
        return self.info.de * self.k

    def facts(self, d, M, width, j0=0):
        """The prior's log-probability of each value: (M, width, de, k), -inf outside its
        support (Binomial: above its total count in this trace)."""
        de, k = self.info.de, self.k
        if d is None:
            return (torch.zeros(M, width, de, k),)
        as_long = isinstance(d, torch.distributions.Categorical)
        try:
            lp = torch.stack([d.log_prob(torch.full(d.batch_shape, float(self.lo + v)).to(
                torch.long if as_long else torch.get_default_dtype())) for v in range(k)], -1)
            lp = lp.reshape(M, width, de, k)
            if hasattr(d, "total_count") and self.lo == 0:
                n = d.total_count.reshape(M, width, de, 1)
                lp = torch.where(torch.arange(k) <= n, lp, torch.full_like(lp, -float("inf")))
            lp = torch.nan_to_num(lp, nan=-float("inf"))
        except (NotImplementedError, RuntimeError, ValueError):
            lp = torch.zeros(M, width, de, k)
        return (lp.detach(),)

    def inform(self, facts, loglik, message=None, start=None, prior=None):
        """Add each value's log-likelihood to its prior log-probability: the proposal
        starts at the exact local posterior of the site given what was drawn before
        (the facts are the exact prior already: ``prior`` is not needed).
        ``message`` (a tuple of one tensor (M, m, 1, k)): the log-likelihood of the
        later observations of a chain given each value (:meth:`lookahead`), added too."""
        lp = facts[0]                                             # (M, m, de, k)
        if self.info.de != 1:
            return facts
        M, m = lp.shape[:2]
        ll = self._values_loglik(loglik, M, m).unsqueeze(2)
        if message is not None:
            ll = ll + message[0]
        ok = torch.isfinite(ll).any(-1, keepdim=True)             # some value explains it
        return (torch.where(ok, lp + ll, lp).detach(),)

    @torch.no_grad()
    def _values_loglik(self, loglik, M, m):
        """loglik at every value of every element: (M, m, k), -inf where NaN."""
        ll = torch.stack([loglik(torch.full((M, m, 1), float(self.lo + v)))
                          for v in range(self.k)], -1)
        return torch.nan_to_num(ll, nan=-math.inf, posinf=0.0)

    @torch.no_grad()
    def lookahead(self, loglik, pieces, M):
        """The exact backward messages of a discrete chain (a hidden Markov model): the
        log-likelihood of the later observations given each value of each element
        (:func:`..lookahead.discrete_messages`), with the transition probabilities read
        from the prior given every constant path."""
        if self.info.de != 1:
            return None
        n, k = self.info.n, self.k
        ll = self._values_loglik(loglik, M, n)                               # (M, n, k)
        default = (torch.zeros(M, n, 1, k),)
        # log p(element t = j | element t - 1 = i): the prior along the path of all i's
        log_t = torch.stack([place(pieces(torch.full((M, n, 1), float(self.lo + i))), default,
                                   lambda d, width, a: self.facts(d, M, width, a))[0][:, :, 0]
                             for i in range(k)], 2)                          # (M, n, k_i, k_j)
        return (discrete_messages(ll, log_t).unsqueeze(2),)

    def features(self, x, j0=0):
        oh = F.one_hot((x.long() - self.lo).clamp(0, self.k - 1), self.k)
        return oh.reshape(x.shape[:-1] + (self.info.de * self.k,)).to(torch.get_default_dtype())

    def adapter_shapes(self, context: int = 0):
        return {"logits": (self.info.de, self.k)}

    @torch.no_grad()
    def adapt_step(self, x, w, params, rate, ctx=None, present=None):
        """Move each instance's logits by rate x (log weighted frequency - log frequency)
        of every value among the draws."""
        K = x.shape[0]
        oh = F.one_hot((x.long() - self.lo).clamp(0, self.k - 1), self.k).to(w.dtype)  # (K,n,de,k)
        present = (torch.ones_like(w) if present is None else present.to(w.dtype))[..., None, None]
        eps = 0.5 / K
        p_q = (present * oh).sum(0) / present.sum(0).clamp(min=1.0)
        p_w = (w[..., None, None] * oh).sum(0)
        delta = torch.log(p_w + eps) - torch.log(p_q + eps)
        ok = torch.isfinite(delta) & (present.sum(0) > 1)
        params["logits"].add_(torch.where(ok, rate * delta, torch.zeros_like(delta)))

    def forward(self, h, facts, adapt=None, defensive=0.0):
        prior_logp = facts[0]
        logits = prior_logp + linear(self.out, h).view(h.shape[0], self.info.de, self.k)
        if adapt is not None:
            logits = logits + adapt["logits"]
        logits = torch.where(torch.isfinite(prior_logp), logits,
                             torch.full_like(logits, -float("inf")))
        if defensive:       # (1 - defensive) q + defensive prior
            logits = torch.logaddexp(torch.log_softmax(logits, -1) + _log1m(defensive),
                                     torch.log_softmax(prior_logp, -1) + math.log(defensive))
        return CategoricalProposal(logits, self.lo)


FAMILY = FiniteProposal
