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
    # beyond 3 sd: 0.9 P(|N(0, 1)| > 3) + 0.1 P(|t_6| > 1.5) = 0.0024 + 0.0184 from the
    # program's mixture (its broad part a Student-t of 6 degrees of freedom, twice as
    # wide); the network's broadened self would add about 0.1 more
    assert float(((z - mean).abs() > 3 * sd).double().mean()) < 0.04
    o = Observations.of(m.checked, OBS, batch=8)
    parts = []
    for c, share in post.mixture.items():
        with component(m.guide.net, c):
            parts.append(m.guide.log_q(o, {"z": z[:8].float()}, 8).double() + math.log(share))
    lp = torch.stack([m.log_joint({"z": float(v), **OBS}) for v in z[:8]]).double()
    assert torch.allclose(post.log_weights[:8], lp - torch.logsumexp(torch.stack(parts), 0),
                          atol=2e-3)


def sometimes_impossible(m, every=10):
    """``m``'s network, but every ``every``-th of its draws of z is 1e30, where the
    model's density is zero -- a network that extrapolates (degenerate components far
    out, as the trained network of surgical mortality has on its real data)."""
    propose, net = m.guide.propose, m.guide.net

    def absurd(obs, B, *args, **kw):
        values, log_q = propose(obs, B, *args, **kw)
        if not net.__dict__.get("_bare", False) and net.defensive == 0.0:   # the network
            z = values["z"].clone()
            z[::every] = 1e30
            values = dict(values, z=z)
        return values, log_q

    m.guide.propose = absurd
    return m


def test_the_pilot_gives_the_share_to_the_program_where_the_network_extrapolates():
    """Untrained, the network proposes about as the program does, and the second
    moment hardly depends on the share: the pilot keeps the network (the smallest share
    within 5% of the least), which costs nothing. Where 10% of the network's draws are
    impossible, the network is extrapolating, and it takes the largest: the program's."""
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    m.guide.fit_statistics()
    o = Observations.of(m.checked, OBS)
    with torch.no_grad():
        assert choose_program_share(m, m.guide, o, 0.1) <= 0.1
    sometimes_impossible(m)
    with torch.no_grad():
        assert choose_program_share(m, m.guide, o, 0.1) >= 0.9


def test_a_component_without_a_density_at_another_components_draw_has_none_there():
    """A network whose density is NaN at some draws (a degenerate component far out)
    gives those draws no density of its own; the draws of the program keep the density
    the program gives them, instead of a NaN weight (weightless, the estimate biased by
    what they miss). The network's own NaN draws stay weightless."""
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    m.guide.fit_statistics()
    log_q = m.guide.log_q
    net = m.guide.net

    def nan_where_far(obs, values, B, *args, **kw):
        lq = log_q(obs, values, B, *args, **kw)
        if not net.__dict__.get("_bare", False) and net.defensive == 0.0:   # the network
            lq = torch.where(values["z"] > 8.0, torch.full_like(lq, math.nan), lq)
        return lq

    m.guide.log_q = nan_where_far
    post = m.infer(OBS, num_samples=4000, seed=0, program=0.5, defensive=0.0)
    z = post.values("z").double()
    lw = post.log_weights
    far = z > 8.0
    assert 0.1 < float(far.double().mean()) < 0.6
    assert bool(torch.isfinite(lw[~far]).all())
    # the far draws: the network's (about half) weightless, the program's weighted by
    # p over the program's share of the density alone
    kept = far & torch.isfinite(lw)
    assert 0.35 < int(kept.sum()) / int(far.sum()) < 0.65
    lp = torch.stack([m.log_joint({"z": float(v), **OBS}) for v in z[kept][:5]]).double()
    o = Observations.of(m.checked, OBS, batch=5)
    with component(net, "program"):
        lq = log_q(o, {"z": z[kept][:5].float()}, 5).double()
    assert torch.allclose(lw[kept][:5], lp - lq - math.log(0.5), atol=2e-3)


PLATE = """
model effects {
    arg int N;
    for i in range(N) {
        z[i] ~ Normal(0.0, 1.0);
        observe x[i] ~ Normal(z[i], 1.0);
    }
}
"""


@pytest.mark.parametrize("N", [1, 64])
def test_a_broadened_trace_stays_near_the_proposal_whatever_the_plate(N):
    """The broad part of the program's proposal, against the proposal itself (here the
    exact conditional N(x / 2, 1 / 2) of every z[i]): the average log-density gap over
    the proposal's draws -- KL(q || q_broad) -- is at most that of one instance (0.4)
    whether the plate has 1 or 64 instances; every instance broadened as much as a
    single site would put it at 0.32 N + 0.1 (20 nats at 64), where the broad trace has
    no density left to bound a weight with. One instance's broad part is a Student-t:
    far out (6 proposal sds) its density is far above the proposal's."""
    m = csis_dsl.compile_string(PLATE, args={"N": N})
    m.guide.fit_statistics()
    x = torch.linspace(-2.0, 2.0, N)
    o = Observations.of(m.checked, {"x": x}, batch=4000)
    net = m.guide.net
    with torch.no_grad(), component(net, "program"):
        values, lq = m.guide.propose(o, 4000)
    sd = math.sqrt(0.5)
    z = values["z"].double()
    assert abs(float(z.mean(0).sub(x / 2).abs().max())) < 0.1      # the exact conditional
    with torch.no_grad(), component(net, "broad program"):
        lb = m.guide.log_q(o, values, 4000)
    kl = float((lq - lb).double().mean())
    assert kl < 0.8
    if N == 1:
        far = {"z": (x / 2 + 6 * sd).reshape(1, 1).expand(4000, 1)}
        with torch.no_grad(), component(net, "program"):
            q_far = m.guide.log_q(o, far, 4000)[0]
        with torch.no_grad(), component(net, "broad program"):
            b_far = m.guide.log_q(o, far, 4000)[0]
        assert float(b_far - q_far) > 10.0
