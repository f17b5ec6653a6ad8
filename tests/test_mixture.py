"""The mixture infer draws from: the trained network, the program's own proposal (no
network: priors, exact local posteriors, Laplace fits, messages) and both broadened,
over whole traces, with a pilot setting the program's share -- against
analytic posteriors and hand-computed mixture densities."""
import math

import pytest
import torch

import csis_dsl
from csis_dsl.backend.observations import Observations
from csis_dsl.engine.posterior import choose_program_share, component
from conftest import SPECS

OBS = {"x1": 8.0, "x2": 9.0}


def analytic(x1, x2):
    """z ~ N(1, 5), x_i ~ N(z, 2): the posterior mean and sd."""
    prec = 1 / 5 + 2 / 2
    return (1 / 5 + (x1 + x2) / 2) / prec, math.sqrt(1 / prec)


def spoiled(informed=True):
    """The seed model with a network confidently wrong: every component of z's
    proposal 3 sds (of its base) off and 20 times narrower -- as a trained network can
    be on data unlike its training simulations."""
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    if not informed:
        m.configure(informed=False)
    m.guide.fit_statistics()
    head = m.guide.net.families["z"].head
    with torch.no_grad():
        head.out.weight.zero_()
        b = head.out.bias.view(head.k, head.per)
        b[:, 1] = 4.0                                   # loc: 5 tanh(4 / 5) = 3.3 sds
        b[:, 2] = math.log(math.expm1(0.05))            # scale: 0.05
    return m


def test_the_weights_are_exact_under_the_four_part_mixture():
    """log w = log p(z, x) - log(sum_c share_c q_c(z)), each q_c the guide's density
    in that component, at fixed shares."""
    m = spoiled()
    post = m.infer(OBS, num_samples=400, seed=0, program=0.3, defensive=0.2)
    # the defensive 0.2 is split like the rest: the broadened network and program
    assert post.mixture == pytest.approx({"network": 0.56, "program": 0.24, "broad": 0.14,
                                          "broad program": 0.06})
    z = post.values("z")[:6].float()
    lp = torch.stack([m.log_joint({"z": float(v), **OBS}) for v in z]).double()
    o = Observations.of(m.checked, OBS, batch=6)
    parts = []
    for c, share in post.mixture.items():
        with component(m.guide.net, c):
            parts.append(m.guide.log_q(o, {"z": z}, 6).detach().double() + math.log(share))
    expected = lp - torch.logsumexp(torch.stack(parts), 0)
    assert torch.allclose(post.log_weights[:6], expected, atol=2e-3)


def test_the_program_proposal_is_the_exact_conditional_whatever_the_network():
    """The seed model's z is informed exactly (Gaussian observations affine in it): the
    program's own proposal is the analytic posterior however wrong the network is."""
    m = spoiled()
    mean, sd = analytic(**OBS)
    post = m.infer(OBS, num_samples=2000, seed=1, program=1.0, defensive=0.0)
    assert post.ess > 0.97 * post.num_samples
    assert abs(float(post.mean("z")) - mean) < 4 * sd / math.sqrt(post.ess)
    assert abs(float(post.std("z")) - sd) < 0.05 * sd


def test_the_pilot_moves_the_draws_off_a_network_that_extrapolates():
    m = spoiled()
    mean, sd = analytic(**OBS)
    alone = m.infer(OBS, num_samples=2000, seed=2, program=0.0)
    auto = m.infer(OBS, num_samples=2000, seed=2)
    assert alone.ess < 0.3 * alone.num_samples          # the spoiled network, defensively
    assert auto.mixture["program"] >= 0.6
    assert auto.ess > 0.6 * auto.num_samples
    assert abs(float(auto.mean("z")) - mean) < 4 * sd / math.sqrt(auto.ess)
    assert "program" in auto.summary().splitlines()[0]


def test_the_pilot_keeps_a_network_that_learned_the_posterior():
    """Uninformed, the program's own proposal is the prior (ESS/N about 0.1 at these
    observations); a trained network is far better, and the pilot keeps it."""
    m = csis_dsl.compile(SPECS / "gaussian.ppl").configure(informed=False)
    m.train(num_steps=400, batch_size=128, seed=0, progress=False)
    prior = m.infer(OBS, num_samples=2000, seed=3, program=1.0, defensive=0.0)
    net = m.infer(OBS, num_samples=2000, seed=3, program=0.0)
    auto = m.infer(OBS, num_samples=2000, seed=3)
    assert prior.ess < 0.3 * prior.num_samples < net.ess
    assert auto.mixture.get("program", 0.0) <= 0.2
    assert auto.ess > 0.8 * net.ess


def test_the_share_comes_from_a_second_moment_that_is_minimal_where_expected():
    """choose_program_share: 1 where the network never proposes near the posterior and
    the program's proposal is exact."""
    m = spoiled()
    o = Observations.of(m.checked, OBS)
    with torch.no_grad():
        share = choose_program_share(m, m.guide, o, 0.0)
    assert share >= 0.8


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", float("nan")])
def test_a_bad_share_is_refused(bad):
    with pytest.raises(csis_dsl.OptionError, match="program"):
        csis_dsl.compile(SPECS / "gaussian.ppl").infer(OBS, program=bad)


def test_no_draw_comes_from_a_network_the_pilot_drops():
    """With the program's share at 1 the defensive part is the program's proposal
    broadened, not the network's: a network that extrapolates wildly (here it puts every
    draw of z 3 sds off, 20 times too narrow) contributes nothing, not even broadened.
    Before, its broadened self kept the defensive 10%; on a hierarchical model's real
    data (surgical, bench/real) such draws landed in the funnel's neck with enormous
    weights: ESS/N 0.004 against 0.65."""
    m = spoiled()
    post = m.infer(OBS, num_samples=2000, seed=0, program=1.0)
    assert post.mixture == pytest.approx({"program": 0.9, "broad program": 0.1})
    z = post.values("z").double()
    mean, sd = analytic(**OBS)
    assert float(((z - mean).abs() > 3 * sd).double().mean()) < 0.02
    o = Observations.of(m.checked, OBS, batch=8)
    parts = []
    for c, share in post.mixture.items():
        with component(m.guide.net, c):
            parts.append(m.guide.log_q(o, {"z": z[:8].float()}, 8).double() + math.log(share))
    lp = torch.stack([m.log_joint({"z": float(v), **OBS}) for v in z[:8]]).double()
    assert torch.allclose(post.log_weights[:8], lp - torch.logsumexp(torch.stack(parts), 0),
                          atol=2e-3)
