"""Real models on their real data (printed, never asserted): the published models of
MODELS below, with the data shipped in bench/real/, each against a reference posterior
you can trust (bench/real/references.json: exact quadrature, or long Pyro NUTS runs
with R-hat checked; see bench/real/references.py).

For each model: train for a wall-clock budget, then infer (amortised), then refine the
proposal for the observations and infer again. Printed per row: ESS/N, Pareto k-hat,
the worst error of a posterior mean in reference standard deviations (continuous
latents), the range of sd ratios (ours / reference), the worst error of a marginal
probability (discrete latents), and wall times.

    python bench/bench_real.py [train_seconds] [refine_seconds] [model,model,...]
"""
import json
import math
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch

import csis_dsl
from _budget import train_for

warnings.simplefilter("ignore")
REAL = Path(__file__).resolve().parent / "real"
MODELS = {      # name: training batch size (long sequential models: cheaper steps)
    "faithful": 512, "glucose": 512, "pima": 512, "eight_schools": 512, "nile": 128,
    "quakes": 128, "coal": 128, "coal_walk": 128, "radon": 128, "surgical": 512,
    "newcomb": 512, "sleep": 512, "anscombe": 512, "rats": 128, "pumps": 512, "dyes": 512,
}
NUM_SAMPLES = 5000


def load(name):
    return json.loads((REAL / f"{name}.json").read_text())


def compare(post, ref):
    """(worst |mean error| / ref sd over continuous latents, (min, max) sd ratio,
    worst |probability error| over discrete latents)."""
    worst, ratios, prob = 0.0, [], 0.0
    for name, r in ref.items():
        m = post.mean(name).reshape(-1).double()
        s = post.std(name).reshape(-1).double()
        rm, rs = torch.tensor(r["mean"], dtype=torch.float64), torch.tensor(r["sd"], dtype=torch.float64)
        if post.model.checked.vars[name].discrete:
            prob = max(prob, float((m - rm).abs().max()))
            continue
        worst = max(worst, float(((m - rm).abs() / rs).max()))
        q = s / rs
        ratios += [float(q.min()), float(q.max())]
    return worst, (min(ratios), max(ratios)) if ratios else (math.nan, math.nan), prob


def row(label, post, ref, seconds):
    worst, (lo, hi), prob = compare(post, ref)
    return (f"  {label:<26}{post.ess / post.num_samples:>7.3f}{post.pareto_k:>7.2f}"
            f"{worst:>9.2f}{lo:>7.2f}-{hi:<5.2f}{prob:>8.3f}{seconds:>8.1f}")


def main():
    train_s = float(sys.argv[1]) if len(sys.argv) > 1 else 45.0
    refine_s = float(sys.argv[2]) if len(sys.argv) > 2 else 15.0
    names = sys.argv[3].split(",") if len(sys.argv) > 3 else list(MODELS)
    refs = json.loads((REAL / "references.json").read_text())
    print(f"training {train_s:.0f} s, refinement at most {refine_s:.0f} s; {NUM_SAMPLES} "
          "importance samples; errors against the reference posterior")
    print(f"  {'model / proposal':<26}{'ESS/N':>7}{'k-hat':>7}{'mean err':>9}"
          f"{'sd ratio':>13}{'p err':>8}{'time s':>8}")
    for name in names:
        d = load(name)
        ref = refs[name]["posterior"]
        pyro.set_rng_seed(0)
        torch.manual_seed(0)
        m = csis_dsl.compile(REAL / f"{name}.ppl", args=d["args"])
        t = time.perf_counter()
        h = train_for(m, train_s, MODELS[name])
        trained = time.perf_counter() - t
        print(f"{name} ({h.steps[-1]} steps, batch {MODELS[name]}, reference: "
              f"{refs[name]['method']})")
        t = time.perf_counter()
        post = m.infer(d["observations"], num_samples=NUM_SAMPLES, seed=0)
        share = (post.mixture or {}).get("program", 0.0)     # the pilot's choice
        label = f"amortised (program {share:.2f})" if share else "amortised"
        print(row(label, post, ref, trained + time.perf_counter() - t), flush=True)
        t = time.perf_counter()
        r = m.refine(d["observations"], steps=10_000, max_seconds=refine_s, seed=0)
        post = r.infer(NUM_SAMPLES, seed=1)
        print(row(f"refined ({len(r.ess)} steps)", post, ref,
                  trained + time.perf_counter() - t), flush=True)


if __name__ == "__main__":
    main()
