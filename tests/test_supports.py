"""Every proposal puts all its mass on the support the prior has in that trace, also when
a bound is another latent: 10^5 proposal draws per model, every one with a finite prior
log density."""
import math

import pytest
import torch

import csis_dsl
from conftest import SPECS, compile_spec

RANDOM_BOUNDS = {
    "interval": "a ~ Beta(1.0, 2.0); b ~ Uniform(0.0, 1.0 - a); observe y ~ Normal(a + b, 0.1);",
    "garch_constraint": "a1 ~ Uniform(0.0, 1.0); b1 ~ Uniform(0.0, 1.0 - a1); "
                        "observe y ~ Normal(a1 + b1, 0.2);",
    "lower": "m ~ Normal(0.0, 3.0); x ~ Normal(m, 1.0) T[m + 0.5, ]; "
             "observe y ~ Normal(x, 0.5);",
    "upper": "m ~ Normal(0.0, 3.0); x ~ Laplace(m, 1.0) T[, m - 1.0]; "
             "observe y ~ Normal(x, 0.5);",
    "both": "lo ~ Normal(0.0, 1.0); w ~ Gamma(2.0, 2.0); x ~ Normal(lo, 2.0) T[lo, lo + w]; "
            "observe y ~ Normal(x, 0.3);",
    "looped": "arg int N = 6; top ~ Gamma(3.0, 1.0); for i in range(N) { "
              "u[i] ~ Uniform(-top, top); observe y[i] ~ Normal(u[i], 0.5); }",
    "sequence": "arg int T = 8; h[0] ~ Normal(0.0, 1.0); for t in range(1, T) { "
                "h[t] ~ Uniform(h[t - 1] - 1.0, h[t - 1] + 1.0); } "
                "for t in range(T) { observe y[t] ~ Normal(h[t], 0.5); }",
}
MODELS = [(f"spec:{p.stem}", None) for p in sorted(SPECS.glob("*.ppl"))] + \
    [(f"bounds:{k}", v) for k, v in RANDOM_BOUNDS.items()]


def compiled(name, body):
    if body is None:
        return compile_spec(name.split(":")[1])
    return csis_dsl.compile_string(f"model m {{ {body} }}", name=f"{name}.ppl")


@pytest.mark.parametrize("name,body", MODELS, ids=[m[0] for m in MODELS])
def test_every_proposal_draw_is_inside_the_prior_support(name, body):
    m = compiled(name, body)
    m.train(num_steps=30, batch_size=64, seed=0, progress=False, validation_size=0)
    sims = m.simulate(1, seed=2)
    obs = {k: sims[k][0] for k in m.observed}
    # 10^5 draws; 5 x 10^3 for the 1000-observation mixture, whose weights, locations
    # and scales are fitted jointly over all its data for every draw (marginal.py), and
    # 2 x 10^4 for Grunfeld, whose noise scale is located by a dozen evaluations of its
    # firm effects' exact fit (collapse.py)
    n, chunk = {"spec:quakes_mixture": (5_000, 5_000), "spec:grunfeld": (20_000, 10_000)}.get(
        name, (100_000, 25_000))
    for k in range(n // chunk):
        torch.manual_seed(k)
        values, log_q = m.guide.propose(obs, chunk)
        log_prior, _, _ = m.pyro_model.score(chunk, obs, values)
        assert bool(torch.isfinite(log_prior).all()), (name, int((~torch.isfinite(log_prior)).sum()))
        assert bool(torch.isfinite(log_q).all())


def test_random_bound_posterior_is_right():
    """b ~ Uniform(0, 1 - a): against quadrature on a grid over (a, b)."""
    m = compiled("bounds:interval", RANDOM_BOUNDS["interval"])
    m.train(num_steps=150, batch_size=128, seed=0, progress=False)
    post = m.infer({"y": 0.95}, num_samples=20000, seed=1)
    a = torch.linspace(0.0005, 0.9995, 1000, dtype=torch.float64)
    A, Bv = torch.meshgrid(a, a, indexing="ij")
    inside = Bv < 1 - A
    dens = torch.where(inside, 2 * (1 - A) / (1 - A).clamp(min=1e-9)
                       * torch.exp(-0.5 * ((0.95 - A - Bv) / 0.1) ** 2), torch.zeros_like(A))
    dens = dens / dens.sum()
    mb, sb = float((dens * Bv).sum()), math.sqrt(float((dens * Bv ** 2).sum()) - float((dens * Bv).sum()) ** 2)
    assert post.ess > 5000
    assert abs(float(post.mean("b")) - mb) < 0.05 * sb + 5 * sb / math.sqrt(post.ess)
    assert abs(float(post.std("b")) / sb - 1) < 0.1
