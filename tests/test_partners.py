"""A varying intercept and a varying slope as separate scalars read by the same
observations (``y[i, t] ~ Normal(alpha[i] + beta[i] * x[t], s)``, the BUGS Rats growth
curves; or ``y[n] ~ Normal(alpha[g[n]] + beta[g[n]] * x[n], s)``): the intercept is
located at its marginal with the slope integrated out, per group, and the slope at its
exact conditional given the intercept drawn -- checked against the conjugate posterior
of every group before any training; and a hyperparameter is located with both effects
integrated out, checked against its exact marginal posterior by quadrature."""
import math

import pytest
import torch

import csis_dsl
from conftest import assert_fast_path_equals_pyro_path

WIDE = """
model wide {
    arg int N;
    arg int T;
    arg real[T] x;
    arg real sigma_y = 0.8;

    for i in range(N) {
        alpha[i] ~ Normal(2.0, 1.5);
        beta[i] ~ Normal(-0.5, 0.7);
        for t in range(T) {
            observe y[i, t] ~ Normal(alpha[i] + beta[i] * x[t], sigma_y);
        }
    }
}
"""

# the same, through a deterministic value in between (Stan's transformed parameters)
WIDE_THROUGH = WIDE.replace(
    "observe y[i, t] ~ Normal(alpha[i] + beta[i] * x[t], sigma_y);",
    "mu[i, t] = alpha[i] + beta[i] * x[t];\n            "
    "observe y[i, t] ~ Normal(mu[i, t], sigma_y);")

LONG = """
model long {
    arg int N;
    arg int J;
    arg int[N] g;
    arg real[N] x;

    sigma_y ~ HalfNormal(2.0);
    for j in range(J) {
        alpha[j] ~ Normal(2.0, 1.5);
        beta[j] ~ Normal(-0.5, 0.7);
    }
    for n in range(N) {
        observe y[n] ~ Normal(alpha[g[n]] + beta[g[n]] * x[n], sigma_y);
    }
}
"""

LONG_THROUGH = LONG.replace(
    "observe y[n] ~ Normal(alpha[g[n]] + beta[g[n]] * x[n], sigma_y);",
    "mu[n] = alpha[g[n]] + beta[g[n]] * x[n];\n        "
    "observe y[n] ~ Normal(mu[n], sigma_y);")

M0 = torch.tensor([2.0, -0.5], dtype=torch.float64)
P0 = torch.diag(torch.tensor([1.5, 0.7], dtype=torch.float64) ** -2)


def conjugate(X, y, sigma):
    """The exact posterior (mean, sds) of one group's (alpha, beta)."""
    P = P0 + X.T @ X / sigma ** 2
    mean = torch.linalg.solve(P, P0 @ M0 + X.T @ y / sigma ** 2)
    return mean, torch.linalg.inv(P).diagonal().sqrt()


def test_the_slope_is_the_intercepts_partner_and_both_are_collapsed():
    m = csis_dsl.compile_string(LONG, args={"N": 4, "J": 2, "g": [0, 0, 1, 1],
                                            "x": [0.0, 1.0, 0.0, 1.0]})
    inputs = m.guide.net.inputs
    assert inputs.partners["alpha"][:2] == (["y"], ["beta"])
    assert inputs.partners["alpha"][3] == [True, True]       # a quadratic in both
    assert "beta" not in inputs.partners
    assert inputs.collapse["sigma_y"][1] == ["alpha", "beta"]


@pytest.mark.parametrize("spec", [WIDE, WIDE_THROUGH], ids=["inline", "through_mu"])
def test_intercepts_and_slopes_of_repeated_measures_before_training(spec):
    N, T = 6, 5
    x = torch.linspace(-1.0, 1.0, T, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    a = 2.0 + 1.5 * torch.randn(N, generator=g, dtype=torch.float64)
    b = -0.5 + 0.7 * torch.randn(N, generator=g, dtype=torch.float64)
    y = a[:, None] + b[:, None] * x + 0.8 * torch.randn(N, T, generator=g, dtype=torch.float64)
    m = csis_dsl.compile_string(spec, args={"N": N, "T": T, "x": x.tolist()})
    assert m.guide.net.inputs.partners["alpha"][1] == ["beta"]
    m.guide.fit_statistics()
    post = m.infer({"y": y.tolist()}, num_samples=4000, seed=0, program=0.0)
    assert post.ess > 0.8 * post.num_samples
    X = torch.stack([torch.ones(T, dtype=torch.float64), x], 1)
    for i in range(N):
        mean, sd = conjugate(X, y[i], 0.8)
        got = torch.stack([post.mean("alpha")[i], post.mean("beta")[i]]).double()
        assert float(((got - mean).abs() / sd).max()) < 0.15
        got_sd = torch.stack([post.std("alpha")[i], post.std("beta")[i]]).double()
        assert torch.allclose(got_sd, sd, rtol=0.1)


@pytest.mark.parametrize("spec", [LONG, LONG_THROUGH], ids=["inline", "through_mu"])
def test_a_hyperparameter_with_both_effects_integrated_out_before_training(spec):
    N, J = 40, 5
    g = torch.Generator().manual_seed(7)
    grp = torch.arange(N) % J
    x = torch.randn(N, generator=g, dtype=torch.float64)
    a = 2.0 + 1.5 * torch.randn(J, generator=g, dtype=torch.float64)
    b = -0.5 + 0.7 * torch.randn(J, generator=g, dtype=torch.float64)
    y = a[grp] + b[grp] * x + 0.6 * torch.randn(N, generator=g, dtype=torch.float64)
    m = csis_dsl.compile_string(spec, args={"N": N, "J": J, "g": grp.tolist(), "x": x.tolist()})
    assert m.guide.net.inputs.collapse["sigma_y"][1] == ["alpha", "beta"]
    assert m.guide.net.inputs.informing["beta"] == ["y"]         # given alpha, exactly
    m.guide.fit_statistics()
    post = m.infer({"y": y.tolist()}, num_samples=4000, seed=0)
    assert post.ess > 0.7 * post.num_samples
    # sigma_y's exact marginal: each group's y ~ N(X m0, X S0 X^T + s^2 I), by quadrature
    s = torch.linspace(0.05, 3.0, 4000, dtype=torch.float64)
    logp = torch.distributions.HalfNormal(2.0).log_prob(s)
    S0 = torch.linalg.inv(P0)
    for j in range(J):
        X = torch.stack([torch.ones(int((grp == j).sum()), dtype=torch.float64), x[grp == j]], 1)
        cov = X @ S0 @ X.T + s[:, None, None] ** 2 * torch.eye(X.shape[0], dtype=torch.float64)
        logp = logp + torch.distributions.MultivariateNormal(X @ M0, cov).log_prob(y[grp == j])
    w = torch.softmax(logp, 0)
    mean = float((w * s).sum())
    sd = math.sqrt(float((w * (s - mean) ** 2).sum()))
    assert abs(float(post.mean("sigma_y")) - mean) < 0.1 * sd
    assert float(post.std("sigma_y")) == pytest.approx(sd, rel=0.1)
    for j in range(J):          # and the effects, against their conjugate posteriors
        X = torch.stack([torch.ones(int((grp == j).sum()), dtype=torch.float64), x[grp == j]], 1)
        mean_j, sd_j = conjugate(X, y[grp == j], mean)
        assert abs(float(post.mean("alpha")[j]) - float(mean_j[0])) < 0.3 * float(sd_j[0])


def test_the_fast_path_equals_the_pyro_path_with_partners():
    """The training loss and its gradient through the pair's fits, on the fast path and
    on the Pyro path (the guide traced replaying the model's latents), on one batch."""
    N, J = 12, 3
    m = csis_dsl.compile_string(LONG, args={"N": N, "J": J, "g": [n % J for n in range(N)],
                                            "x": [0.25 * n - 1.0 for n in range(N)]})
    m.guide.fit_statistics(300)
    assert assert_fast_path_equals_pyro_path(m, 5) > 0


def test_three_effects_of_one_instance_are_one_group():
    """A quadratic growth curve per group: a, b and c read by the same observations. b
    also leads a group of two given a, but integrated out under the noise scale the
    three are one group (context.leaders)."""
    m = csis_dsl.compile_string("""
model curves {
    arg int N = 4;
    arg int T = 5;
    arg real[T] x = [-1.0, -0.5, 0.0, 0.5, 1.0];
    s ~ HalfNormal(1.0);
    for i in range(N) {
        a[i] ~ Normal(0.0, 1.0);
        b[i] ~ Normal(0.0, 1.0);
        c[i] ~ Normal(0.0, 1.0);
        for t in range(T) {
            observe y[i, t] ~ Normal(a[i] + b[i] * x[t] + c[i] * x[t] * x[t], s);
        }
    }
}
""")
    inputs = m.guide.net.inputs
    assert inputs.partners["a"][1] == ["b", "c"] and inputs.partners["b"][1] == ["c"]
    assert inputs.collapse["s"][1] == ["a", "b", "c"]


def test_a_value_through_a_data_index_is_read_in_its_own_loop_only():
    """``mu[n] = a[g[n]] + b[g[n]] * x[n]`` then ``y[n] ~ Normal(mu[n], s)``: the index
    is evaluated in the observation's loop, so it is used where both loops have the same
    variable; with another (``for i ... y[i] ~ Normal(mu[i], s)``) the group is refused,
    not mis-assigned."""
    spec = """
model lv {
    arg int N = 6;
    arg int J = 3;
    arg int[N] g = [0, 1, 2, 0, 1, 2];
    arg real[N] x = [0.0, 1.0, 2.0, 0.5, 1.5, 2.5];
    s ~ HalfNormal(1.0);
    for j in range(J) { a[j] ~ Normal(0.0, 2.0); b[j] ~ Normal(0.0, 1.0); }
    for n in range(N) { mu[n] = a[g[n]] + b[g[n]] * x[n]; }
    for VAR in range(N) { observe y[VAR] ~ Normal(mu[VAR], s); }
}
"""
    same = csis_dsl.compile_string(spec.replace("VAR", "n")).guide.net.inputs
    assert same.partners["a"][1] == ["b"] and same.informing["b"] == ["y"]
    other = csis_dsl.compile_string(spec.replace("VAR", "i")).guide.net.inputs
    assert "a" not in other.partners and other.informing["b"] == []
