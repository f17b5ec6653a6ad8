"""Each stage on its own, fed the typed result of the stage before (no CompiledModel):
parse -> Program, check -> Checked, plan -> Plan, the interpreter with a handler of the
test's own, a proposal family from its LatentInfo, the guide from a PyroModel, and the
checkpoint file."""
import math

import pytest
import torch
import torch.distributions as D

import csis_dsl
from conftest import SPECS
from csis_dsl.backend.handlers import SiteHandler
from csis_dsl.backend.interpreter import Runtime
from csis_dsl.backend.observations import Observations
from csis_dsl.backend.pyro_model import PyroModel
from csis_dsl.catalogue.distributions import DISTRIBUTIONS
from csis_dsl.engine import checkpoint
from csis_dsl.errors import CheckpointError, CompileError, ModelRuntimeError
from csis_dsl.frontend import ast as A
from csis_dsl.frontend.parser import parse
from csis_dsl.frontend.statements import check
from csis_dsl.middle.graph import build_graph
from csis_dsl.middle.plan import make_plan
from csis_dsl.proposals.families import FAMILIES, LatentInfo, make_family
from csis_dsl.proposals.guide import Guide
from csis_dsl.proposals.network import NetworkConfig

WALK = """model w {
    arg int T = 4;
    drift ~ Normal(0.0, 0.5);
    h[0] ~ Normal(0.0, 1.0);
    for t in range(1, T) { h[t] ~ Normal(h[t - 1] + drift, 0.3); }
    for t in range(T) { observe y[t] ~ Normal(h[t], 0.5); }
}"""


def stages(src, args=None):
    checked = check(parse(src, "s.ppl"), args)
    return checked, make_plan(checked)


def test_parse_gives_spans_on_every_node():
    prog = parse("model m {\n  z ~ Normal(0.0, 1.0);\n}", "p.ppl")
    assert isinstance(prog, A.Program) and prog.name == "m"
    s = prog.body[0]
    assert isinstance(s, A.Sample) and not s.observed
    assert (s.span.line, s.span.col) == (2, 3) and s.span.file == "p.ppl"
    call = s.dist.call
    assert call.func == "Normal" and (call.func_span.col, call.func_span.end_col) == (7, 13)
    assert all(a.span.line == 2 for a in call.args)


def test_check_builds_the_variable_table_from_a_program():
    checked = check(parse(WALK, "w.ppl"))
    h = checked.vars["h"]
    assert h.kind == "latent" and h.type.shape == (4,) and h.recursive and h.pieces == 2
    assert h.reads == {"drift"} and h.is_family
    assert checked.names("observed") == ["y"]
    # every expression has a static type
    y = checked.vars["y"].stmts[0]
    assert str(checked.types[y.dist.call.args[0]]) == "real"


def test_a_failed_definition_does_not_cascade():
    """A definition that fails to check still defines its name: later uses get no false
    'unknown name' or 'used before it is defined'."""
    src = "model m {\n  a ~ Normall(0.0, 1.0);\n  b = a + 1.0;\n  observe y ~ Normal(b, 1.0);\n}"
    with pytest.raises(CompileError) as ei:
        check(parse(src, "m.ppl"))
    assert len(ei.value.diagnostics) == 1
    assert "unknown distribution 'Normall'" in ei.value.diagnostics[0].message


def test_plan_places_statements_and_families():
    checked, plan = stages(WALK)
    assert plan.latents == ["drift", "h"] and plan.observed == ["y"] and plan.depth == 1
    pieces = plan.pieces["h"]
    assert [p.index for p in pieces] == [0, None]
    assert pieces[1].elements == (1, 4) and pieces[0].covers(0) and not pieces[0].covers(1)
    y_stmt = checked.vars["y"].stmts[0]
    assert [l.var for l in plan.loops_of(y_stmt)] == ["t"]
    assert sorted(plan.plate_names.values()) == ["_t_5", "_t_6"]


def test_plan_hoists_a_variable_defined_in_both_branches():
    src = ("model o { mu ~ Normal(0.0, 10.0); b ~ Bernoulli(0.1);"
           " if (b) { observe y ~ StudentT(3.0, mu, 10.0); } else { observe y ~ Normal(mu, 1.0); } }")
    checked, plan = stages(src)
    (if_stmt, sites), = plan.switches.items()
    assert list(sites) == ["y"] and [k for k, _ in sites["y"]] == [0, 1]
    guards = plan.placement[sites["y"][1][1]].guards
    assert guards[0].stmt is if_stmt and guards[0].branch == 1


class Fixed(SiteHandler):
    """A handler of the test's own: every latent takes a given value; records sites."""

    def __init__(self, values, observations):
        super().__init__(observations)
        self.values, self.seen, self.log_p = values, [], 0.0

    def latent(self, site):
        x = self.values[site.name].reshape(site.value_shape(1))
        self.seen.append(site.name)
        self.log_p = self.log_p + site.fn.log_prob(x).sum()
        return x

    def observed(self, site):
        x = super().observed(site)
        lp = site.fn.log_prob(x)
        if site.mask is not None:
            lp = torch.where(site.mask.reshape(lp.shape), lp, torch.zeros_like(lp))
        self.log_p = self.log_p + lp.sum()
        return x


def test_interpreter_runs_with_any_handler():
    checked, plan = stages(WALK)
    h = torch.tensor([0.3, -0.1, 0.4, 0.2])
    y = torch.tensor([0.0, 0.1, 0.2, 0.3])
    obs = Observations.of(checked, {"y": y})
    handler = Fixed({"drift": torch.tensor(0.1), "h": h}, obs)
    env = Runtime(checked, plan, 1, handler, dict(checked.args)).run()
    assert handler.seen == ["drift", "h"]
    assert torch.equal(env["h"].t[0], h)
    want = D.Normal(0.0, 0.5).log_prob(torch.tensor(0.1)) + D.Normal(0.0, 1.0).log_prob(h[0]) \
        + D.Normal(h[:-1] + 0.1, 0.3).log_prob(h[1:]).sum() + D.Normal(h, 0.5).log_prob(y).sum()
    assert float(handler.log_p) == pytest.approx(float(want), abs=1e-4)


def test_runtime_errors_carry_the_span_and_show_the_line():
    checked, plan = stages("model r {\n  a ~ Normal(0.0, 1.0);\n  b ~ Normal(0.0, a);\n}")
    with pytest.raises(ModelRuntimeError) as ei:
        Runtime(checked, plan, 200, SiteHandler(), dict(checked.args)).run()
    err = ei.value
    assert (err.span.line, err.span.col) == (3, 3)
    text = err.format()
    assert text.startswith("s.ppl:3:3: error: the scale of Normal must be positive")
    assert "b ~ Normal(0.0, a);" in text and "^" in text


def test_boolean_family_in_pieces_simulates_and_scores():
    """A Bernoulli family defined in pieces: booleans are scored as floats (this crashed
    with 'result type Float can't be cast to the desired output type Long')."""
    src = ("model m { z[0] ~ Bernoulli(0.5); for t in range(1, 3) { z[t] ~ Bernoulli(0.3); }"
           " observe x ~ Normal(sum(z), 1.0); }")
    checked, plan = stages(src)
    model = PyroModel(checked, plan)
    sims = model.simulate(40000)
    assert torch.allclose(sims["z"].double().mean(0),
                          torch.tensor([0.5, 0.3, 0.3], dtype=torch.float64), atol=0.02)
    import pyro.poutine as poutine
    z = torch.tensor([1.0, 0.0, 1.0])
    tr = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(
        observations={"x": 1.0})
    want = math.log(0.5) + math.log(0.7) + math.log(0.3) + \
        float(D.Normal(2.0, 1.0).log_prob(torch.tensor(1.0)))
    assert float(tr.log_prob_sum()) == pytest.approx(want, abs=1e-5)


def test_family_defined_in_branches_on_the_loop_index():
    """h[0] in one branch, h[t] reading h[t - 1] in the other: produced in element order
    (this raised "'h' has no value here")."""
    src = ("model m { for t in range(4) { if (t < 1) { h[t] ~ Normal(0.0, 1.0); } else "
           "{ h[t] ~ Normal(h[t - 1], 1.0); } } observe y ~ Normal(h[3], 1.0); }")
    checked, plan = stages(src)
    sims = PyroModel(checked, plan).simulate(40000)
    # a Gaussian random walk: Var(h[t]) = t + 1, Cov(h[0], h[3]) = 1
    v = sims["h"].var(0)
    assert torch.allclose(v, torch.tensor([1.0, 2.0, 3.0, 4.0]), rtol=0.05)
    c = ((sims["h"][:, 0] - sims["h"][:, 0].mean()) * (sims["h"][:, 3] - sims["h"][:, 3].mean())).mean()
    assert abs(float(c) - 1.0) < 0.08


@pytest.mark.parametrize("dist,expected", [("Normal(0.0, 1.0)", "continuous"),
                                           ("Categorical([0.2, 0.8])", "finite"),
                                           ("Poisson(3.0)", "count")])
def test_each_catalogue_entry_names_a_family(dist, expected):
    name = dist.split("(")[0]
    assert DISTRIBUTIONS[name].proposal == expected and expected in FAMILIES


def test_a_family_at_its_start_proposes_its_prior():
    """A finite family's logits are the prior's log-probabilities plus a correction that
    starts at zero: before training, the proposal of c ~ Categorical(p) is p itself."""
    checked, plan = stages("model c { c ~ Categorical([0.2, 0.5, 0.3]); "
                           "observe y ~ Normal(c, 1.0); }")
    config = NetworkConfig().sized(1)
    fam = make_family(LatentInfo(1, checked.vars["c"]), config)
    torch.nn.init.zeros_(fam.out.weight)
    prior = D.Categorical(probs=torch.tensor([[0.2, 0.5, 0.3]]))
    facts = fam.facts(prior, 1, 1)
    q = fam(torch.zeros(1, config.hidden), tuple(f[:, 0] for f in facts))
    lq = torch.stack([q.log_prob(torch.tensor([[float(k)]])) for k in range(3)]).reshape(-1)
    assert torch.allclose(lq.exp(), torch.tensor([0.2, 0.5, 0.3]), atol=1e-6)


def test_guide_from_the_backend_alone():
    """The guide is built from the Pyro model (checked program and plan) and the graph:
    it proposes every latent with the right shapes."""
    import pyro.poutine as poutine
    checked, plan = stages(WALK)
    model = PyroModel(checked, plan)
    guide = Guide(model, build_graph(checked), NetworkConfig(hidden=16))
    guide.fit_statistics(500)
    tr = poutine.trace(guide).get_trace(observations={"y": [0.0, 0.1, 0.2, 0.3]})
    assert tr.nodes["h"]["value"].shape == (4,) and tr.nodes["drift"]["value"].shape == ()
    assert math.isfinite(float(tr.log_prob_sum().detach()))


def test_checkpoint_file_round_trip_and_bad_fields(tmp_path):
    ck = checkpoint.Checkpoint(name="m", file="m.ppl", source="model m {}",
                               args={"N": torch.tensor(3)}, config={"hidden": 8},
                               state_dict={"w": torch.ones(2)}, history={})
    checkpoint.write(tmp_path / "a.pt", ck)
    back = checkpoint.read(tmp_path / "a.pt")
    assert back.source == "model m {}" and torch.equal(back.state_dict["w"], torch.ones(2))
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    del raw["state_dict"]
    torch.save(raw, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="missing 'state_dict'"):
        checkpoint.read(tmp_path / "b.pt")


def test_the_guide_proposes_a_small_scale_before_the_vector_it_shares_data_with():
    """plan.proposal_vars: the brief's regression is proposed sigma first; not when
    sigma's prior reads something defined after beta; between sites of one size only
    where the later one is the scale of observations Gaussian in the earlier (``s``
    below); the model's own order never changes."""
    def latents(src):
        checked, plan = stages(src, {"X": [[1.0, 0.5]] * 4})
        return [n for n in plan.proposal_vars if checked.vars[n].kind == "latent"]
    head = "model r {\n arg real[4, 2] X;\n"
    obs = " observe real[4] y ~ Normal(X @ beta, sigma);\n}"
    assert latents(head + " real[2] beta ~ Normal(0.0, 10.0);\n sigma ~ HalfNormal(1.0);\n"
                   + obs) == ["sigma", "beta"]
    assert latents(head + " real[2] beta ~ Normal(0.0, 10.0);\n tau ~ HalfNormal(1.0);\n"
                   " sigma ~ HalfNormal(tau);\n" + obs) == ["beta", "tau", "sigma"]
    assert latents(head + " real[2] beta ~ Normal(0.0, 10.0);\n real[2] s ~ HalfNormal(1.0);\n"
                   " sigma = s[0] + s[1];\n" + obs) == ["s", "beta"]
    assert latents(head + " real[2] beta ~ Normal(0.0, 10.0);\n real[2] b ~ Normal(0.0, 1.0);\n"
                   " observe real[4] y ~ Normal(X @ beta + X @ b, 1.0);\n}") == ["beta", "b"]
    checked, plan = stages(head + " real[2] beta ~ Normal(0.0, 10.0);\n sigma ~ HalfNormal(1.0);\n"
                           + obs, {"X": [[1.0, 0.5]] * 4})
    assert [n for n in checked.order if checked.vars[n].kind == "latent"] == ["beta", "sigma"]
    assert [A.target_name(s.target) for s in plan.proposal_body
            if isinstance(s, A.Sample)][:2] == ["sigma", "beta"]


def test_the_network_is_sized_to_the_model(tmp_path):
    """hidden and obs_embedding left to the model: 32 for at most 4 latent numbers, 64
    above; a width given is kept, and a checkpoint brings back the widths it was
    trained with."""
    small = csis_dsl.compile(SPECS / "gaussian.ppl")                 # 1 latent number
    assert (small.guide.config.hidden, small.guide.config.obs_embedding) == (32, 32)
    assert small.guide.net.core.hidden_size == 32
    big = csis_dsl.compile(SPECS / "mixture.ppl")                    # 36
    assert (big.guide.config.hidden, big.guide.config.obs_embedding) == (64, 64)
    assert small.configure(hidden=48).guide.net.core.hidden_size == 48
    small.configure()
    small.train(num_steps=2, batch_size=16, progress=False, validation_size=0)
    small.save(tmp_path / "g.pt")
    back = csis_dsl.load(tmp_path / "g.pt")
    assert back.guide.config.hidden == 32 and back.guide.net.core.hidden_size == 32
