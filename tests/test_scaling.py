"""Training that scales (issue 13): the fast path against the Pyro path, devices,
data-parallel training on torch.distributed, offline datasets."""
import math
import os

import pyro
import pytest
import torch

import csis_dsl
from conftest import SPECS, assert_fast_path_equals_pyro_path, compile_spec


@pytest.mark.parametrize("name", sorted(p.stem for p in SPECS.glob("*.ppl")))
def test_fast_path_equals_the_pyro_path(name):
    """The training loss of the fast path (the interpreter and the network run directly)
    and of the Pyro path (the model traced, the guide traced replaying its latents, as
    pyro.infer.CSIS does) are the same number with the same gradient, on the same batch."""
    m = compile_spec(name)
    m.guide.fit_statistics(500)
    assert assert_fast_path_equals_pyro_path(m, 6) > 0


def test_literal_parameters_are_folded_once_and_give_the_same_densities():
    """A parameter made of literals alone is evaluated and checked once (the plan's
    folding), per dtype; the log densities are the hand-computed ones at every run, in
    float32 and float64, and a literal that breaks its parameter's rule is reported at
    every run, never kept."""
    from csis_dsl.errors import ModelRuntimeError
    m = csis_dsl.compile_string("""model f { b ~ Normal(0.5 * 2.0, sqrt(4.0));
        observe c ~ Categorical([0.25, 0.5, 0.25]);
        observe y ~ Normal(b, exp(1.0 - 1.0) * 2.0); }""")
    b = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    lat = torch.distributions.Normal(1.0, 2.0).log_prob(b)
    obs = math.log(0.5) + torch.distributions.Normal(b, 2.0).log_prob(torch.tensor(0.3))
    for dtype in (torch.float32, torch.float32, torch.float64, torch.float64):
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            got = m.pyro_model.score(2, observations={"c": 1, "y": 0.3},
                                     values={"b": b.to(dtype)})
        finally:
            torch.set_default_dtype(old)
        assert got[0].dtype == got[1].dtype == dtype
        assert torch.allclose(got[0].double(), lat, atol=1e-5)
        assert torch.allclose(got[1].double(), obs, atol=1e-5)
    kept = {(k[1], k[3]) for k in m.plan.folding._values}
    assert {("positive", torch.float32), ("positive", torch.float64), ("probs", torch.float32),
            ("real", torch.float64)} <= kept
    bad = csis_dsl.compile_string("model g { b ~ Normal(0.0, 1.0); "
                                  "observe y ~ Normal(b, log(0.0)); }")
    for _ in range(2):
        with pytest.raises(ModelRuntimeError, match="scale of Normal must be positive"):
            bad.simulate(3, seed=0)
    kept = [v for k, v in bad.plan.folding._values.items() if k[1] == "positive"]
    assert kept and all(bool(torch.isfinite(v).all() and (v > 0).all()) for v in kept)


# ---------------------------------------------------------------- torch.distributed

def _one_ddp_step(folder, flat):
    """Each of 2 gloo ranks: the same start, its half of one batch, one update -- with
    the network's parameters in one flat tensor (one all-reduce, overlapped with
    ``meanwhile``) or not (DistributedDataParallel)."""
    from csis_dsl.backend.observations import Observations
    from csis_dsl.engine import distributed
    from csis_dsl.engine.flat import FlatParameters
    from csis_dsl.engine.train import Trainer
    group = distributed.from_environment()
    distributed.join(group, torch.device("cpu"))
    m, latents, obs, B = _start(folder)
    if group.rank == 1:           # rank 0's weights are the ones every rank starts from
        with torch.no_grad():
            for p in m.guide.parameters():
                p.add_(1.0)
    if not flat:
        FlatParameters.possible = staticmethod(lambda params: False)
    r = slice(group.rank * B // 2, (group.rank + 1) * B // 2)
    tr = Trainer(m, 1e-2, 0, None, group)
    assert (tr.flat is not None) == flat
    done = []
    loss = tr.step({k: v[r] for k, v in latents.items()},
                   Observations({k: v[r] for k, v in obs.items()}), B // 2, 10.0, None,
                   meanwhile=lambda: done.append(True))
    assert done == [True]
    if group.lead:
        torch.save(dict(_after(m), loss=loss), folder / "ddp.pt")


def _start(folder):
    m = compile_spec("mixture")
    m.guide.load_state_dict(torch.load(folder / "start.pt"))
    batch = torch.load(folder / "batch.pt")
    return m, batch["latents"], batch["obs"], batch["B"]


def _after(m):
    return {"grads": [p.grad.clone() if p.grad is not None else None
                      for p in m.guide.parameters()],
            "state": {k: v.clone() for k, v in m.guide.state_dict().items()}}


def test_flat_parameters_update_as_the_tensors_would(monkeypatch):
    """engine/flat.py: the network's parameters as views of one tensor, zeroed, clipped
    and updated by Adam in one operation each. Three steps on the same batches give
    the parameters of the per-tensor path -- also after a zero_grad(set_to_none=True)
    and a load_state_dict, and after every parameter got a new tensor (as a move to a
    device does), which the next step links again."""
    from csis_dsl.engine import train as T
    from csis_dsl.engine.flat import FlatParameters
    models = []
    for flat in (True, False):
        pyro.set_rng_seed(0)
        m = csis_dsl.compile(SPECS / "gaussian.ppl")
        m.guide.fit_statistics()
        with monkeypatch.context() as mp:
            if not flat:
                mp.setattr(FlatParameters, "possible", staticmethod(lambda params: False))
            trainer = T.Trainer(m, 1e-2, 0, None)
        assert (trainer.flat is not None) == flat
        models.append((m, trainer))
    pyro.set_rng_seed(1)
    batches = [T.joint_batch(models[0][0], 64) for _ in range(3)]
    for k, (latents, obs) in enumerate(batches):
        losses = [tr.step(latents, obs, 64, clip=0.5, good=(0, None)) for _, tr in models]
        assert losses[0] == pytest.approx(losses[1], rel=1e-6)
        a, b = (dict(m.guide.named_parameters()) for m, _ in models)
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-6), (k, name)
        if k == 0:
            models[0][0].guide.zero_grad(set_to_none=True)
            state = {n: v.clone() for n, v in models[0][0].guide.state_dict().items()}
            models[0][0].guide.load_state_dict(state)
        if k == 1:              # new tensors for every parameter, as a move to a device
            for m, _ in models:
                m.guide.double().float()
    flat = models[0][1].flat
    storage = flat.param.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in flat.params)


@pytest.mark.parametrize("flat", [True, False], ids=["one-all-reduce", "ddp"])
def test_two_gloo_processes_make_the_update_of_one_on_the_whole_batch(tmp_path, flat):
    from csis_dsl.backend.observations import Observations
    from csis_dsl.engine.distributed import spawn
    from csis_dsl.engine.train import Trainer, joint_batch
    m = compile_spec("mixture")
    pyro.set_rng_seed(0)
    m.guide.fit_statistics(500)
    B = 32
    latents, obs = joint_batch(m, B)
    torch.save(m.guide.state_dict(), tmp_path / "start.pt")
    torch.save({"latents": latents, "obs": dict(obs), "B": B}, tmp_path / "batch.pt")
    spawn(2, _one_ddp_step, tmp_path, flat, threads=1)
    ddp = torch.load(tmp_path / "ddp.pt")

    m, latents, obs, B = _start(tmp_path)
    loss = Trainer(m, 1e-2, 0, None).step(latents, Observations(obs), B, 10.0, None)
    assert ddp["loss"] == pytest.approx(loss, rel=1e-5)    # the mean of the two halves'
    one = _after(m)
    assert sum(g is not None for g in one["grads"]) > 10
    for a, b in zip(one["grads"], ddp["grads"]):
        if a is None:
            assert b is None or not b.any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Adam's first step is about lr x sign(gradient) (1e-2 here), and within 1e-4 of it
    # however tiny a gradient is; only where a gradient is near Adam's eps (1e-8) does
    # a rounding difference of the summed halves show, well below that
    moved = 0
    for k, v in one["state"].items():
        torch.testing.assert_close(v, ddp["state"][k], rtol=1e-4, atol=1e-4)
        moved += not torch.equal(v, torch.load(tmp_path / "start.pt")[k])
    assert moved > 10                     # the update did change the weights


def _fails_on_rank_1(_):
    import torch.distributed as dist
    from csis_dsl.engine import distributed
    group = distributed.from_environment()
    distributed.join(group, torch.device("cpu"))
    if group.rank == 1:
        raise ValueError("worker one gives up")
    dist.barrier()               # rank 0 would wait here for ever


def test_a_failed_worker_stops_the_run_with_its_error():
    from csis_dsl.engine.distributed import spawn
    from csis_dsl.errors import TrainingError
    with pytest.raises(TrainingError, match="worker 1 of 2 failed.*worker one gives up"):
        spawn(2, _fails_on_rank_1, None, threads=1)


def _trains_then_one_rank_lingers(folder):
    import time

    import torch.distributed as dist
    destroy = dist.destroy_process_group
    rank = int(os.environ["RANK"])

    def noted(*args, **kw):
        destroy(*args, **kw)
        (folder / f"left{rank}").write_text(repr(time.time()))
    dist.destroy_process_group = noted
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    m.train(num_steps=5, batch_size=64, seed=0, progress=False, validation_size=0)
    # the model (a user's script keeps it) holds no DistributedDataParallel wrapper
    assert m._trainer.loss_module is m._trainer.loss
    if rank == 1:
        time.sleep(1.0)
        (folder / "done1").write_text(repr(time.time()))


def test_ranks_that_finish_leave_the_group_together(tmp_path):
    """A rank that closed its connections while another still held its own (or a
    DistributedDataParallel wrapper outlived the group) was aborted by gloo at exit,
    intermittently ('terminate called without an active exception', exit code -6):
    now the first to finish waits for the last, and no wrapper outlives a run."""
    from csis_dsl.engine.distributed import spawn
    spawn(2, _trains_then_one_rank_lingers, tmp_path, threads=1)
    done = float((tmp_path / "done1").read_text())
    assert float((tmp_path / "left0").read_text()) >= done
    assert float((tmp_path / "left1").read_text()) >= done


# ---------------------------------------------------------------- offline datasets

def test_dataset_round_trip_and_shards_per_rank(tmp_path):
    from csis_dsl.engine.dataset import Dataset
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    m.simulate_to(tmp_path / "d", 1000, shard_size=300, seed=0)
    data = Dataset(tmp_path / "d", m)
    assert [s["n"] for s in data.shards] == [300, 300, 300, 100] and data.n == 1000
    from csis_dsl.engine.seeding import seeded
    with seeded(0):                      # the same traces, shard by shard
        parts = [m.pyro_model.simulate(n) for n in (300, 300, 300, 100)]
    again = {k: torch.cat([p[k] for p in parts]) for k in ("z", "x1", "x2")}
    whole = {k: torch.cat([data.load(s)[k] for s in data.shards]) for k in ("z", "x1", "x2")}
    for k in whole:
        torch.testing.assert_close(whole[k], again[k])
    # one epoch on one rank: every trace once, in a shuffled order
    seen = torch.cat([lat["z"] for lat, _ in data.batches(100, 1)])
    assert seen.shape == (1000,) and not torch.equal(seen, whole["z"])
    torch.testing.assert_close(seen.sort().values, whole["z"].sort().values)
    # two ranks: disjoint shards, the same number of steps each (the smaller share)
    z = [torch.cat([lat["z"] for lat, _ in data.batches(100, 2, rank, 2)]) for rank in (0, 1)]
    assert data.steps_per_epoch(100, 2) == 4 and len(z[0]) == len(z[1]) == 800
    assert not set(z[0].tolist()) & set(z[1].tolist())
    # the observations come with their own latents
    for lat, obs in data.batches(50, 1):
        i = torch.searchsorted(whole["z"].sort().values, lat["z"])
        order = whole["z"].argsort()
        torch.testing.assert_close(obs["x1"], whole["x1"][order][i])
        break


def test_dataset_errors_name_the_problem(tmp_path):
    from csis_dsl.engine.dataset import Dataset
    from csis_dsl.errors import DatasetError
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    d = m.simulate_to(tmp_path / "d", 200, shard_size=100, seed=0)
    other = csis_dsl.compile(SPECS / "gaussian.ppl", args={"prior_mean": 3.0})
    with pytest.raises(DatasetError, match="another spec or other args"):
        other.train(dataset=d, batch_size=50, progress=False)
    with pytest.raises(DatasetError, match="smaller than one batch"):
        m.train(dataset=d, batch_size=500, progress=False)
    with pytest.raises(csis_dsl.errors.OptionError, match="not both"):
        m.train(num_steps=5, dataset=d)
    shard = d / "shard-000001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="shard-000001.*checksum"):
        m.train(dataset=d, batch_size=50, progress=False, validation_size=0)
    (d / "index.json").write_text("{")
    with pytest.raises(DatasetError, match="index.json is unreadable"):
        Dataset(d, m)
    with pytest.raises(DatasetError, match="no such folder"):
        Dataset(tmp_path / "nowhere", m)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="holds other files"):
        m.simulate_to(tmp_path / "mine", 10)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _seed_ess(m):
    return sum(m.infer({"x1": 8, "x2": 9}, num_samples=50, seed=s).ess for s in range(10)) / 10


def test_offline_training_reaches_the_quality_of_online_training(tmp_path):
    """The seed model, the same number of traces (300 steps of 128) online and from a
    dataset: both reach the seed target (mean ESS 45 of 50 at x = (8, 9)) and agree
    with the analytic posterior N(7.25, 5/6)."""
    online = csis_dsl.compile(SPECS / "gaussian.ppl")
    online.train(num_steps=300, batch_size=128, seed=0, progress=False, validation_size=0)
    offline = csis_dsl.compile(SPECS / "gaussian.ppl")
    offline.simulate_to(tmp_path / "d", 300 * 128, shard_size=10_000, seed=1)
    h = offline.train(dataset=tmp_path / "d", epochs=1, batch_size=128, seed=0,
                      progress=False, validation_size=0)
    assert len(h.steps) == 300 and h.traces == 300 * 128
    for m in (online, offline):
        assert _seed_ess(m) >= 45
        p = m.infer({"x1": 8, "x2": 9}, num_samples=20000, seed=3)
        assert abs(float(p.mean("z")) - 7.25) < 0.05
        assert abs(float(p.std("z")) - math.sqrt(5 / 6)) < 0.05


def test_cli_simulate_then_train_in_two_processes(tmp_path):
    from csis_dsl.cli import main
    d, ck = tmp_path / "sims", tmp_path / "g.pt"
    assert main(["simulate", str(SPECS / "gaussian.ppl"), "-n", "20000", "--shard-size",
                 "5000", "-o", str(d), "--no-progress"]) == 0
    assert main(["train", str(SPECS / "gaussian.ppl"), "--dataset", str(d), "--epochs",
                 "2", "--batch-size", "100", "--nproc", "2", "-o", str(ck),
                 "--no-progress"]) == 0
    m = csis_dsl.load(ck)
    # 2 ranks x 100 steps (each rank's 10000 traces) x 2 epochs
    assert m.history.traces == 2 * 100 * 100 * 2 and len(m.history.steps) == 200
    p = m.infer({"x1": 8, "x2": 9}, num_samples=5000, seed=0)
    assert p.ess > 2500 and abs(float(p.mean("z")) - 7.25) < 0.15
    # a spec error is shown once, before any process starts
    bad = tmp_path / "bad.ppl"
    bad.write_text("model m { z ~ Nrmal(0, 1); observe x ~ Normal(z, 1); }")
    assert main(["train", str(bad), "--nproc", "2", "-o", str(ck), "--no-progress"]) == 1


# ---------------------------------------------------------------- devices

def test_device_option_on_the_cpu_and_its_errors(tmp_path):
    from csis_dsl.errors import OptionError
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    assert m.device == torch.device("cpu")
    m.train(num_steps=20, batch_size=32, seed=0, progress=False, device="cpu")
    assert all(p.device.type == "cpu" for p in m.guide.parameters())
    for bad, why in (("banana", "not a device name"), ("meta", "'cpu' or 'cuda'")):
        with pytest.raises(OptionError, match=why):
            m.to(bad)
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="no CUDA GPU"):
            m.infer({"x1": 8, "x2": 9}, device="cuda")
    m.save(tmp_path / "g.pt")
    assert csis_dsl.load(tmp_path / "g.pt", device="cpu").device == torch.device("cpu")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_training_inference_and_checkpoints(tmp_path):
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    m.train(num_steps=300, batch_size=128, seed=0, progress=False, device="cuda")
    assert all(p.device.type == "cuda" for p in m.guide.parameters())
    assert m.simulate(4, seed=0)["z"].device.type == "cuda"
    p = m.infer({"x1": 8, "x2": 9}, num_samples=20000, seed=0)
    assert p.values("z").device.type == "cpu"          # a Posterior is for analysis
    assert abs(float(p.mean("z")) - 7.25) < 0.05 and p.ess > 10000
    m.save(tmp_path / "g.pt")
    back = csis_dsl.load(tmp_path / "g.pt")              # onto the CPU
    q = back.infer({"x1": 8, "x2": 9}, num_samples=20000, seed=0)
    assert abs(float(q.mean("z")) - float(p.mean("z"))) < 0.03
    m.to("cpu").train(num_steps=5, batch_size=16, progress=False)   # continues on the CPU


@cuda
@pytest.mark.parametrize("name", ["mixture", "random_walk", "pima", "faithful_mixture"])
def test_cuda_runs_every_stage_of_real_models(name):
    m = compile_spec(name).to("cuda")
    m.train(num_steps=5, batch_size=64, seed=0, progress=False, validation_size=32)
    sims = m.simulate(1, seed=0)
    post = m.infer({k: sims[k][0] for k in m.observed}, num_samples=256, seed=0,
                   refine_steps=3)
    assert math.isfinite(post.log_evidence)
    m.calibrate(num_datasets=5, num_samples=64, seed=0, num_ranks=10)
