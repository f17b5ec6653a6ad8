"""Importance weights that hold up (printed, never asserted).

Part 1, SLCP (specs/slcp.ppl, four-mode posterior; reference: bench/slcp/reference.json,
NUTS started in each mode): train for a wall-clock budget with Normal or Student-t
mixture components (keeping the best validation ESS), then draw 100 000 importance
samples with no defensive mixture, per-site mixing and whole-trace mixing (weight 0.1).
Printed: ESS, Pareto k-hat, the worst error of a marginal mean in reference sds, the
range of sd ratios; and the ESS after a short and after the long training.

Part 2, the specs: the mean ESS/N over 10 prior-predictive observation sets after 15 s
of training, for the three mixing choices.

    python bench/bench_defensive.py [seconds_for_slcp] [seconds_for_specs]
"""
import json
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch

import csis_dsl
from _budget import train_for

warnings.simplefilter("ignore")
ROOT = Path(__file__).resolve().parents[1]
REF = json.loads((ROOT / "bench" / "slcp" / "reference.json").read_text())
CHOICES = (("none", 0.0, "trace"), ("per site", 0.1, "site"), ("whole trace", 0.1, "trace"))


def errors(post):
    m, s = post.mean("theta").double(), post.std("theta").double()
    rm = torch.tensor(REF["mean"], dtype=torch.float64)
    rs = torch.tensor(REF["sd"], dtype=torch.float64)
    return float(((m - rm).abs() / rs).max()), float((s / rs).min()), float((s / rs).max())


def slcp(seconds):
    obs = {"x": REF["observation"]}
    print(f"SLCP: {seconds:.0f} s of training (batch 512, keep_best), 100 000 samples; "
          f"reference: {REF['method']}")
    print(f"  {'components':<12}{'mixing':<14}{'ESS':>10}{'k-hat':>8}{'mean err':>10}"
          f"{'sd ratio':>14}")
    for tails in ("normal", "student"):
        pyro.set_rng_seed(0)
        torch.manual_seed(0)
        m = csis_dsl.compile(ROOT / "specs" / "slcp.ppl").configure(tails=tails)
        m.train(num_steps=200, batch_size=512, progress=False, keep_best=True)
        short = m.infer(obs, num_samples=100_000, seed=0).ess
        t = time.perf_counter()
        while time.perf_counter() - t < seconds:
            m.train(num_steps=50, batch_size=512, progress=False, keep_best=True)
        for label, weight, mixing in CHOICES:
            from csis_dsl.engine.posterior import importance
            post = importance(m, obs, 100_000, seed=0, defensive=weight, mixing=mixing)
            e, lo, hi = errors(post)
            print(f"  {tails:<12}{label:<14}{post.ess:>10.0f}{post.pareto_k:>8.2f}{e:>10.2f}"
                  f"{lo:>8.2f}-{hi:<5.2f}", flush=True)
        print(f"  {tails:<12}ESS after 200 steps: {short:.0f}; after {m.history.steps[-1]} "
              f"steps (kept: step {m.history.best_step}): "
              f"{m.infer(obs, num_samples=100_000, seed=0).ess:.0f}")


def specs(seconds):
    from csis_dsl.engine.posterior import importance
    print(f"\nspecs: {seconds:.0f} s of training; mean ESS/N over 10 prior-predictive sets "
          "(N = 1000)")
    print(f"  {'spec':<20}" + "".join(f"{c[0]:>14}" for c in CHOICES))
    for spec in ("gaussian", "linear_regression", "outlier", "counting", "random_walk",
                 "mixture"):
        pyro.set_rng_seed(0)
        torch.manual_seed(0)
        m = csis_dsl.compile(ROOT / "specs" / f"{spec}.ppl")
        train_for(m, seconds, 128 if spec == "random_walk" else 512)
        sims = m.simulate(10, seed=1234)
        row = []
        for _, weight, mixing in CHOICES:
            row.append(sum(importance(m, {k: sims[k][i] for k in m.observed}, 1000, seed=i,
                                      defensive=weight, mixing=mixing).ess / 1000
                           for i in range(10)) / 10)
        print(f"  {spec:<20}" + "".join(f"{r:>14.3f}" for r in row), flush=True)


if __name__ == "__main__":
    slcp(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)
    specs(float(sys.argv[2]) if len(sys.argv) > 2 else 15.0)
