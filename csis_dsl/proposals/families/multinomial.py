"""Multinomial counts (a vector of K counts with a fixed total): a Multinomial over
exactly the prior's support -- the prior's total count in this trace, its probabilities
the prior's times a learned correction. The defensive component is the prior itself."""
from __future__ import annotations

import math

import torch

from ...catalogue.distributions import _Multinomial
from .base import _log1m, linear, OutputLayer, Proposal, ProposalFamily


class MultinomialProposal(Proposal):
    def __init__(self, total, logits, prior_logits=None, defensive=0.0):
        self.total, self.logits = total, logits        # (rows,), (rows, K)
        self.prior_logits, self.defensive = prior_logits, defensive

    def _d(self, logits):
        return _Multinomial(self.total, torch.softmax(logits, -1))

    def sample(self):
        x = self._d(self.logits).sample()
        if self.defensive:
            broad = torch.rand(x.shape[:-1]) < self.defensive
            x = torch.where(broad.unsqueeze(-1), self._d(self.prior_logits).sample(), x)
        return x

    def log_prob(self, x):
        lp = self._d(self.logits).log_prob(x)
        if self.defensive:
            lp = torch.logaddexp(lp + _log1m(self.defensive),
                                 self._d(self.prior_logits).log_prob(x)
                                 + math.log(self.defensive))
        return lp


class MultinomialFamily(ProposalFamily):
    name = "multinomial"

    def __init__(self, info, config):
        super().__init__(info, config)
        self.out = OutputLayer(config.hidden, info.de)
        self.register_buffer("total", torch.ones(info.n))
        self.register_buffer("share", torch.full((info.n, info.de), 1.0 / info.de))

    @property
    def feat_dim(self):
        return self.info.de

    @torch.no_grad()
    def fit(self, x):
        x = x.to(torch.get_default_dtype())
        self.total.copy_(x.sum(-1).mean(0).round())
        self.share.copy_((x.sum(0) / x.sum(0).sum(-1, keepdim=True).clamp(min=1)))

    def facts(self, d, M, width, j0=0):
        """The prior's total count (M, width) and log-probabilities (M, width, K)."""
        if d is None or not hasattr(d, "total_count"):
            total = self.stats("total", M, width, j0)
            share = self.stats("share", M, width, j0)
        else:
            total = d.total_count.reshape(M, width)
            share = d.probs.reshape(M, width, self.info.de)
        return total.detach(), torch.log(share.clamp(min=1e-30)).detach()

    def features(self, x, j0=0):
        x = x.to(torch.get_default_dtype())
        return x / x.sum(-1, keepdim=True).clamp(min=1.0) * self.info.de - 1.0

    def adapter_shapes(self, context: int = 0):
        return {"logits": (self.info.de,)}

    @torch.no_grad()
    def adapt_step(self, x, w, params, rate, ctx=None, present=None):
        """Move the logits by rate x (log weighted share - log share) of each category
        among the draws."""
        x = x.to(w.dtype)
        present = (torch.ones_like(w) if present is None else present.to(w.dtype))
        share_q = (present.unsqueeze(-1) * x).sum(0)
        share_w = (w.unsqueeze(-1) * x).sum(0)
        share_q = share_q / share_q.sum(-1, keepdim=True).clamp(min=1e-30)
        share_w = share_w / share_w.sum(-1, keepdim=True).clamp(min=1e-30)
        eps = 0.5 / max(x.shape[0], 1)
        delta = torch.log(share_w + eps) - torch.log(share_q + eps)
        ok = torch.isfinite(delta) & (present.sum(0) > 1).unsqueeze(-1)
        params["logits"].add_(torch.where(ok, rate * delta, torch.zeros_like(delta)))

    def forward(self, h, facts, adapt=None, defensive=0.0):
        total, prior_logits = facts
        logits = prior_logits + linear(self.out, h).view(h.shape[0], self.info.de)
        if adapt is not None:
            logits = logits + adapt["logits"]
        logits = torch.where(torch.isfinite(prior_logits), logits,
                             torch.full_like(logits, -float("inf")))
        return MultinomialProposal(total.reshape(-1), logits, prior_logits, defensive)


FAMILY = MultinomialFamily
