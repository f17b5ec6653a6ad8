"""Look-ahead messages for chains (csis_dsl/proposals/lookahead.py): with the chain's
parameters known, the informed proposal of an untrained network is the exact
conditional p(h | y) -- checked against Gaussian conditioning and exact enumeration,
and by importance weights that are all equal."""
import itertools
import math
import warnings

import pytest
import torch

import csis_dsl

GAUSS = """
model ar1 {
    arg int T;
    h[0] ~ Normal(0.5, 1.0);
    for t in range(1, T) {
        h[t] ~ Normal(0.8 * h[t - 1] + 0.1, 0.5);
    }
    for t in range(T) {
        observe y[t] ~ Normal(h[t], 0.7);
    }
}
"""

HMM = """
model hmm {
    arg int T;
    arg real[2, 2] P = [[0.9, 0.1], [0.2, 0.8]];
    z[0] ~ Categorical([0.5, 0.5]);
    for t in range(1, T) {
        z[t] ~ Categorical(P[z[t - 1]]);
    }
    for t in range(T) {
        observe y[t] ~ Poisson(z[t] * 4.0 + 1.0);
    }
}
"""


def compiled(tmp_path, src, **args):
    p = tmp_path / "m.ppl"
    p.write_text(src)
    m = csis_dsl.compile(p, args=args)
    m.train(num_steps=0, progress=False, seed=0)      # statistics only, no gradient step
    return m


def exact_gaussian(y, T):
    """The posterior of h given y by dense Gaussian conditioning (float64)."""
    y = torch.as_tensor(y, dtype=torch.float64)
    # h = L eps + c with the AR(1) recursion written as a linear map
    A = torch.zeros(T, T, dtype=torch.float64)
    c = torch.zeros(T, dtype=torch.float64)
    sd = torch.full((T,), 0.5, dtype=torch.float64)
    sd[0] = 1.0
    for t in range(T):
        if t == 0:
            c[0] = 0.5
        else:
            A[t] = 0.8 * A[t - 1]
            c[t] = 0.8 * c[t - 1] + 0.1
        A[t, t] = sd[t]
    prior_cov = A @ A.T
    S = prior_cov + 0.49 * torch.eye(T, dtype=torch.float64)
    K = prior_cov @ torch.linalg.inv(S)
    mean = c + K @ (y - c)
    cov = prior_cov - K @ prior_cov
    return mean, cov.diagonal().sqrt()


def test_linear_gaussian_chain_is_proposed_exactly(tmp_path):
    T = 40
    m = compiled(tmp_path, GAUSS, T=T)
    y = m.simulate(1, seed=3)["y"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = m.infer({"y": y}, num_samples=3000, seed=0, defensive=0.0)
    # equal weights: the proposal is the posterior itself
    assert post.ess > 0.99 * post.num_samples
    mean, sd = exact_gaussian(y, T)
    err = ((post.mean("h").double() - mean).abs() / sd).max()
    ratio = (post.std("h").double() / sd - 1).abs().max()
    assert err < 0.15 and ratio < 0.1, (float(err), float(ratio))


def test_hidden_markov_chain_is_proposed_exactly(tmp_path):
    T = 10
    m = compiled(tmp_path, HMM, T=T)
    y = torch.tensor([1., 0, 2, 6, 4, 5, 1, 7, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = m.infer({"y": y}, num_samples=4000, seed=0, defensive=0.0)
    assert post.ess > 0.99 * post.num_samples
    # exact marginals by enumerating all 2^T paths
    P = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    paths = torch.tensor(list(itertools.product([0, 1], repeat=T)))
    lp = torch.full((len(paths),), math.log(0.5), dtype=torch.float64)
    lp = lp + torch.log(P[paths[:, :-1], paths[:, 1:]]).sum(-1)
    rate = paths.double() * 4.0 + 1.0
    lp = lp + torch.distributions.Poisson(rate).log_prob(y.double()).sum(-1)
    w = torch.softmax(lp, 0)
    p1 = (w.unsqueeze(-1) * paths.double()).sum(0)
    assert (post.mean("z").double() - p1).abs().max() < 0.03


def test_look_ahead_only_for_first_order_chains(tmp_path):
    """A chain that reads h[t - 2] gets no message (the state would need augmenting):
    its proposal is the filter's, still a valid importance sampler."""
    src = """
    model ar2 {
        h[0] ~ Normal(0.0, 1.0);
        h[1] ~ Normal(0.0, 1.0);
        for t in range(2, 12) {
            h[t] ~ Normal(0.5 * h[t - 1] + 0.3 * h[t - 2], 0.5);
        }
        for t in range(12) {
            observe y[t] ~ Normal(h[t], 0.7);
        }
    }
    """
    m = compiled(tmp_path, src)
    assert m.guide.net.by_name["h"].lag == 2
    y = m.simulate(1, seed=1)["y"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = m.infer({"y": y}, num_samples=2000, seed=0, defensive=0.0)
    assert 1.0 < post.ess < 0.99 * post.num_samples    # valid, not exact


@pytest.mark.parametrize("obs_noise", [0.2, 3.0])
def test_nonlinear_chain_weights_stay_finite(tmp_path, obs_noise):
    """A positive chain (log-normal random walk) seen through Poisson counts: the
    linearised message is an approximation; the weights stay exact and finite."""
    src = f"""
    model sv {{
        s ~ HalfNormal(0.5);
        v[0] ~ LogNormal(0.0, 1.0);
        for t in range(1, 20) {{
            v[t] ~ LogNormal(log(v[t - 1]), s + {obs_noise});
        }}
        for t in range(20) {{
            observe k[t] ~ Poisson(v[t]);
        }}
    }}
    """
    m = compiled(tmp_path, src)
    obs = m.simulate(1, seed=2)["k"][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = m.infer({"k": obs}, num_samples=1000, seed=0)
    assert post.ess > 1.0
    assert torch.isfinite(post.log_weights).all()
