"""Large plates (issue 9): what keeps a training step's cost from growing with the number
of instances -- the training loss estimated from a random subset of a plate's instances
(unbiased), a statement scored on a subset of its loop, the set embedding in chunks, and
categorical draws by the inverse CDF -- each against an independent computation."""
import math

import pytest
import torch

import csis_dsl
from csis_dsl.backend.handlers import SiteHandler
from csis_dsl.backend.interpreter import Runtime
from csis_dsl.backend.values import Stored
from csis_dsl.catalogue.distributions import Categorical
from csis_dsl.engine.train import joint_batch
from csis_dsl.frontend.parser import parse
from csis_dsl.frontend.statements import check
from csis_dsl.middle.plan import make_plan
from csis_dsl.proposals import embedding

MIXTURE = """
model mix {
    arg int N = 40;
    simplex[3] w ~ Dirichlet(ones(3));
    real[3] mu ~ Normal(0.0, 5.0);
    for n in range(N) {
        c[n] ~ Categorical(w);
        observe y[n] ~ Normal(mu[c[n]], 1.0);
    }
}
"""


def test_categorical_draws_are_exact_and_never_impossible():
    torch.manual_seed(0)
    p = torch.tensor([0.0, 0.2, 0.0, 0.5, 0.3, 0.0])
    n = 400_000
    x = Categorical(probs=p).sample((n,))
    counts = torch.bincount(x, minlength=6).double()
    assert counts[p == 0].sum() == 0
    # chi-square over the possible values, 2 degrees of freedom: P(> 20) < 1e-4
    e = n * p[p > 0].double()
    assert float(((counts[p > 0] - e) ** 2 / e).sum()) < 20.0
    # batched, expanded and from logits: shapes and per-row frequencies
    logits = torch.tensor([[0.0, -math.inf, 1.0], [2.0, 0.0, -1.0]])
    d = Categorical(logits=logits.unsqueeze(1)).expand((2, 5000))
    draws = d.sample((20,))
    assert draws.shape == (20, 2, 5000)
    freq = torch.stack([(draws[:, r] == k).double().mean() for r in range(2) for k in range(3)])
    want = torch.softmax(logits, -1).reshape(-1).double()
    assert torch.allclose(freq, want, atol=0.01)
    assert not bool((draws[:, 0] == 1).any())


def test_a_statement_scored_on_a_subset_of_its_loop_equals_the_full_score_there():
    checked = check(parse(MIXTURE, "m.ppl"), {"N": 12})
    plan = make_plan(checked)
    torch.manual_seed(1)
    rt = Runtime(checked, plan, 4, SiteHandler(), dict(checked.args))
    rt.run()
    s = checked.vars["y"].stmts[0]
    y = rt.env["y"].t
    cand = Stored(torch.randint(0, 3, (4, 12)))
    full = rt.stmt_log_prob(s, y, {"c": cand})                       # (4, 12)
    keep = torch.tensor([7, 0, 11, 3])
    part = rt.stmt_log_prob(s, y, {"c": cand}, {0: keep})            # (4, 4)
    assert part.shape == (4, 4)
    assert torch.allclose(part, full[:, keep])
    # and by hand: Normal(mu[c[n]], 1) at y[n]
    mu = rt.env["mu"].t
    by_hand = torch.distributions.Normal(mu.gather(1, cand.t), 1.0).log_prob(y)
    assert torch.allclose(full, by_hand, atol=1e-5)


@pytest.fixture(scope="module")
def mixture():
    m = csis_dsl.compile_string(MIXTURE, name="mix.ppl")
    m.train(num_steps=30, batch_size=64, progress=False, validation_size=0, seed=0)
    torch.manual_seed(2)
    latents, obs = joint_batch(m, 8)
    return m, latents, obs


def test_the_subsampled_training_loss_is_unbiased(mixture):
    """log q from m of the N allocations, each weighted N / m, averages to the full log q
    (a Monte Carlo check within 4.5 standard errors), and m >= N is the full log q."""
    m, latents, obs = mixture
    with torch.no_grad():
        full = m.guide.log_q(obs, latents, 8)
        assert torch.allclose(m.guide.log_q(obs, latents, 8, subsample=40), full)
        draws = torch.stack([m.guide.log_q(obs, latents, 8, subsample=5) for _ in range(600)])
    assert not torch.allclose(draws[0], full)          # it is an estimate
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((mean - full).abs() <= 4.5 * se + 1e-4).all()), (mean, full, se)


def test_subsampled_scores_are_the_full_scores_of_the_kept_instances(mixture, monkeypatch):
    """With the subset fixed, the estimate is exactly N / m times the sum of the kept
    allocations' own log q (the facts, the instance inputs and the network output on the
    subset equal the full computation's there)."""
    m, latents, obs = mixture
    keep = torch.tensor([3, 17, 31, 5, 22])
    monkeypatch.setattr(torch, "randperm", lambda n, **kw: torch.cat(
        [keep, torch.tensor([j for j in range(n) if j not in keep.tolist()])]))
    from csis_dsl.proposals.site_proposal import SiteProposal
    seen = {}
    score = SiteProposal._score

    def spy(self, x, subsample=None):
        out = score(self, x, subsample)
        seen[(self.info.name, subsample)] = out
        return out
    monkeypatch.setattr(SiteProposal, "_score", spy)
    with torch.no_grad():
        m.guide.log_q(obs, latents, 8)
        m.guide.log_q(obs, latents, 8, subsample=5)
    full, part = seen[("c", None)], seen[("c", 5)]
    assert torch.allclose(part[:, keep], full[:, keep] * 40 / 5, atol=1e-4)
    rest = torch.ones(40, dtype=torch.bool)
    rest[keep] = False
    assert bool((part[:, rest] == 0).all())
    # the globals (one instance each) are scored in full either way
    assert torch.allclose(seen[("mu", 5)], seen[("mu", None)])


def test_the_set_embedding_equals_the_plain_layer(monkeypatch):
    """The mean over instances of relu(layer(x)): from the sorted data (scalar data, with
    ties, hinges of zero weight and of both signs) and in chunks (wider data), the same
    values and gradients as the plain computation."""
    torch.manual_seed(3)
    for width in (1, 3):
        layer = torch.nn.Linear(width, 8)
        with torch.no_grad():
            layer.weight[0] = 0.0
            layer.bias[0] = 0.4
            layer.weight[1] = 0.0
            layer.bias[1] = -0.2
        x = torch.randn(5, 37, width)
        x[:, :6] = 0.3                                           # ties
        plain = torch.relu(layer(x)).mean(1)
        g_plain = torch.autograd.grad(plain.square().sum(), list(layer.parameters()))
        assert (layer.weight[:, 0] > 0).any() and (layer.weight[:, 0] < 0).any()
        monkeypatch.setattr(embedding, "POOL_CHUNK", 20)       # chunks of 4 instances
        chunked = embedding.pooled_layer(layer, x)
        g_chunked = torch.autograd.grad(chunked.square().sum(), list(layer.parameters()))
        assert torch.allclose(plain, chunked, atol=1e-6)
        for a, b in zip(g_plain, g_chunked):
            assert torch.allclose(a, b, atol=1e-5)
        with torch.no_grad():
            assert torch.allclose(embedding.pooled_layer(layer, x), plain, atol=1e-6)
