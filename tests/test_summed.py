"""A mixture's weights, locations (and scales) proposed with its allocations summed out
exactly (:mod:`csis_dsl.proposals.summed`), and vector and simplex sites placed at a
joint fit's marginal: which sites qualify, and, before any training, the posterior of a
two-component mixture against quadrature over (w, mu1, mu2) -- written with one
allocation per observation and with the allocations summed out in the language."""
import math

import torch

import csis_dsl

ALLOCATED = """
model allocated {
    arg int N;

    simplex[2] w ~ Dirichlet(ones(2));
    real[2] mu ~ Normal([-2.0, 2.0], 1.0);
    for n in range(N) {
        c[n] ~ Categorical(w);
        observe y[n] ~ Normal(mu[c[n]], 0.7);
    }
}
"""

SUMMED = """
model summed {
    arg int N;

    simplex[2] w ~ Dirichlet(ones(2));
    real[2] mu ~ Normal([-2.0, 2.0], 1.0);
    for n in range(N) {
        observe y[n] ~ Mixture(w, Normal(mu, [0.7, 0.7]));
    }
}
"""


def data(N=150):
    g = torch.Generator().manual_seed(3)
    first = torch.rand(N, generator=g, dtype=torch.float64) < 0.3
    y = torch.where(first, -1.5, 2.5) + 0.7 * torch.randn(N, generator=g, dtype=torch.float64)
    return y


def reference(y):
    """Posterior means and sds of w[0], mu[0], mu[1] by quadrature: a coarse grid finds
    the mode's neighbourhood, a fine one over +- 7 sds integrates."""
    def moments(w1, m1, m2):
        W, A, B = torch.meshgrid(w1, m1, m2, indexing="ij")
        norm = -0.5 * math.log(2 * math.pi * 0.49)
        la = torch.log(W).unsqueeze(-1) + norm - 0.5 * (y - A.unsqueeze(-1)) ** 2 / 0.49
        lb = torch.log1p(-W).unsqueeze(-1) + norm - 0.5 * (y - B.unsqueeze(-1)) ** 2 / 0.49
        lp = torch.logaddexp(la, lb).sum(-1) - 0.5 * (A + 2) ** 2 - 0.5 * (B - 2) ** 2
        p = torch.softmax(lp.flatten(), 0).reshape(lp.shape)
        out = []
        for X in (W, A, B):
            m = (p * X).sum()
            out.append((float(m), float((p * (X - m) ** 2).sum().sqrt())))
        return out
    d = torch.float64
    coarse = moments(torch.linspace(0.02, 0.98, 49, dtype=d), torch.linspace(-5, 3, 81, dtype=d),
                     torch.linspace(-3, 5, 81, dtype=d))
    grids = [torch.linspace(max(m - 7 * s, 1e-4), min(m + 7 * s, 1 - 1e-4), 71, dtype=d)
             for m, s in coarse[:1]]
    grids += [torch.linspace(m - 7 * s, m + 7 * s, 71, dtype=d) for m, s in coarse[1:]]
    return moments(*grids)


def test_which_sites_sum_allocations_out():
    m = csis_dsl.compile_string(ALLOCATED, args={"N": 10})
    ahead = m.guide.net.inputs.ahead
    # w reaches the observations through the allocations; mu reads them directly
    assert set(ahead) == {"w", "mu"}
    assert ahead["w"][1] == ["mu"] and [s.name for s in ahead["w"][3]] == ["c"]
    assert ahead["mu"][1] == [] and [s.name for s in ahead["mu"][3]] == ["c"]
    # read at another instance's index, the allocations are not summed
    shifted = ALLOCATED.replace("mu[c[n]]", "mu[c[N - 1 - n]]")
    assert csis_dsl.compile_string(shifted, args={"N": 10}).guide.net.inputs.ahead == {}
    # nor when a latent reads them
    extra = ALLOCATED.replace("observe y[n]", "z[n] ~ Normal(c[n], 1.0);\n        observe y[n]")
    assert "w" not in csis_dsl.compile_string(extra, args={"N": 10}).guide.net.inputs.ahead


def _check(src, y, ref, ess_min):
    m = csis_dsl.compile_string(src, args={"N": y.numel()})
    m.guide.fit_statistics()
    post = m.infer({"y": y.tolist()}, num_samples=3000, seed=0, program=1.0, defensive=0.0)
    assert post.ess > ess_min * post.num_samples, post.ess
    got = [(float(post.mean("w")[0]), float(post.std("w")[0])),
           (float(post.mean("mu")[0]), float(post.std("mu")[0])),
           (float(post.mean("mu")[1]), float(post.std("mu")[1]))]
    for (gm, gs), (rm, rs) in zip(got, ref):
        assert abs(gm - rm) < 0.15 * rs, (got, ref)
        assert abs(gs / rs - 1) < 0.15, (got, ref)


def test_a_mixture_with_allocations_before_training():
    """Before the change the weights and locations had only the untrained network (ESS
    of a few draws): now their proposals are the summed-out joint fit's marginals, the
    allocations then their exact conditionals."""
    y = data()
    _check(ALLOCATED, y, reference(y), 0.6)


def test_a_mixture_written_summed_out_before_training():
    """The same posterior with the sum in the language: the simplex and the vector of
    locations are placed at their joint fit's marginal (whitened coordinates)."""
    y = data()
    _check(SUMMED, y, reference(y), 0.6)
