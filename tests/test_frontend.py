"""The language: every brief program compiles; graph, simulation statistics, log
densities (hand-computed), NUTS against the analytic posterior."""
import math

import pyro
import pytest
import torch
import torch.distributions as D
from torch.distributions import constraints

import csis_dsl
from conftest import SPECS

BRIEF = ["gaussian", "linear_regression", "gaussian_linear", "mixture", "outlier",
         "counting", "random_walk"]


@pytest.mark.parametrize("name", BRIEF)
def test_brief_program_compiles_and_simulates(name):
    m = csis_dsl.compile(SPECS / f"{name}.ppl")
    assert m.name == name
    sims = m.simulate(64, seed=0)
    for n in m.latents + m.observed:
        assert sims[n].shape == (64,) + tuple(m.graph.nodes[n]["shape"])


EXPECTED_GRAPH = {
    "gaussian": ({"prior_mean": "arg", "z": "latent", "x1": "observed", "x2": "observed"},
                 {("prior_mean", "z", "data"), ("z", "x1", "data"), ("z", "x2", "data")}),
    "outlier": ({"mu": "latent", "is_outlier": "latent", "y": "observed"},
                {("mu", "y", "data"), ("is_outlier", "y", "control")}),
    "counting": ({"max_objects": "arg", "n": "latent", "size": "latent",
                  "total": "deterministic", "brightness": "observed"},
                 {("max_objects", "n", "data"), ("n", "size", "control"),
                  ("size", "total", "data"), ("total", "brightness", "data")}),
    "random_walk": ({"T": "arg", "drift": "latent", "h": "latent", "y": "observed"},
                    {("drift", "h", "data"), ("T", "h", "control"), ("h", "y", "data"),
                     ("T", "y", "control")}),
    "mixture": ({"N": "arg", "K": "arg", "w": "latent", "mu": "latent", "c": "latent",
                 "y": "observed"},
                {("K", "w", "data"), ("w", "c", "data"), ("N", "c", "control"),
                 ("c", "y", "data"), ("mu", "y", "data"), ("N", "y", "control")}),
    "linear_regression": ({"N": "arg", "x": "arg", "slope": "latent", "intercept": "latent",
                           "sigma": "latent", "y": "observed"},
                          {("x", "y", "data"), ("slope", "y", "data"),
                           ("intercept", "y", "data"), ("sigma", "y", "data"),
                           ("N", "y", "control"), ("N", "x", "data")}),
    "gaussian_linear": ({"D": "arg", "theta": "latent", "x": "observed"},
                        {("theta", "x", "data")}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_GRAPH))
def test_graph_nodes_kinds_edges(name):
    g = csis_dsl.compile(SPECS / f"{name}.ppl").graph
    kinds, edges = EXPECTED_GRAPH[name]
    assert {n: a["kind"] for n, a in g.nodes(data=True)} == kinds
    assert {(u, v, d["dependence"]) for u, v, d in g.edges(data=True)} == edges


def test_graph_attributes():
    g = csis_dsl.compile(SPECS / "counting.ppl").graph
    a = g.nodes["size"]
    assert a["distribution"] == "Gamma" and a["shape"] == (6,) and a["conditional"]
    assert a["support"] is constraints.positive and not a["discrete"]
    assert a["loops"] == [("k", 6)]
    assert g.nodes["n"]["discrete"] and g.nodes["n"]["support"].upper_bound == 5
    assert not g.nodes["brightness"]["conditional"]
    assert "digraph" in csis_dsl.compile(SPECS / "mixture.ppl").dump("dot")


def test_simulation_statistics():
    g = csis_dsl.compile(SPECS / "gaussian.ppl").simulate(200_000, seed=1)
    se = math.sqrt(7 / 200_000)
    assert abs(float(g["x1"].mean()) - 1.0) < 5 * se
    assert abs(float(g["x1"].var()) - 7.0) < 0.1
    gl = csis_dsl.compile(SPECS / "gaussian_linear.ppl").simulate(100_000, seed=2)
    assert torch.allclose(gl["x"].var(0), torch.full((10,), 0.2), atol=0.01)
    c = csis_dsl.compile(SPECS / "counting.ppl").simulate(60_000, seed=3)
    freq = torch.bincount(c["n"].long(), minlength=6).double() / 60_000
    assert torch.allclose(freq, torch.full((6,), 1 / 6, dtype=torch.float64), atol=0.01)
    # total sums exactly the sizes that exist
    n = c["n"].long()
    mask = torch.arange(6) <= n.unsqueeze(-1)
    assert torch.allclose(c["total"], (c["size"] * mask).sum(-1), atol=1e-4)


def test_log_joint_gaussian_by_hand():
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    lp = m.log_joint({"z": 2.0, "x1": 1.5, "x2": 3.0})
    want = (D.Normal(1.0, math.sqrt(5)).log_prob(torch.tensor(2.0))
            + D.Normal(2.0, math.sqrt(2)).log_prob(torch.tensor(1.5))
            + D.Normal(2.0, math.sqrt(2)).log_prob(torch.tensor(3.0)))
    assert float(lp) == pytest.approx(float(want), abs=1e-4)


@pytest.mark.parametrize("flag", [0, 1])
def test_log_joint_outlier_masks_the_branch_not_taken(flag):
    m = csis_dsl.compile(SPECS / "outlier.ppl")
    lp = m.log_joint({"mu": 0.5, "is_outlier": float(flag), "y": 4.0})
    y = torch.tensor(4.0)
    lik = D.StudentT(3.0, 0.5, 10.0).log_prob(y) if flag else D.Normal(0.5, 1.0).log_prob(y)
    want = D.Normal(0.0, 10.0).log_prob(torch.tensor(0.5)) + \
        D.Bernoulli(0.1).log_prob(torch.tensor(float(flag))) + lik
    assert float(lp) == pytest.approx(float(want), abs=1e-4)


def test_log_joint_counting_ignores_absent_elements():
    m = csis_dsl.compile(SPECS / "counting.ppl")
    size = torch.tensor([1.0, 2.0, 0.5, 9.0, 9.0, 9.0])   # only 3 exist when n = 2
    lp = m.log_joint({"n": 2, "size": size, "brightness": 3.0})
    want = math.log(1 / 6) + D.Gamma(2.0, 1.0).log_prob(size[:3]).sum() + \
        D.Normal(3.5, 0.5).log_prob(torch.tensor(3.0))
    assert float(lp) == pytest.approx(float(want), abs=1e-4)


def test_log_joint_random_walk_sequential_family():
    m = csis_dsl.compile(SPECS / "random_walk.ppl", args={"T": 4})
    h = torch.tensor([0.3, -0.1, 0.4, 0.2])
    y = torch.tensor([0.0, 0.1, 0.2, 0.3])
    lp = m.log_joint({"drift": 0.1, "h": h, "y": y})
    want = D.Normal(0.0, 0.5).log_prob(torch.tensor(0.1)) + D.Normal(0.0, 1.0).log_prob(h[0])
    want = want + D.Normal(h[:-1] + 0.1, 0.3).log_prob(h[1:]).sum()
    want = want + D.Normal(h, 0.5).log_prob(y).sum()
    assert float(lp) == pytest.approx(float(want), abs=1e-4)


def test_nuts_recovers_analytic_posterior():
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    pyro.set_rng_seed(0)
    mcmc = pyro.infer.MCMC(pyro.infer.NUTS(m.pyro_model), num_samples=1500, warmup_steps=300,
                           disable_progbar=True)
    mcmc.run(observations={"x1": 8.0, "x2": 9.0})
    z = mcmc.get_samples()["z"]
    sd = math.sqrt(5 / 6)
    # effective sample size of NUTS here is ~ the sample count; allow 5 standard errors
    assert abs(float(z.mean()) - 7.25) < 5 * sd / math.sqrt(500)
    assert abs(float(z.std()) - sd) < 0.1


def test_pyro_importance_and_render_run():
    m = csis_dsl.compile(SPECS / "outlier.ppl")
    imp = pyro.infer.Importance(m.pyro_model, num_samples=50).run(observations={"y": 1.0})
    assert len(imp.log_weights) == 50
    pyro.render_model(m.pyro_model, model_kwargs={"observations": {"y": 1.0}})


def test_vectorised_simulation_is_one_batch():
    sims = csis_dsl.compile(SPECS / "mixture.ppl").simulate(1000, seed=0)
    assert sims["c"].shape == (1000, 30) and sims["c"].max() <= 2


@pytest.mark.parametrize("dist,low,high,base", [
    ("Gamma(2.0, 1.0)", 1.0, 3.0, D.Gamma(2.0, 1.0)),              # bisection on the CDF
    ("Gamma(2.0, 1.0)", 3.0, None, D.Gamma(2.0, 1.0)),
    ("Chi2(3.0)", 0.5, 2.0, D.Chi2(3.0)),
    ("Normal(0.0, 1.0)", None, -0.5, D.Normal(0.0, 1.0)),           # torch's inverse CDF
    ("Weibull(1.0, 2.0)", 0.5, None, D.Weibull(1.0, 2.0)),
])
def test_truncation_density_and_sampling(dist, low, high, base):
    t = f"T[{'' if low is None else low}, {'' if high is None else high}]"
    m = csis_dsl.compile_string(f"model t {{ s ~ {dist} {t}; observe y ~ Normal(s, 1.0); }}")
    # log density: the base density renormalised by the mass of the interval
    x = torch.tensor(2.0 if high is None or high > 2 else -1.0)
    if low is not None and x < low:
        x = torch.tensor(low + 0.25)
    mass = (base.cdf(torch.tensor(high)) if high is not None else 1.0) - \
        (base.cdf(torch.tensor(low)) if low is not None else 0.0)
    want = base.log_prob(x) - math.log(float(mass)) + D.Normal(x, 1.0).log_prob(torch.tensor(0.0))
    assert torch.allclose(m.log_joint({"s": x, "y": 0.0}), want, atol=1e-4)
    # samples: inside the interval, mean equal to the truncated mean by quadrature
    s = m.simulate(100_000, seed=0)["s"].double()
    lo = low if low is not None else -12.0
    hi = high if high is not None else 40.0
    g = torch.linspace(lo, hi, 200_001, dtype=torch.float64)
    d = base.log_prob(g.float().clamp(min=1e-6) if lo >= 0 else g.float()).double().exp()
    mean = float(torch.trapezoid(g * d, g) / torch.trapezoid(d, g))
    assert float(s.min()) >= lo and float(s.max()) <= hi
    assert abs(float(s.mean()) - mean) < 5 * float(s.std()) / math.sqrt(len(s))


def test_dot_export_shapes_clusters_and_control_edges():
    dot = csis_dsl.compile(SPECS / "counting.ppl").dump("dot")
    assert dot == csis_dsl.compile(SPECS / "counting.ppl").dump("dot")   # deterministic
    assert '"max_objects" [label="max_objects", shape=box, style="rounded"' in dot
    assert '"n" [label="n\\n~ Categorical", shape=ellipse]' in dot
    assert '"total" [label="total", shape=box]' in dot
    assert '"brightness" [label="brightness\\n~ Normal", shape=ellipse, style="filled"' in dot
    cluster = dot[dot.index("subgraph"):dot.index("}", dot.index("subgraph"))]
    assert 'label="for k in range(6)"' in cluster and '"size"' in cluster
    assert '"n" -> "size" [style=dashed];' in dot and '"size" -> "total";' in dot
