"""The language for real models (issue 10): keyword arguments and logits, DiscreteUniform,
matrix algebra (@, transpose, slices, log_sum_exp, softmax, cumsum, diag), marginalised
mixtures, and honest refusals -- against exact log densities, enumeration, conjugate
posteriors and numpy."""
import math

import numpy as np
import pytest
import torch

import csis_dsl
from csis_dsl.errors import CompileError


def log_obs(src, values, obs, n, **kw):
    m = csis_dsl.compile_string(src, **kw)
    return m.pyro_model.score(n, observations=obs, values=values)[1]


def test_keyword_arguments_and_logits_give_the_same_densities():
    x = torch.tensor([-1.3, 0.2, 2.5])
    vals = {"b": x}
    y = {"y": True, "c": 2, "k": 7}
    kw = log_obs("""model a { b ~ Normal(loc=0.0, scale=1.0);
        observe y ~ Bernoulli(logits=b); observe c ~ Categorical(logits=[0.0, b, 2.0 * b]);
        observe k ~ Binomial(10, logits=b); }""", vals, y, 3)
    pos = log_obs("""model a { b ~ Normal(0.0, 1.0);
        observe y ~ Bernoulli(sigmoid(b)); observe c ~ Categorical(softmax([0.0, b, 2.0 * b]));
        observe k ~ Binomial(10, sigmoid(b)); }""", vals, y, 3)
    assert torch.allclose(kw, pos, rtol=1e-5)
    p = torch.sigmoid(x.double())
    c = torch.log_softmax(torch.stack([0 * x, x, 2 * x], -1).double(), -1)[:, 2]
    by_hand = torch.log(p) + c + math.log(math.comb(10, 7)) + 7 * torch.log(p) \
        + 3 * torch.log1p(-p)
    assert torch.allclose(kw.double(), by_hand, rtol=1e-5)


def test_discrete_uniform_posterior_matches_enumeration():
    m = csis_dsl.compile_string("""model d { u ~ DiscreteUniform(-2, 3);
        observe y ~ Normal(u, 1.0); }""")
    s = m.simulate(60000, seed=0)["u"].long()
    assert int(s.min()) == -2 and int(s.max()) == 3
    assert torch.allclose(torch.bincount(s + 2).double() / 60000, torch.full((6,), 1 / 6,
                          dtype=torch.float64), atol=0.01)
    m.train(num_steps=150, batch_size=256, seed=0, progress=False)
    post = m.infer({"y": 1.7}, num_samples=4000, seed=0)
    w = torch.tensor([math.exp(-0.5 * (1.7 - u) ** 2) for u in range(-2, 4)])
    w = w / w.sum()
    got = post.probabilities("u")
    assert all(abs(got.get(u, 0.0) - float(w[u + 2])) < 0.02 for u in range(-2, 4))


def test_beta_binomial_posterior_matches_enumeration():
    import pyro.distributions as pdist
    m = csis_dsl.compile_string("""model bb { k ~ BetaBinomial(2.0, 3.0, 10);
        observe y ~ Normal(k, 1.0); }""")
    m.train(num_steps=150, batch_size=256, seed=0, progress=False)
    post = m.infer({"y": 7.3}, num_samples=4000, seed=0)
    ks = torch.arange(11.0)
    w = torch.softmax(pdist.BetaBinomial(2.0, 3.0, total_count=10).log_prob(ks)
                      + torch.distributions.Normal(ks, 1.0).log_prob(torch.tensor(7.3)), 0)
    got = post.probabilities("k")
    assert max(abs(got.get(k, 0.0) - float(w[k])) for k in range(11)) < 0.03


def test_matrix_algebra_matches_numpy():
    X = np.random.default_rng(0).normal(size=(6, 3))
    m = csis_dsl.compile_string("""model mm {
        arg int N; arg int K; arg real[N, K] X;
        real[K] b ~ Normal(0.0, 1.0);
        observe real[N] y ~ Normal(X @ b, 1.0);
        g = transpose(X) @ (X @ b);
        row = X[1, :] @ b;
        col = X[:, 2];
        G = transpose(X) @ X;
        d = diag(b) @ X[0];
        lse = log_sum_exp(b);
        p = softmax(b);
        c = cumsum(b);
        q = b @ b;
    }""", args={"X": X})
    s = {k: v.double().numpy() for k, v in m.simulate(4, seed=0).items()}
    b = s["b"]
    assert np.allclose(s["y"].mean(), (b @ X.T).mean(), atol=2.0)
    assert np.allclose(s["g"], b @ X.T @ X, rtol=1e-4)
    assert np.allclose(s["row"], b @ X[1], rtol=1e-4, atol=1e-6)
    assert np.allclose(s["col"][0], X[:, 2], rtol=1e-5)
    assert np.allclose(s["G"][0], X.T @ X, rtol=1e-4)
    assert np.allclose(s["d"], b * X[0], rtol=1e-4)
    assert np.allclose(s["lse"], np.log(np.exp(b).sum(-1)), rtol=1e-5)
    assert np.allclose(s["p"], np.exp(b) / np.exp(b).sum(-1, keepdims=True), rtol=1e-5)
    assert np.allclose(s["c"], np.cumsum(b, -1), rtol=1e-5)
    assert np.allclose(s["q"], (b * b).sum(-1), rtol=1e-4)


def test_regression_with_matrix_product_on_a_data_file(tmp_path):
    """y = X @ beta + noise(0.3): the posterior of beta is Gaussian, exactly."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=50)
    (tmp_path / "d.csv").write_text("x0,x1,x2\n" + "\n".join(",".join(map(str, r)) for r in X))
    m = csis_dsl.compile_string("""model reg {
        arg int N; arg real[N] x0; arg real[N] x1; arg real[N] x2;
        real[3] beta ~ Normal(0.0, 10.0);
        for n in range(N) {
            observe y[n] ~ Normal([x0[n], x1[n], x2[n]] @ beta, 0.3);
        }
    }""", data=tmp_path / "d.csv")
    assert m.args["N"] == 50
    m.train(num_steps=200, batch_size=256, seed=0, progress=False)
    post = m.infer({"y": y}, num_samples=4000, seed=0, refine_steps=150)
    prec = X.T @ X / 0.09 + np.eye(3) / 100
    cov = np.linalg.inv(prec)
    mean = cov @ X.T @ y / 0.09
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(post.mean("beta").numpy() - mean) < 0.2 * sd)
    assert np.all(np.abs(post.std("beta").numpy() / sd - 1) < 0.25)


def test_marginalised_mixture_is_exact():
    src = """model gm {
        arg int N = 30;
        real[2] mu ~ Normal(0.0, 3.0);
        theta ~ Beta(2.0, 2.0);
        for n in range(N) {
            observe y[n] ~ Mixture([theta, 1.0 - theta], Normal(mu, [1.0, 0.5]));
        }
    }"""
    m = csis_dsl.compile_string(src)
    s = m.simulate(3, seed=0)
    y = s["y"][0].double()
    lp = m.pyro_model.score(3, observations={"y": y}, values={"mu": s["mu"],
                                                               "theta": s["theta"]})[1]
    for i in range(3):
        mu, th = s["mu"][i].double(), float(s["theta"][i])
        n0 = torch.distributions.Normal(mu[0], 1.0).log_prob(y) + math.log(th)
        n1 = torch.distributions.Normal(mu[1], 0.5).log_prob(y) + math.log(1 - th)
        assert float(lp[i]) == pytest.approx(float(torch.logaddexp(n0, n1).sum()), rel=1e-5)


def test_a_latent_mixture_posterior_matches_the_exact_one():
    m = csis_dsl.compile_string("""model lm {
        z ~ Mixture([0.2, 0.5, 0.3], Normal([-2.0, 0.0, 2.0], [0.5, 0.5, 0.5]));
        observe y ~ Normal(z, 1.0); }""")
    m.train(num_steps=200, batch_size=256, seed=0, progress=False)
    post = m.infer({"y": 1.5}, num_samples=4000, seed=0)
    # conjugate per component: weight w_k N(y; m_k, 1.25), mean m_k + 0.2 (y - m_k)
    w = torch.tensor([0.2, 0.5, 0.3]).double()
    mk = torch.tensor([-2.0, 0.0, 2.0]).double()
    a = w * torch.exp(-0.5 * (1.5 - mk) ** 2 / 1.25)
    a = a / a.sum()
    means = mk + 0.2 * (1.5 - mk)
    mean = float((a * means).sum())
    var = float((a * (0.2 + means ** 2)).sum()) - mean ** 2
    assert abs(float(post.mean("z")) - mean) < 0.1 * math.sqrt(var)
    assert abs(float(post.std("z")) / math.sqrt(var) - 1) < 0.1


@pytest.mark.parametrize("body, where, words", [
    ("corr_matrix[2] mu ~ Normal(0.0, 1.0);", "2:5",
     "the type 'corr_matrix' is not supported yet"),
    ("ordered[2] mu ~ Normal([0.0, 1.0], 1.0);", "2:21", "the parameters of Normal must be"),
    ("ordered[2] mu ~ Poisson(1.0);", "2:21", "a continuous scalar distribution"),
    ("positive_ordered[2] mu ~ Normal(0.0, 1.0);", "2:30", "needs a distribution of positive"),
    ("ordered<lower=0>[2] mu ~ Normal(0.0, 1.0);", "2:5", "ordered[K] takes no bounds"),
    ("cholesky_factor_corr[2] L ~ Normal(0.0, 1.0);", "2:5", "use LKJCholesky(K, eta)"),
    ("arg real k = 2.5; L ~ LKJCholesky(k, 1.0);", "2:39", "must be a positive integer known"),
    ("x ~ MultivariateNormal(zeros(2), scale_tril=[[1.0, 0.5], [0.0, 1.0]]);", "2:9",
     "must be lower triangular with a positive diagonal"),
    ("reel mu ~ Normal(0.0, 1.0);", "2:5", "unknown type 'reel'; did you mean 'real'?"),
    ("vector[2] mu ~ Normal(0.0, 1.0);", "2:5", "write real[K]"),
    ("mu ~ Flat();", "2:10", "an improper (flat) prior cannot be simulated"),
    ("mu ~ Normal(0.0, sd=1.0);", "2:22", "Normal has no parameter 'sd'; it is Normal(loc, scale)"),
    ("mu ~ Normal(loc=0.0, 1.0);", "2:26", "a positional argument cannot follow"),
    ("mu ~ Bernoulli(probs=0.5, logits=0.0);", "2:20", "Bernoulli(probs) or Bernoulli(logits)"),
    ("mu ~ Mixture([0.5, 0.5], MultivariateNormal([0.0, 0.0], eye(2)));", "2:30",
     "cannot be a mixture component"),
    ("mu ~ Mixture([0.5, 0.5], Normal([0.0, 1.0], 1.0));", "2:49",
     "one value per component (2)"),
    ("mu ~ Normal(sqrt(x=1.0), 1.0);", "2:22", "'sqrt' takes positional arguments only"),
    ("n ~ Poisson(3.0); mu ~ DiscreteUniform(0, n);", "2:28", "needs a number of values known"),
    ("real mu;", "2:12", "'mu' is declared without a distribution or a value"),
])
def test_honest_located_refusals(body, where, words):
    src = f"model m {{\n    {body}\n    observe y ~ Normal(0.0, 1.0);\n}}"
    with pytest.raises(CompileError) as e:
        csis_dsl.compile_string(src)
    msg = str(e.value)
    assert words in msg, msg
    assert f"<string>:{where}:" in msg, msg


def test_pima_with_matrix_product_and_logits_is_the_published_model():
    """specs/pima.ppl (X @ b, logits=) against bench/real/pima.ppl (one covariate at a
    time, sigmoid) near the posterior, and against the exact Bernoulli-logit density
    far out, where sigmoid rounds to 0 or 1 in float32 and only logits stay exact."""
    import json
    from conftest import ROOT, SPECS
    m = csis_dsl.compile(SPECS / "pima.ppl", data=SPECS / "pima.json")
    old = csis_dsl.compile(ROOT / "bench" / "real" / "pima.ppl",
                           data=ROOT / "bench" / "real" / "pima.json")
    d = json.loads((SPECS / "pima.json").read_text())
    b = torch.tensor([[0.03, 0.08, 0.05], [0.02, 0.05, 0.03]])
    i = torch.tensor([-9.0, -6.0])
    new_lp = m.pyro_model.score(2, observations=d["observations"],
                                values={"intercept": i, "b": b})[1]
    old_lp = old.pyro_model.score(2, observations=d["observations"], values={
        "intercept": i, "b_glu": b[:, 0], "b_bmi": b[:, 1], "b_age": b[:, 2]})[1]
    assert torch.allclose(new_lp, old_lp, rtol=1e-5)
    far = torch.tensor([[1.0, -1.0, 0.5]])
    lp = m.pyro_model.score(1, observations=d["observations"],
                            values={"intercept": torch.tensor([0.0]), "b": far})[1]
    X = torch.tensor(d["args"]["X"]).double()
    z = X @ far[0].double()
    yv = torch.tensor(d["observations"]["diabetic"]).double()
    exact = (yv * z - torch.nn.functional.softplus(z)).sum()
    assert float(lp) == pytest.approx(float(exact), rel=1e-4)


def test_quakes_mixture_sums_the_allocations_out():
    import json
    from conftest import SPECS
    m = csis_dsl.compile(SPECS / "quakes_mixture.ppl", data=SPECS / "quakes_mixture.json")
    d = json.loads((SPECS / "quakes_mixture.json").read_text())
    y = torch.tensor(d["observations"]["y"]).double()
    vals = {"w": torch.tensor([[0.4, 0.6]]), "mu": torch.tensor([[1.2, 5.6]]),
            "sigma": torch.tensor([[0.6, 0.9]])}
    lp = m.pyro_model.score(1, observations=d["observations"], values=vals)[1]
    comp = torch.stack([torch.distributions.Normal(1.2, 0.6).log_prob(y) + math.log(0.4),
                        torch.distributions.Normal(5.6, 0.9).log_prob(y) + math.log(0.6)])
    assert float(lp) == pytest.approx(float(torch.logsumexp(comp, 0).sum()), rel=1e-5)


def test_ordered_types_are_sorted_iid_draws():
    m = csis_dsl.compile_string("""model o {
        ordered[2] mu ~ Normal(0.0, 2.0);
        positive_ordered[3] s ~ Gamma(2.0, 1.0);
        observe y ~ Normal(mu[1] - mu[0] + s[0], 1.0); }""")
    sims = m.simulate(40000, seed=0)
    mu, s = sims["mu"].double(), sims["s"].double()
    assert bool((mu[:, 1] > mu[:, 0]).all()) and bool((s[:, 1:] > s[:, :-1]).all())
    assert bool((s > 0).all())
    # E[max of two iid N(0, 2^2)] = 2 / sqrt(pi)
    assert abs(float(mu[:, 1].mean()) - 2 / math.sqrt(math.pi)) < 0.03
    v = {k: sims[k][:5] for k in ("mu", "s")}
    lj = m.pyro_model.score(5, observations={"y": 0.5}, values=v)[0]
    n2, g = torch.distributions.Normal(0.0, 2.0), torch.distributions.Gamma(2.0, 1.0)
    by_hand = (n2.log_prob(v["mu"]).sum(-1) + math.log(2) + g.log_prob(v["s"]).sum(-1)
               + math.log(6))
    assert torch.allclose(lj, by_hand, atol=1e-4)
    bad = {"mu": torch.tensor([[1.0, 0.0]]), "s": v["s"][:1]}
    assert float(m.pyro_model.score(1, observations={"y": 0.5}, values=bad)[0]) == -math.inf
    # the proposal proposes increasing vectors only, and its posterior agrees with
    # importance sampling from the prior
    m.train(num_steps=200, batch_size=256, seed=0, progress=False)
    post = m.infer({"y": 4.0}, num_samples=4000, seed=0)
    draws = post.values("mu")
    assert bool((draws[:, 1] > draws[:, 0]).all()) and bool((post.values("s") > 0).all())
    ref = m.infer({"y": 4.0}, num_samples=400_000, proposal="prior", seed=1)
    assert post.ess > 400 and ref.ess > 2000
    for name in ("mu", "s"):
        err = (post.mean(name) - ref.mean(name)).abs() / ref.std(name)
        assert float(err.max()) < 0.15, (name, err)


def test_lkj_cholesky_and_scale_tril():
    from scipy import stats
    m = csis_dsl.compile_string("""model c {
        cholesky_factor_corr[2] L ~ LKJCholesky(2, 3.0);
        real<lower=0>[2] tau ~ HalfNormal(1.0);
        real[2] b ~ MultivariateNormal(zeros(2), scale_tril=diag(tau) @ L);
        observe y ~ Normal(b[0] - b[1], 0.5); }""")
    assert m.checked.vars["L"].type.shape == (2, 2)
    sims = m.simulate(20000, seed=0)
    L = sims["L"].double()
    # for K = 2 the correlation r = L[1, 0] has (r + 1) / 2 ~ Beta(eta, eta)
    r = L[:, 1, 0]
    assert stats.kstest(((r + 1) / 2).numpy(), stats.beta(3.0, 3.0).cdf).pvalue > 0.001
    v = {k: sims[k][:4] for k in ("L", "tau", "b")}
    lj = m.pyro_model.score(4, observations={"y": 0.3}, values=v)[0]
    d = torch.distributions
    by_hand = torch.stack([
        d.LKJCholesky(2, 3.0).log_prob(v["L"][i]) + d.HalfNormal(1.0).log_prob(v["tau"][i]).sum()
        + d.MultivariateNormal(torch.zeros(2), scale_tril=torch.diag(v["tau"][i]) @ v["L"][i]
                               ).log_prob(v["b"][i]) for i in range(4)])
    assert torch.allclose(lj, by_hand, atol=1e-4)
    # the generated proposal draws valid Cholesky factors of correlation matrices
    m.train(num_steps=100, batch_size=256, seed=0, progress=False)
    post = m.infer({"y": 2.5}, num_samples=3000, seed=0)
    Lq = post.values("L")
    assert torch.allclose((Lq ** 2).sum(-1), torch.ones(3000, 2, dtype=Lq.dtype), atol=1e-5)
    assert float(Lq[:, 0, 1].abs().max()) == 0.0 and bool((Lq[:, 1, 1] > 0).all())
    ref = m.infer({"y": 2.5}, num_samples=300_000, proposal="prior", seed=1)
    for name in ("tau", "b"):
        err = (post.mean(name) - ref.mean(name)).abs() / ref.std(name)
        assert float(err.max()) < 0.2, (name, err)


def test_multinomial_posterior_matches_enumeration():
    import itertools
    m = csis_dsl.compile_string("""model mn {
        int[3] c ~ Multinomial(4, [0.2, 0.3, 0.5]);
        observe y ~ Normal(c[0] - c[2], 1.0); }""")
    sims = m.simulate(40000, seed=0)["c"].double()
    assert bool((sims.sum(-1) == 4).all())
    assert torch.allclose(sims.mean(0), torch.tensor([0.8, 1.2, 2.0], dtype=torch.float64),
                          atol=0.03)
    support = torch.tensor([c for c in itertools.product(range(5), repeat=3) if sum(c) == 4],
                           dtype=torch.float64)
    d = torch.distributions
    lp = d.Multinomial(4, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)).log_prob(support)
    got = m.pyro_model.score(len(support), values={"c": support.float()})[0]
    assert torch.allclose(got.double(), lp, atol=1e-4)
    post_w = torch.softmax(lp + d.Normal(support[:, 0] - support[:, 2], 1.0).log_prob(
        torch.tensor(1.5, dtype=torch.float64)), 0)
    exact = (post_w.unsqueeze(-1) * support).sum(0)
    m.train(num_steps=150, batch_size=256, seed=0, progress=False)
    post = m.infer({"y": 1.5}, num_samples=4000, seed=0)
    assert bool((post.values("c").sum(-1) == 4).all())
    assert post.ess > 1500
    assert torch.allclose(post.mean("c"), exact, atol=0.06)


@pytest.mark.parametrize("stem", ["grunfeld", "faithful_mixture"])
def test_correlated_and_ordered_specs_on_real_data_score_exactly(stem):
    from conftest import compile_spec, SPECS
    m = compile_spec(stem)
    obs = csis_dsl.read_data(SPECS / f"{stem}.json", part="observations")
    sims = m.simulate(3, seed=0)
    values = {k: sims[k] for k in m.latents}
    lp_lat, lp_obs, _ = m.pyro_model.score(3, observations=obs, values=values)
    d = torch.distributions
    y = torch.tensor(obs["y"])
    for i in range(3):
        v = {k: sims[k][i] for k in m.latents}
        if stem == "grunfeld":
            args = m.checked.args
            lat = (d.Normal(0.0, 5.0).log_prob(v["mu"]).sum()
                   + d.HalfNormal(1.0).log_prob(v["tau"]).sum()
                   + d.LKJCholesky(2, 2.0).log_prob(v["L"])
                   + d.HalfNormal(1.0).log_prob(v["sigma"])
                   + d.MultivariateNormal(v["mu"], scale_tril=torch.diag(v["tau"]) @ v["L"]
                                          ).log_prob(v["ab"]).sum())
            ab = v["ab"][args["firm"].long()]
            ob = d.Normal(ab[:, 0] + ab[:, 1] * args["x"], v["sigma"]).log_prob(y).sum()
        else:
            lat = (d.Normal(3.0, 2.0).log_prob(v["mu"]).sum() + math.log(2)
                   + d.HalfNormal(1.0).log_prob(v["sigma"]).sum()
                   + d.Beta(2.0, 2.0).log_prob(v["theta"]))
            w = torch.stack([v["theta"], 1 - v["theta"]])
            ob = torch.logsumexp(torch.log(w) + d.Normal(v["mu"], v["sigma"]).log_prob(
                y.unsqueeze(-1)), -1).sum()
        assert abs(float(lp_lat[i]) - float(lat)) < 1e-3 * max(1.0, abs(float(lat)))
        assert abs(float(lp_obs[i]) - float(ob)) < 1e-3 * max(1.0, abs(float(ob)))


def test_one_indexed_definition_that_does_not_fill_its_array():
    """s[0] = a alone, or h[t] for t from 1: the elements set are stored where their
    indices say (a family of one piece), reading an element never set is a located
    error, and indices that do not follow the loops' order are refused, not misplaced."""
    import torch.distributions as D
    m = csis_dsl.compile_string("model m { a ~ Normal(0.0, 1.0); s[0] = a; "
                                "observe y ~ Normal(s[0], 1.0); }", name="m.ppl")
    sims = m.simulate(4, seed=0)
    assert sims["s"].shape == (4, 1) and torch.equal(sims["s"][:, 0], sims["a"])
    m = csis_dsl.compile_string("model m { a ~ Normal(0.0, 1.0); s[0] ~ Normal(a, 2.0); "
                                "observe y ~ Normal(s[0], 1.0); }", name="m.ppl")
    lp = m.log_joint({"a": 0.5, "s": [1.5], "y": 1.0})
    want = D.Normal(0.0, 1.0).log_prob(torch.tensor(0.5)) + \
        D.Normal(0.5, 2.0).log_prob(torch.tensor(1.5)) + D.Normal(1.5, 1.0).log_prob(torch.tensor(1.0))
    assert float(lp) == pytest.approx(float(want), abs=1e-5)
    m = csis_dsl.compile_string("model m { a ~ Normal(0.0, 1.0); for t in range(1, 3) { "
                                "s[t] = a + t; } observe y ~ Normal(s[2], 1.0); }", name="m.ppl")
    sims = m.simulate(3, seed=0)
    assert torch.allclose(sims["s"][:, 1:], sims["a"][:, None] + torch.tensor([1.0, 2.0]))
    with pytest.raises(csis_dsl.ModelRuntimeError, match="element of 's' that does not exist"):
        csis_dsl.compile_string("model m { a ~ Normal(0.0, 1.0); for t in range(1, 3) { "
                                "s[t] ~ Normal(a, 1.0); } observe y ~ Normal(s[0], 1.0); }"
                                ).simulate(2, seed=0)       # s[0] is never set: not a 0
    with pytest.raises(csis_dsl.ModelRuntimeError, match="index 1 is out of range for 's'"):
        csis_dsl.compile_string("model m { a ~ Normal(0.0, 1.0); s[0] = a; for t in range(1, 3) "
                                "{ q[t] = s[t - 1]; } observe y ~ Normal(s[0], 1.0); }"
                                ).simulate(2, seed=0)
    with pytest.raises(csis_dsl.CompileError, match="not a 1-D family"):
        csis_dsl.compile_string("model m { a ~ Normal(0.0, 1.0); for i in range(2) { for j in "
                                "range(3) { s[j, i] = a + j; } } observe y ~ Normal(s[2, 1], 1.0); }")
    # the same element set at every iteration of a loop (found by the mutation test)
    with pytest.raises(csis_dsl.CompileError, match=r"m.ppl:1:55: .*'c' would be set again at "
                                                    r"every iteration of the loop over 'i'"):
        csis_dsl.compile_string("model m { w ~ Dirichlet(ones(3)); for i in range(4) { "
                                "c[0] ~ Categorical(w); observe y[i] ~ Normal(c[0], 1.0); } }",
                                name="m.ppl")
