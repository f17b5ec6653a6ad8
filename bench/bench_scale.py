"""Training that scales (issue 13): printed figures, never asserted.

Part 1, the fast path against the Pyro path on the seed model, one thread:
  * fast path: csis_dsl's training step (the interpreter and the network run directly);
  * Pyro path: the same network and loss through Pyro's effect handlers, as
    pyro.infer.CSIS computes it (the model traced for a batch of traces, the guide
    traced replaying its latents; still vectorised over the batch);
  * pyro.infer.CSIS itself with the generated guide (one trace at a time, as CSIS
    loops over its training batch).
  Printed: ms per step and traces/s at batch 1 (the per-step overhead), 512 and 4096.

Part 2, 1 against 2 processes (torch.distributed, gloo, one thread each), batch 512
per process: traces/s of the whole job.

Part 3, the seed target (mean ESS >= 45 of 50 at x = (8, 9), 10 inferences) side by
side in one run: csis_dsl's fast path, the Pyro path, and pyro.infer.CSIS with the
tutorial's hand-written guide (bench_engine's contender): training time to the target.

Part 4 (only when asked: `python bench/bench_scale.py 4`), the fast path on a CUDA GPU:
ms per step and traces/s of the seed model at batches up to 65536, and of three real
models at batch 512.

    python bench/bench_scale.py [1] [2] [3] [4]
"""
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch

import csis_dsl
from _budget import train_for  # noqa: F401  (pays torch's first-optimiser import now)
from bench_engine import OBS, TARGET, mean_ess, pyro_csis

warnings.simplefilter("ignore")
SPEC = Path(__file__).resolve().parents[1] / "specs" / "gaussian.ppl"


def fresh(seed=0):
    pyro.set_rng_seed(seed)
    m = csis_dsl.compile(SPEC)
    m.guide.fit_statistics()
    return m


def pyro_path_loss(m, B):
    """The CSIS loss through Pyro's handlers: trace the model, replay the guide on it."""
    tr = poutine.trace(m.pyro_model).get_trace(num_traces=B)
    env = tr.nodes["_RETURN"]["value"]
    obs = {n: env[n] for n in m.observed}
    gtr = poutine.trace(poutine.replay(m.guide, trace=tr)).get_trace(observations=obs,
                                                                     num_traces=B)
    return -gtr.log_prob_sum() / B


def pyro_path_train(m, steps, B, lr=1e-2):
    opt = torch.optim.Adam(m.guide.parameters(), lr=lr)
    for _ in range(steps):
        loss = pyro_path_loss(m, B)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(m.guide.parameters()), 10.0)
        opt.step()


def csis_train(m, steps, B):
    """pyro.infer.CSIS with the generated guide: B single traces per step."""
    csis = pyro.infer.CSIS(m.pyro_model, m.guide, pyro.optim.Adam({"lr": 1e-3}),
                           num_inference_samples=10, training_batch_size=B)
    for _ in range(steps):
        csis.step(observations={n: 0.0 for n in m.observed})


def per_step(fn, m, B, steps):
    fn(m, 3, B)                                        # warm up
    t = time.perf_counter()
    fn(m, steps, B)
    return (time.perf_counter() - t) / steps


def part1():
    torch.set_num_threads(1)
    print("Part 1: seed model, one thread: ms per step / traces per s")
    contenders = (
        ("fast path (csis_dsl training)", lambda m, n, B: m.train(
            num_steps=n, batch_size=B, progress=False, validation_size=0)),
        ("Pyro path (trace + replay)", pyro_path_train),
        ("pyro.infer.CSIS, generated guide", csis_train),
    )
    print(f"  {'path':<36}" + "".join(f"{'B=' + str(B):>22}" for B in (1, 512, 4096)))
    rates = {}
    for name, fn in contenders:
        cells = []
        for B in (1, 512, 4096):
            if fn is csis_train and B > 512:
                cells.append(f"{'(too slow)':>22}")
                continue
            steps = 200 if B == 1 else (40 if B == 512 else 10)
            if fn is csis_train and B > 1:
                steps = 2
            dt = per_step(fn, fresh(), B, steps)
            rates[name, B] = B / dt
            cells.append(f"{dt * 1e3:>9.2f} ms {B / dt:>9.0f}/s")
        print(f"  {name:<36}" + "".join(cells), flush=True)
    fast, slow = "fast path (csis_dsl training)", "Pyro path (trace + replay)"
    for B in (512, 4096):
        print(f"  fast / Pyro path traces/s at B={B}: {rates[fast, B] / rates[slow, B]:.1f}x")
    print(f"  fast / pyro.infer.CSIS traces/s at B=512: "
          f"{rates[fast, 512] / rates['pyro.infer.CSIS, generated guide', 512]:.0f}x")


def _rank_rate(folder, steps, B):
    m = csis_dsl.compile(SPEC)
    m.train(num_steps=5, batch_size=B, seed=0, progress=False, validation_size=0)
    t = time.perf_counter()
    m.train(num_steps=steps, batch_size=B, seed=1, progress=False, validation_size=0)
    dt = time.perf_counter() - t
    rank = int(os.environ.get("RANK", 0))
    (Path(folder) / f"rate{rank}").write_text(str(m.history.traces))
    (Path(folder) / f"time{rank}").write_text(str(dt))


def part2():
    from csis_dsl.engine.distributed import spawn
    print("\nPart 2: processes (torch.distributed, gloo, one thread each), the batch per "
          "process; traces/s of the whole job")
    for B, steps in ((512, 150), (4096, 30)):
        out = {}
        for n in (1, 2):
            with tempfile.TemporaryDirectory() as d:
                spawn(n, _rank_rate, d, steps, B, threads=1)
                dt = float((Path(d) / "time0").read_text())
                out[n] = n * steps * B / dt
        print(f"  batch {B:>5}: 1 process {out[1]:>8.0f}/s, 2 processes {out[2]:>8.0f}/s, "
              f"{out[2] / out[1]:.2f}x (goal >= 1.6x)", flush=True)


def fast_to_target(seed, chunk=10, max_chunks=200, **config):
    """Training time until the seed target, checked before the first step too (the
    standardisation statistics are fitted then, and their time counts)."""
    m = _configured(seed, config)     # its statistics are fitted in the first train()
    t_train = 0.0
    for k in range(max_chunks + 1):
        t = time.perf_counter()
        m.train(num_steps=chunk if k else 0, progress=False, validation_size=0)
        t_train += time.perf_counter() - t
        if mean_ess(lambda s: m.infer(OBS, num_samples=50, seed=s).ess) >= TARGET:
            return t_train
    return math.inf


def _configured(seed, config):
    pyro.set_rng_seed(seed)
    return csis_dsl.compile(SPEC).configure(**config)


def pyro_path_to_target(seed, chunk=10, max_chunks=200, **config):
    m = _configured(seed, config)
    t = time.perf_counter()
    m.guide.fit_statistics()
    t_train = time.perf_counter() - t
    opt_state = {}
    for _ in range(max_chunks):
        if mean_ess(lambda s: m.infer(OBS, num_samples=50, seed=s).ess) >= TARGET:
            return t_train
        t = time.perf_counter()
        _pyro_path_chunk(m, chunk, opt_state)
        t_train += time.perf_counter() - t
    return math.inf


def _pyro_path_chunk(m, steps, state, B=512):
    """The engine's schedule (Adam 1e-2 decaying as 1/sqrt(1 + t/50), clip 10), on the
    Pyro path."""
    if "opt" not in state:
        state["opt"] = torch.optim.Adam(m.guide.parameters(), lr=1e-2)
        state["t"] = 0
    opt = state["opt"]
    for _ in range(steps):
        for g in opt.param_groups:
            g["lr"] = 1e-2 / math.sqrt(1 + state["t"] / 50)
        loss = pyro_path_loss(m, B)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(m.guide.parameters()), 10.0)
        opt.step()
        state["t"] += 1


def part3(repeats=3):
    print(f"\nPart 3: training time to the seed target (checked every 10 steps, and "
          f"before the first), medians of {repeats} seeds")
    print("  (the default proposal locates itself by a Newton step on the likelihood,\n"
          "   exact for this conjugate model: it is at the target before any gradient\n"
          "   step; informed=False shows what training alone does)")
    rows = {}
    for name, fn in (("csis_dsl, defaults", fast_to_target),
                     ("csis_dsl, informed=False",
                      lambda s: fast_to_target(s, informed=False)),
                     ("csis_dsl informed=False, on the Pyro path",
                      lambda s: pyro_path_to_target(s, informed=False)),
                     ("pyro.infer.CSIS, hand-written guide",
                      lambda s: pyro_csis(s)[1] or math.inf)):
        times = [fn(s) for s in range(repeats)]
        rows[name] = statistics.median(times)
        print(f"  {name:<44}{rows[name]:>9.2f} s   ({', '.join(f'{t:.2f}' for t in times)})",
              flush=True)
    base = rows["pyro.infer.CSIS, hand-written guide"]
    for name in ("csis_dsl, defaults", "csis_dsl, informed=False"):
        print(f"  pyro.infer.CSIS / {name}: {base / rows[name]:.0f}x (goal >= 50x)")


def part4(device="cuda"):
    """The fast path on a device (a GPU where there is one): ms per step and traces/s of
    the seed model at growing batches, and of real models from bench/real at batch 512."""
    if device == "cuda" and not torch.cuda.is_available():
        print("\nPart 4: no CUDA GPU here; skipped")
        return
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device == "cuda" else device
    print(f"\nPart 4: the fast path on {name}: ms per step / traces per s")

    def on_device(m, n, B):
        m.train(num_steps=n, batch_size=B, progress=False, validation_size=0, device=device)
        sync()

    for B in (1, 512, 4096, 65536):
        dt = per_step(on_device, fresh(), B, 100 if B == 1 else 20)
        print(f"  {'seed model, B=' + str(B):<26}{dt * 1e3:>9.2f} ms {B / dt:>12.0f}/s", flush=True)
    real = Path(__file__).resolve().parent / "real"
    for model in ("glucose", "eight_schools", "coal"):
        d = json.loads((real / f"{model}.json").read_text())
        pyro.set_rng_seed(0)
        dt = per_step(on_device, csis_dsl.compile(real / f"{model}.ppl", args=d["args"]), 512, 10)
        print(f"  {model + ', B=512':<26}{dt * 1e3:>9.2f} ms {512 / dt:>12.0f}/s", flush=True)


if __name__ == "__main__":
    parts = sys.argv[1:] or ["1", "2", "3"]
    if "1" in parts:
        part1()
    if "2" in parts:
        part2()
    if "3" in parts:
        part3()
    if "4" in parts:
        part4()
