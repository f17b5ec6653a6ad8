"""The engine and generated guide against pyro.infer.CSIS with the seed's hand-written
guide, and LSTM vs feedforward proposals (printed figures, never asserted).

Part 1, the seed model (Pyro's CSIS tutorial): each contender trains in chunks; after
each chunk, 10 inferences with 50 samples at (x1, x2) = (8, 9) give the mean ESS.
Printed: traces/s while training, training wall time until the mean ESS reaches 45/50
(evaluation time excluded), and the final mean ESS; medians of three runs.

Part 2, LSTM vs feedforward: each spec trains for the same wall-clock budget with each
architecture; printed: traces/s, validation loss and mean ESS/N over 10
prior-predictive observation sets.

    python bench/bench_engine.py [seconds_for_part_2]
"""
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

import csis_dsl
from csis_dsl.engine.seeding import seeded
from _budget import quality, train_for

warnings.simplefilter("ignore")
SPECS = Path(__file__).resolve().parents[1] / "specs"
OBS = {"x1": 8.0, "x2": 9.0}
TARGET = 45.0
BUDGET2 = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0


def mean_ess(ess_of_seed, n=10):
    return sum(ess_of_seed(s) for s in range(n)) / n


def ours(seed=0, chunk=25, max_chunks=80, **kw):
    """The engine at its defaults (or with other ``train`` settings, e.g. ``lr``)."""
    pyro.set_rng_seed(seed)
    torch.manual_seed(seed)
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    train_time, reached, e = 0.0, None, 0.0
    for _ in range(max_chunks):
        t = time.perf_counter()
        m.train(num_steps=chunk, progress=False, validation_size=0, **kw)
        train_time += time.perf_counter() - t
        e = mean_ess(lambda s: m.infer(OBS, num_samples=50, seed=s).ess)
        if e >= TARGET:
            reached = train_time
            break
    return m.history.traces / train_time, reached, e, m.history.traces


def pyro_csis(seed=0, chunk=100, max_chunks=30):
    """The seed tutorial, verbatim in substance: its model, its guide, its optimiser."""
    pyro.set_rng_seed(seed)
    torch.manual_seed(seed)
    pyro.clear_param_store()

    def model(prior_mean, observations={"x1": 0, "x2": 0}):
        x = pyro.sample("z", dist.Normal(prior_mean, torch.tensor(5 ** 0.5)))
        pyro.sample("x1", dist.Normal(x, 2 ** 0.5), obs=observations["x1"])
        pyro.sample("x2", dist.Normal(x, 2 ** 0.5), obs=observations["x2"])

    class Guide(nn.Module):
        def __init__(self):
            super().__init__()
            self.neural_net = nn.Sequential(nn.Linear(2, 10), nn.ReLU(), nn.Linear(10, 20),
                                            nn.ReLU(), nn.Linear(20, 10), nn.ReLU(),
                                            nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2))

        def forward(self, prior_mean, observations={"x1": 0, "x2": 0}):
            pyro.module("guide", self)
            x1, x2 = observations["x1"], observations["x2"]
            v = torch.cat((torch.as_tensor(x1, dtype=torch.float).view(1, 1),
                           torch.as_tensor(x2, dtype=torch.float).view(1, 1)), 1)
            v = self.neural_net(v)
            pyro.sample("z", dist.Normal(v[0, 0], torch.exp(v[0, 1])))

    guide = Guide()
    csis = pyro.infer.CSIS(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                           num_inference_samples=50)
    pm = torch.tensor(1.0)
    obs = {"x1": torch.tensor(8.0), "x2": torch.tensor(9.0)}

    def ess(s):
        with seeded(s):   # a fixed evaluation stream that does not rewind training's
            return float(csis.run(pm, observations=obs).get_ESS())

    train_time, traces, reached, e = 0.0, 0, None, 0.0
    for _ in range(max_chunks):
        t = time.perf_counter()
        for _ in range(chunk):
            csis.step(pm)
        train_time += time.perf_counter() - t
        traces += chunk * csis.training_batch_size
        with torch.no_grad():
            e = mean_ess(ess)
        if e >= TARGET:
            reached = train_time
            break
    return traces / train_time, reached, e, traces


def part1(repeats=3):
    print("Seed model: training until the mean ESS of 10 inferences (50 samples at "
          f"x1=8, x2=9) reaches 45/50; {repeats} runs (training seeds 0..{repeats - 1}) each, "
          "medians")
    print(f"  {'contender':<40}{'traces/s':>10}{'time to ESS 45':>16}{'final ESS':>11}"
          f"   times to the target, per run")
    rows = {}
    for name, fn in (("csis_dsl, defaults", ours),
                     ("csis_dsl, lr 3e-3", lambda seed: ours(seed, lr=3e-3)),
                     ("pyro.infer.CSIS, hand-written guide", pyro_csis)):
        runs = [fn(seed) for seed in range(repeats)]
        tps = statistics.median(r[0] for r in runs)
        times = [r[1] if r[1] is not None else math.inf for r in runs]
        t = statistics.median(times)
        e = statistics.median(r[2] for r in runs)
        rows[name] = (tps, t)
        each = ", ".join("not reached" if x == math.inf else f"{x:.2f}" for x in times)
        r = "not reached" if t == math.inf else f"{t:.2f} s"
        print(f"  {name:<40}{tps:>10.0f}{r:>16}{e:>11.1f}   {each}", flush=True)
    (a_tps, a_t), (p_tps, p_t) = rows["csis_dsl, defaults"], \
        rows["pyro.infer.CSIS, hand-written guide"]
    print(f"  traces/s ratio (medians): {a_tps / p_tps:.0f}x (goal >= 50x)")
    if a_t < math.inf and p_t < math.inf:
        print(f"  time-to-ESS ratio (medians): {p_t / a_t:.1f}x (goal >= 10x)")


def part2():
    print(f"\nLSTM vs feedforward: {BUDGET2:.0f} s of training each, batch 512; "
          "ESS/N = mean over 10 prior-predictive observation sets (N = 1000)")
    print(f"  {'spec':<20}{'architecture':<14}{'traces/s':>10}{'val loss':>10}{'ESS/N':>8}")
    for spec in ("linear_regression", "mixture", "outlier", "random_walk"):
        for arch in ("lstm", "feedforward"):
            pyro.set_rng_seed(0)
            torch.manual_seed(0)
            m = csis_dsl.compile(SPECS / f"{spec}.ppl").configure(architecture=arch)
            h = train_for(m, BUDGET2, 512)
            print(f"  {spec:<20}{arch:<14}{h.traces / h.wall_time[-1]:>10.0f}"
                  f"{h.val_loss[-1]:>10.3f}{quality(m):>8.3f}", flush=True)


if __name__ == "__main__":
    part1()
    part2()
