"""Quadratic likelihoods read off the program (csis_dsl/middle/affine.py): which sites'
informing observations are Gaussian with a location affine in them, and what that buys,
an exact Laplace location in one unclamped Newton step, checked against the conjugate
posterior."""
import math
import warnings

import pytest
import torch

import csis_dsl
from csis_dsl.frontend import ast as A
from csis_dsl.middle.affine import degree


def quadratic(body: str, site: str = "z", args: str = "") -> bool:
    src = f"model t {{\n{args}\n{body}\n}}"
    m = csis_dsl.compile_string(src)
    return m.guide.net.inputs.quadratic[site]


N10 = "arg int N = 10;\narg real[N] x = linspace(-1.0, 1.0, N);"


@pytest.mark.parametrize("loc", [
    "z", "2.0 * z - 1.0", "-z / 3.0", "x[i] * z + 1.0", "(z + x[i]) * 2.0",
    "x[i] > 0.0 ? z : 2.0 * z",
])
def test_affine_locations_are_quadratic(loc):
    body = f"z ~ Normal(0.0, 1.0);\nfor i in range(N) {{ observe y[i] ~ Normal({loc}, 0.5); }}"
    assert quadratic(body, args=N10)


@pytest.mark.parametrize("body", [
    # not affine in z
    "z ~ Normal(0.0, 1.0);\nfor i in range(N) { observe y[i] ~ Normal(z * z, 0.5); }",
    "z ~ Normal(0.0, 1.0);\nfor i in range(N) { observe y[i] ~ Normal(exp(z), 0.5); }",
    "z ~ Normal(0.0, 1.0);\nfor i in range(N) { observe y[i] ~ Normal(x[i] / z, 0.5); }",
    # the scale reads z
    "z ~ Normal(0.0, 1.0);\nfor i in range(N) { observe y[i] ~ Normal(0.0, exp(z)); }",
    # not a Gaussian, or truncated
    "z ~ Normal(0.0, 1.0);\nfor i in range(N) { observe y[i] ~ StudentT(3.0, z, 0.5); }",
    "z ~ Normal(0.0, 1.0);\nfor i in range(N) { observe y[i] ~ Normal(z, 0.5) T[0.0, ]; }",
    # a positive site: its unconstrained value is log z
    "z ~ HalfNormal(1.0);\nfor i in range(N) { observe y[i] ~ Normal(z, 0.5); }",
])
def test_other_likelihoods_are_not(body):
    assert not quadratic(body, args=N10)


def test_the_brief_regression_and_a_state_space_model():
    """beta in y ~ Normal(X @ beta, sigma) given sigma (proposed first), and the levels
    of a local-level model, are linear-Gaussian; sigma is not."""
    reg = csis_dsl.compile_string("""model reg {
        arg int N; arg int K; arg real[N, K] X;
        real[K] beta ~ Normal(0.0, 10.0);
        sigma ~ HalfNormal(1.0);
        observe real[N] y ~ Normal(X @ beta, sigma);
    }""", args={"N": 5, "K": 2, "X": torch.randn(5, 2)})
    assert reg.guide.net.inputs.quadratic == {"beta": True, "sigma": False}
    ll = csis_dsl.compile_string("""model ll {
        arg int T = 8;
        h[0] ~ Normal(0.0, 1.0);
        for t in range(1, T) { h[t] ~ Normal(h[t - 1], 0.3); }
        for t in range(T) { observe y[t] ~ Normal(h[t], 0.5); }
    }""")
    assert ll.guide.net.inputs.quadratic["h"]


def test_degree_of_expressions():
    z = A.Name(None, "z")
    c = A.Num(None, 2.0, False)
    assert degree(z, "z") == 1 and degree(c, "z") == 0
    assert degree(A.Binary(None, "*", z, z), "z") is None
    assert degree(A.Binary(None, "@", c, z), "z") == 1
    assert degree(A.Call(None, "dot", None, [z, c]), "z") == 1
    assert degree(A.Call(None, "sum", None, [A.Binary(None, "-", z, c)]), "z") == 1
    assert degree(A.Call(None, "log", None, [z]), "z") is None
    assert degree(A.Index(None, z, [z]), "z") is None          # z indexed by itself


def test_a_posterior_far_from_the_prior_is_located_exactly_before_training():
    """z ~ N(0, 1) seen through 50 measurements whose posterior mean is 20 prior sds
    away: the Laplace step of a quadratic likelihood is taken whole, so the untrained
    proposal is the conjugate posterior (a clamped step stopped at 10 sds: ESS 1)."""
    m = csis_dsl.compile_string("""model far {
        arg int N = 50;
        z ~ Normal(0.0, 1.0);
        for i in range(N) { observe x[i] ~ Normal(2.0 * z - 1.0, 0.5); }
    }""")
    m.guide.fit_statistics()
    prec = 1 + 50 * 2.0 ** 2 / 0.5 ** 2
    mean = 50 * 2.0 * (39.0 + 1.0) / 0.5 ** 2 / prec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = m.infer({"x": torch.full((50,), 39.0)}, num_samples=2000, seed=0)
    assert post.ess > 0.5 * post.num_samples
    assert abs(float(post.mean("z")) - mean) < 0.05 * prec ** -0.5
    assert abs(float(post.std("z")) * math.sqrt(prec) - 1) < 0.1
