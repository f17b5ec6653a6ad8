"""Generated guide + csis_dsl engine vs pyro.infer.CSIS with the seed's hand-written
guide, on the seed model (printed figures)."""
import math
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

import csis_dsl

warnings.simplefilter("ignore")
SPECS = Path(__file__).resolve().parents[1] / "specs"
OBS = {"x1": 8.0, "x2": 9.0}


def mean_ess(infer, n=10):
    return sum(infer(s) for s in range(n)) / n


def ours():
    m = csis_dsl.compile(SPECS / "gaussian.ppl")
    m._fit_statistics()
    t0 = time.perf_counter()
    reached, traces = None, 0
    for _ in range(40):
        m.train(num_steps=100, batch_size=10, lr=3e-3, progress=False)
        traces += 1000
        e = mean_ess(lambda s: m.infer(OBS, num_samples=50, seed=s).ess)
        if reached is None and e >= 45:
            reached = time.perf_counter() - t0
            break
    tps = m.history.traces / m.history.wall_time[-1]
    return tps, reached, e


def pyro_csis():
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
            v = torch.cat((x1.view(1, 1), x2.view(1, 1)), 1)
            v = self.neural_net(v)
            pyro.sample("z", dist.Normal(v[0, 0], torch.exp(v[0, 1])))

    guide = Guide()
    csis = pyro.infer.CSIS(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_inference_samples=50)
    pm = torch.tensor(1.0)
    obs = {"x1": torch.tensor(8.0), "x2": torch.tensor(9.0)}

    def ess(s):
        pyro.set_rng_seed(s)
        post = csis.run(pm, observations=obs)
        return float(post.get_ESS())
    t0 = time.perf_counter()
    train_time, traces, reached, e = 0.0, 0, None, 0.0
    for _ in range(20):
        t = time.perf_counter()
        for _ in range(100):
            csis.step(pm)
        train_time += time.perf_counter() - t
        traces += 100 * csis.training_batch_size
        e = mean_ess(ess)
        if e >= 45:
            reached = time.perf_counter() - t0
            break
    return traces / train_time, reached, e


for name, fn in (("csis_dsl (generated guide)", ours), ("pyro.infer.CSIS (hand guide)", pyro_csis)):
    tps, reached, e = fn()
    r = f"{reached:.1f} s" if reached else "not reached"
    print(f"{name:<32} traces/s {tps:>9.0f}   time to mean ESS 45/50: {r:>12}   final ESS {e:.1f}")
