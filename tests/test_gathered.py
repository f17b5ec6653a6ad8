"""Group effects read through a data index (``y[n] ~ Normal(a[g[n]] + ..., s)``, the
varying intercepts and slopes of hierarchical regressions): each instance is informed by
the observations of its group, a segment sum of their log densities -- checked against
the conjugate posterior of every group, before any training."""
import math

import pytest
import torch

import csis_dsl
from csis_dsl.proposals.context import gathered

RADON = """
model radon {
    arg int N;
    arg int J;
    arg int[N] county;
    arg real[N] x;
    arg real mu = 1.0;
    arg real sigma_a = 0.5;
    arg real sigma_y = 0.7;

    for j in range(J) {
        a[j] ~ Normal(mu, sigma_a);
    }
    for n in range(N) {
        observe y[n] ~ Normal(a[county[n]] + 0.3 * x[n], sigma_y);
    }
}
"""

FIRMS = """
model firms {
    arg int N;
    arg int J;
    arg int[N] firm;
    arg real[N] x;
    arg real[2] mu = [1.0, -0.5];
    arg real[2] tau = [2.0, 0.5];
    arg real sigma = 0.4;

    for j in range(J) {
        ab[j] ~ MultivariateNormal(mu, scale_tril=diag(tau));
    }
    for n in range(N) {
        observe y[n] ~ Normal(ab[firm[n], 0] + ab[firm[n], 1] * x[n], sigma);
    }
}
"""


def groups(N, J, seed):
    g = torch.Generator().manual_seed(seed)
    county = torch.randint(0, J, (N,), generator=g)
    county[:J] = torch.arange(J)            # every group observed at least once
    return county, torch.randn(N, generator=g, dtype=torch.float64)


def test_the_index_is_found_and_only_where_it_is_the_whole_read(tmp_path):
    county, x = groups(40, 6, 0)
    m = csis_dsl.compile_string(RADON, args={"N": 40, "J": 6, "county": county.tolist(),
                                      "x": x.tolist()})
    inputs = m.guide.net.inputs
    assert inputs.informing["a"] == ["y"] and list(inputs.gathers["a"]) == ["y"]
    assert inputs.quadratic["a"]
    # a read of the whole vector, or by a latent index, is no gather
    whole = RADON.replace("a[county[n]] + 0.3 * x[n]", "a[county[n]] + 0.0 * sum(a)")
    m2 = csis_dsl.compile_string(whole, args={"N": 40, "J": 6, "county": county.tolist(),
                                       "x": x.tolist()})
    assert "a" not in m2.guide.net.inputs.gathers and m2.guide.net.inputs.informing["a"] == []
    info = next(i for i in m2.guide.net.latents if i.name == "a")
    assert gathered(m2.checked, m2.plan, info, "y") is None


def test_varying_intercepts_are_their_conjugate_posteriors_before_training():
    N, J = 60, 8
    county, x = groups(N, J, 1)
    g = torch.Generator().manual_seed(2)
    a_true = 1.0 + 0.5 * torch.randn(J, generator=g, dtype=torch.float64)
    y = a_true[county] + 0.3 * x + 0.7 * torch.randn(N, generator=g, dtype=torch.float64)
    m = csis_dsl.compile_string(RADON, args={"N": N, "J": J, "county": county.tolist(),
                                      "x": x.tolist()})
    m.guide.fit_statistics()
    post = m.infer({"y": y.tolist()}, num_samples=4000, seed=0, program=0.0)
    assert post.ess > 0.9 * post.num_samples
    r = (y - 0.3 * x)
    prec = 1 / 0.5 ** 2 + torch.bincount(county, minlength=J).double() / 0.7 ** 2
    mean = (1.0 / 0.5 ** 2 + torch.zeros(J, dtype=torch.float64).index_add(0, county, r)
            / 0.7 ** 2) / prec
    sd = prec.rsqrt()
    err = (post.mean("a").double() - mean).abs() / sd
    assert float(err.max()) < 5 / math.sqrt(post.ess) * math.sqrt(J) + 0.05
    assert torch.allclose(post.std("a").double(), sd, rtol=0.08)


def test_varying_intercepts_and_slopes_of_a_multivariate_prior():
    N, J = 80, 5
    firm, x = groups(N, J, 3)
    g = torch.Generator().manual_seed(4)
    ab = torch.stack([1.0 + 2.0 * torch.randn(J, generator=g, dtype=torch.float64),
                      -0.5 + 0.5 * torch.randn(J, generator=g, dtype=torch.float64)], 1)
    y = ab[firm, 0] + ab[firm, 1] * x + 0.4 * torch.randn(N, generator=g, dtype=torch.float64)
    m = csis_dsl.compile_string(FIRMS, args={"N": N, "J": J, "firm": firm.tolist(), "x": x.tolist()})
    m.guide.fit_statistics()
    post = m.infer({"y": y.tolist()}, num_samples=4000, seed=0, program=0.0)
    assert post.ess > 0.8 * post.num_samples
    P0 = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64) ** -2)
    m0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    for j in range(J):
        X = torch.stack([torch.ones(int((firm == j).sum()), dtype=torch.float64),
                         x[firm == j]], 1)
        P = P0 + X.T @ X / 0.4 ** 2
        mean = torch.linalg.solve(P, P0 @ m0 + X.T @ y[firm == j] / 0.4 ** 2)
        sd = torch.linalg.inv(P).diagonal().sqrt()
        got = post.mean("ab")[j].double()
        assert float(((got - mean).abs() / sd).max()) < 0.15
        assert torch.allclose(post.std("ab")[j].double(), sd, rtol=0.1)


@pytest.mark.parametrize("index", ["county[n] - 1", "J - 1 - county[n]"])
def test_an_index_computed_from_data(index):
    """Any expression of data and the loop variable: here the groups renumbered."""
    N, J = 40, 5
    county, x = groups(N, J, 5)
    data = (county + 1) if index.startswith("county") else (J - 1 - county)
    src = RADON.replace("a[county[n]]", f"a[{index}]")
    m = csis_dsl.compile_string(src, args={"N": N, "J": J, "county": data.tolist(), "x": x.tolist()})
    assert "a" in m.guide.net.inputs.gathers
    g = torch.Generator().manual_seed(6)
    y = 1.0 + 0.3 * x + 0.8 * torch.randn(N, generator=g, dtype=torch.float64)
    m.guide.fit_statistics()
    post = m.infer({"y": y.tolist()}, num_samples=3000, seed=0, program=0.0)
    assert post.ess > 0.9 * post.num_samples
