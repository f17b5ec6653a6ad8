"""A chain proposed after the parameters it reads, summed out of their joint fit by a
filter's forward pass (:mod:`csis_dsl.proposals.chains`): which chains qualify, and,
before any training, the posterior of a local-level model (Kalman) and of a two-state
hidden Markov model (forward algorithm) against quadrature with marginal likelihoods
computed independently -- a multivariate normal over the whole series, and the sum
over every path of the hidden states."""
import itertools
import math
import sys
from pathlib import Path

import torch

import csis_dsl

ROOT = Path(__file__).resolve().parents[1]

LEVEL = """
model level {
    arg int T;

    sigma_level ~ HalfNormal(1.0);
    sigma_obs ~ HalfNormal(2.0);
    level[0] ~ Normal(0.0, 3.0);
    for t in range(1, T) {
        level[t] ~ Normal(level[t - 1], sigma_level);
    }
    for t in range(T) {
        observe y[t] ~ Normal(level[t], sigma_obs);
    }
}
"""

HMM = """
model hmm {
    arg int T;
    arg real[2, 2] P = [[0.85, 0.15], [0.2, 0.8]];

    real[2] rate ~ Gamma([2.0, 8.0], [1.0, 1.0]);
    z[0] ~ Categorical([0.5, 0.5]);
    for t in range(1, T) {
        z[t] ~ Categorical(P[z[t - 1]]);
    }
    for t in range(T) {
        observe y[t] ~ Poisson(rate[z[t]]);
    }
}
"""


def _ahead(src, T=8):
    return csis_dsl.compile_string(src, args={"T": T}).guide.net.inputs.ahead


def test_which_chains_are_summed_out():
    ahead = _ahead(LEVEL)
    # the level's scale reaches the observations through the chain; sigma_obs directly
    assert ahead["sigma_level"][1] == ["sigma_obs"]
    assert [(c.name, c.values) for c in ahead["sigma_level"][3]] == [("level", None)]
    assert ahead["sigma_obs"][1] == [] and [c.name for c in ahead["sigma_obs"][3]] == ["level"]
    hmm = _ahead(HMM)
    assert [(c.name, c.values) for c in hmm["rate"][3]] == [("z", (0.0, 1.0))]
    # observations not Gaussian in the chain: summed by the Laplace approximation
    student = _ahead(LEVEL.replace("Normal(level[t], sigma_obs)",
                                   "StudentT(4.0, level[t], sigma_obs)"))
    assert [(c.name, c.gaussian) for c in student["sigma_level"][3]] == [("level", False)]
    assert all(c.gaussian for c in ahead["sigma_level"][3])
    # not linear-Gaussian: a transition whose scale reads the chain; an observation of
    # the element before
    old, new = ("Normal(level[t - 1], sigma_level)",
                "Normal(level[t - 1], sigma_level * exp(0.1 * level[t - 1]))")
    assert old in LEVEL
    assert _ahead(LEVEL.replace(old, new)) == {}, new
    shifted = LEVEL.replace("for t in range(T) {\n        observe y[t] ~ Normal(level[t], "
                            "sigma_obs);", "for t in range(1, T) {\n        observe y[t] ~ "
                            "Normal(level[t - 1], sigma_obs);")
    assert shifted != LEVEL and _ahead(shifted) == {}
    # a second-order chain
    second = LEVEL.replace("level[0] ~ Normal(0.0, 3.0);",
                           "level[0] ~ Normal(0.0, 3.0);\n    level[1] ~ Normal(0.0, 3.0);") \
        .replace("range(1, T) {\n        level[t] ~ Normal(level[t - 1], sigma_level)",
                 "range(2, T) {\n        level[t] ~ Normal(level[t - 1] - 0.5 * level[t - 2], "
                 "sigma_level)")
    assert "level[t - 2]" in second and _ahead(second) == {}


def _moments(lp, grids):
    """Posterior means and sds over a grid from its log density ``lp``."""
    p = torch.softmax(lp.flatten(), 0).reshape(lp.shape)
    out = []
    for X in grids:
        m = (p * X).sum()
        out.append((float(m), float((p * (X - m) ** 2).sum().sqrt())))
    return out


def _quadrature(reference, a, b):
    """Posterior means and sds of two positive scalars whose log density is
    ``reference(A, B)`` on a grid: a coarse pass over (a, b), then fine grids over
    +- 7 of its sds, kept above 0."""
    def moments(a, b):
        A, B = torch.meshgrid(a, b, indexing="ij")
        return _moments(reference(A, B), (A, B))
    coarse = moments(a, b)
    return moments(*[torch.linspace(max(m - 7 * s, 1e-4), m + 7 * s, 81, dtype=torch.float64)
                     for m, s in coarse])


def _untrained(src, T, y):
    """The posterior of ``src`` for observations ``y`` from the program's proposal
    alone (no network, no defensive component)."""
    m = csis_dsl.compile_string(src, args={"T": T})
    m.guide.fit_statistics()
    return m.infer({"y": y.tolist()}, num_samples=3000, seed=0, program=1.0, defensive=0.0)


def _check(post, got, ref, ess_min):
    """ESS/N above ``ess_min``; ``got``, (mean, sd) per scalar, within 0.15 reference sd
    and 15% of the reference's (mean, sd) ``ref``."""
    assert post.ess > ess_min * post.num_samples, post.ess
    got = [(float(m), float(sd)) for m, sd in got]
    for (gm, gs), (rm, rs) in zip(got, ref):
        assert abs(gm - rm) < 0.15 * rs, (got, ref)
        assert abs(gs / rs - 1) < 0.15, (got, ref)


def test_a_local_level_model_before_training():
    """Both scales fitted with the levels integrated out by the Kalman filter; the
    reference integrates them out as one multivariate normal over the series."""
    T = 40
    g = torch.Generator().manual_seed(1)
    d = torch.float64
    level = torch.cumsum(torch.cat([torch.randn(1, generator=g, dtype=d) * 3,
                                    0.4 * torch.randn(T - 1, generator=g, dtype=d)]), 0)
    y = level + 0.8 * torch.randn(T, generator=g, dtype=d)
    i = torch.arange(T, dtype=d)
    walk = torch.minimum(i.unsqueeze(0), i.unsqueeze(1))          # Cov of the increments

    def reference(sl, so):
        S, O = sl.unsqueeze(-1).unsqueeze(-1), so.unsqueeze(-1).unsqueeze(-1)
        cov = 9.0 + S ** 2 * walk + O ** 2 * torch.eye(T, dtype=d)
        ll = torch.distributions.MultivariateNormal(torch.zeros(T, dtype=d), cov).log_prob(y)
        return ll - 0.5 * sl ** 2 - 0.5 * (so / 2) ** 2

    ref = _quadrature(reference, torch.linspace(0.01, 2.0, 60, dtype=d),
                      torch.linspace(0.05, 3.0, 60, dtype=d))
    post = _untrained(LEVEL, T, y)
    _check(post, [(post.mean(n), post.std(n)) for n in ("sigma_level", "sigma_obs")], ref, 0.6)


def test_a_hidden_markov_model_before_training():
    """The two rates fitted with the states summed out by the forward algorithm; the
    reference sums over all 2^T paths."""
    T = 12
    d = torch.float64
    y = torch.tensor([2, 1, 3, 2, 9, 7, 11, 8, 1, 2, 0, 3], dtype=d)
    P = torch.tensor([[0.85, 0.15], [0.2, 0.8]], dtype=d)
    paths = torch.tensor(list(itertools.product([0, 1], repeat=T)))            # (2^T, T)
    log_path = math.log(0.5) + torch.log(P[paths[:, :-1], paths[:, 1:]]).sum(-1)

    def reference(r0, r1):
        rates = torch.stack([r0, r1], -1)                                        # (..., 2)
        lam = rates[..., paths]                                                  # (..., 2^T, T)
        ll = torch.distributions.Poisson(lam).log_prob(y).sum(-1)
        lp = torch.logsumexp(ll + log_path, -1)
        prior = torch.distributions.Gamma(torch.tensor([2.0, 8.0], dtype=d), 1.0)
        return lp + prior.log_prob(rates).sum(-1)

    ref = _quadrature(reference, torch.linspace(0.05, 8.0, 40, dtype=d),
                      torch.linspace(0.5, 16.0, 40, dtype=d))
    post = _untrained(HMM, T, y)
    _check(post, [(post.mean("rate")[k], post.std("rate")[k]) for k in (0, 1)], ref, 0.6)


HMM_P = """
model hmm_p {
    arg int T;
    arg real[2, 2] stick = [[4.0, 1.0], [1.0, 4.0]];

    for k in range(2) {
        P[k] ~ Dirichlet(stick[k]);
    }
    z[0] ~ Categorical([0.5, 0.5]);
    for t in range(1, T) {
        z[t] ~ Categorical(P[z[t - 1]]);
    }
    for t in range(T) {
        observe y[t] ~ Poisson([1.5, 7.0][z[t]]);
    }
}
"""


def test_a_transition_matrix_before_training():
    """The rows of a transition matrix, a plate of two simplexes, fitted together with
    the states summed out, and placed at the fit's marginal for each row; against
    quadrature over (P[0][0], P[1][1]) summing over every path."""
    d = torch.float64
    y = torch.tensor([1, 2, 0, 1, 8, 6, 9, 7, 5, 1, 2, 1, 0, 9], dtype=d)
    T = y.numel()
    assert "P" in _ahead(HMM_P, T) and _ahead(HMM_P, T)["P"][1] == []
    paths = torch.tensor(list(itertools.product([0, 1], repeat=T)))
    ll = torch.distributions.Poisson(torch.tensor([1.5, 7.0], dtype=d)[paths]).log_prob(y).sum(-1)
    stay = (paths[:, 1:] == paths[:, :-1])
    # each path's transitions counted: stays in and moves out of each state
    counts = [((paths[:, :-1] == k) & (stay if move == 0 else ~stay)).sum(-1).to(d)
              for k in (0, 1) for move in (0, 1)]

    def reference(a, b):            # a = P[0][0], b = P[1][1], (G,) each
        A, B = a.unsqueeze(-1), b.unsqueeze(-1)
        logp = counts[0] * A.log() + counts[1] * (1 - A).log() + counts[2] * B.log() \
            + counts[3] * (1 - B).log()
        prior = 3 * torch.log(a) + 3 * torch.log(b)        # Beta(4, 1) each
        return torch.logsumexp(logp + ll + math.log(0.5), -1) + prior

    def moments(a, b):
        A, B = torch.meshgrid(a, b, indexing="ij")
        return _moments(reference(A.flatten(), B.flatten()).reshape(A.shape), (A, B))
    grid = torch.linspace(0.0025, 0.9975, 200, dtype=d)
    ref = moments(grid, grid)
    post = _untrained(HMM_P, T, y)
    _check(post, [(post.mean("P")[k, k], post.std("P")[k, k]) for k in (0, 1)], ref, 0.7)


def test_the_filter_against_the_whole_series_as_one_gaussian():
    """The Kalman filter's scans (:func:`csis_dsl.proposals.chains.kalman_filter`) give
    log p(y) of u[t] = A[t] u[t - 1] + B[t] + s[t] e[t], y[t] = u[t] + o[t] f[t] as the
    multivariate normal of y, and the smoother's (:func:`~csis_dsl.proposals.chains.
    kalman_smoother`) the conditional mean E[u | y] of the joint normal of (u, y), for
    lengths that are not powers of two."""
    from csis_dsl.proposals.chains import kalman_filter, kalman_smoother
    g = torch.Generator().manual_seed(0)
    d = torch.float64
    for M, n in [(5, 1), (7, 37), (4, 100)]:
        def rand(*shape):
            return torch.rand(*shape, generator=g, dtype=d)
        A, B, s = 0.6 + 0.5 * rand(M, n), torch.randn(M, n, generator=g, dtype=d), 0.3 + rand(M, n)
        A[:, 0] = 0.0
        r, o = torch.randn(M, n, generator=g, dtype=d), 0.2 + rand(M, n)
        y = 3 * torch.randn(M, n, generator=g, dtype=d)
        # each observation's log density as a quadratic about r: f0 + g w - lam w^2 / 2
        f0 = torch.distributions.Normal(r, o).log_prob(y)
        got = kalman_filter(A, B, s, r, f0, (y - r) / o ** 2, o ** -2)
        D = torch.eye(n, dtype=d) - torch.diag_embed(A[:, 1:], offset=-1)
        Di = torch.linalg.inv(D)
        mean = (Di @ B.unsqueeze(-1)).squeeze(-1)
        cov = Di @ torch.diag_embed(s ** 2) @ Di.transpose(-1, -2) + torch.diag_embed(o ** 2)
        want = torch.distributions.MultivariateNormal(mean, cov).log_prob(y)
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-8), (n, got, want)
        smoothed = kalman_smoother(A, B, s, r, (y - r) / o ** 2, o ** -2)
        cov_u = Di @ torch.diag_embed(s ** 2) @ Di.transpose(-1, -2)
        want = mean + (cov_u @ torch.linalg.solve(cov, (y - mean).unsqueeze(-1))).squeeze(-1)
        assert torch.allclose(smoothed, want, rtol=1e-9, atol=1e-8), (n, smoothed, want)


POISSON_RW = """
model counts {
    arg int T;

    s ~ HalfNormal(0.5);
    x[0] ~ Normal(0.0, 2.0);
    for t in range(1, T) {
        x[t] ~ Normal(x[t - 1], s);
    }
    for t in range(T) {
        observe y[t] ~ Poisson(exp(x[t]));
    }
}
"""


def test_a_chain_observed_through_counts_before_training():
    """A random walk of log rates observed through Poisson counts: not Gaussian in the
    chain, so the scale's joint fit sums the chain out by its Laplace approximation
    (the counts' log density expanded at the chain's mode, found by relinearising), and
    the chain's look-ahead messages are linearised at that mode too. Against quadrature
    with the chain discretised (bench/real/exact.py): the program's proposal alone had ESS/N 0.05 before both."""
    sys.path.insert(0, str(ROOT / "bench" / "real"))
    import exact
    d = torch.float64
    y = torch.tensor([0.0, 3.0, 9.0, 4.0], dtype=d)
    ahead = _ahead(POISSON_RW, len(y))
    assert [(c.name, c.gaussian) for c in ahead["s"][3]] == [("x", False)]
    ref = exact.counts_walk(y, 0.5, (0.0, 2.0), torch.linspace(0.01, 2.5, 125, dtype=d),
                            torch.linspace(-8.0, 5.0, 651, dtype=d))
    ref = [ref["s"]] + list(zip(*ref["x"]))
    post = _untrained(POISSON_RW, len(y), y)
    got = [(post.mean("s"), post.std("s"))] + list(zip(post.mean("x"), post.std("x")))
    _check(post, got, ref, 0.25)
