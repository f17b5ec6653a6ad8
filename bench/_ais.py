"""Adaptive importance sampling for reference posteriors (bench/*/reference.py):
vectorised over millions of draws, independent of the compiler.

Work in unconstrained coordinates z where the target is smooth. Start from a proposal
the caller gives (the prior, say), then repeatedly fit a multivariate Student-t to the
weighted draws (covariance doubled) and mix it with the start proposal at weight
``defensive``, so that the weights stay bounded by those of the start. The result is
trustworthy when the ESS is large and two random halves of the draws agree."""
import math

import numpy as np
import torch
from arviz_stats.base import array_stats


class StudentT:
    """A multivariate Student-t mixed with a defensive ``base`` proposal."""

    def __init__(self, base, mean, cov, df=5.0, defensive=0.1):
        self.base, self.df, self.eps = base, df, defensive
        self.mean = mean
        self.L = torch.linalg.cholesky(2.0 * cov + 1e-9 * torch.eye(len(mean)))

    def sample(self, n, g):
        k = int(n * self.eps)
        p = len(self.mean)
        z = torch.randn(n - k, p, generator=g)
        w = torch.distributions.Gamma(self.df / 2, self.df / 2).sample((n - k,))
        t = self.mean + (z / w.sqrt()[:, None]) @ self.L.T
        return torch.cat([t, self.base.sample(k, g)])

    def log_prob(self, z):
        p = len(self.mean)
        d = torch.linalg.solve_triangular(self.L, (z - self.mean).T, upper=False).T
        lt = (math.lgamma((self.df + p) / 2) - math.lgamma(self.df / 2)
              - p / 2 * math.log(self.df * math.pi) - torch.log(self.L.diag()).sum()
              - (self.df + p) / 2 * torch.log1p((d ** 2).sum(-1) / self.df))
        return torch.logaddexp(lt + math.log(1 - self.eps),
                               self.base.log_prob(z) + math.log(self.eps))


def draw(log_target, q, n, g, chunk=1_000_000):
    lws, zs = [], []
    for start in range(0, n, chunk):
        z = q.sample(min(chunk, n - start), g)
        lws.append(torch.nan_to_num(log_target(z) - q.log_prob(z), nan=-math.inf))
        zs.append(z)
    return torch.cat(lws), torch.cat(zs)


def fit(lw, z):
    w = torch.softmax(lw, 0)
    mean = (w[:, None] * z).sum(0)
    d = z - mean
    return mean, (w[:, None, None] * d[:, :, None] * d[:, None, :]).sum(0)


def adapt(log_target, base, g, rounds=(1_000_000, 1_000_000), final=10_000_000, log=print):
    """Draws (log weights, z) from the last of a sequence of fitted proposals."""
    q = base
    for k, n in enumerate(rounds):
        lw, z = draw(log_target, q, n, g)
        ess = 1 / float((torch.softmax(lw, 0) ** 2).sum())
        log(f"  round {k + 1}: ESS {ess:.0f} of {n}")
        q = StudentT(base, *fit(lw, z))
    return draw(log_target, q, final, g)


def summary(lw, x, names):
    """Weighted means and sds of the columns of ``x``, the ESS, Pareto k-hat, and the
    worst disagreement (in sds) between two random halves."""
    def moments(lw, x):
        w = torch.softmax(lw, 0)
        m = (w[:, None] * x).sum(0)
        return m, ((w[:, None] * (x - m) ** 2).sum(0)).sqrt()
    m, sd = moments(lw, x)
    ess = 1 / float((torch.softmax(lw, 0) ** 2).sum())
    perm = torch.randperm(len(lw))
    h = len(lw) // 2
    m1, _ = moments(lw[perm[:h]], x[perm[:h]])
    m2, _ = moments(lw[perm[h:]], x[perm[h:]])
    halves = float(((m1 - m2).abs() / sd).max())
    khat = float(array_stats.psislw(-np.asarray(lw), r_eff=1.0)[1])
    post = {k: {"mean": float(m[i]), "sd": float(sd[i])} for i, k in enumerate(names)}
    return post, ess, khat, halves
