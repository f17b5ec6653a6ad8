"""How the default network sizes and batch size were chosen (printed, not asserted).

For each spec and each configuration (one factor varied at a time from the defaults),
train for the same wall-clock budget, then measure posterior quality: the mean
ESS / N of importance sampling with the trained proposal over 10 observation sets drawn
from the prior predictive (fixed seeds), and the validation loss (the expected
-log q(latents | observations), lower is better). Quality per second of training is
what matters, so every configuration gets the same seconds, not the same steps.

    python bench/bench_sizes.py [seconds_per_run] [factor,factor...] [spec,spec...]

Run it on an otherwise idle machine: the budget is wall-clock time.
"""
import sys
import warnings
from pathlib import Path

import pyro
import torch

import csis_dsl
from _budget import quality, train_for

warnings.simplefilter("ignore")
SPECS = Path(__file__).resolve().parents[1] / "specs"
BUDGET = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
# the engine's and the network's defaults (hidden and obs_embedding: sized to the model,
# 32 for at most 4 latent numbers, else 64)
DEFAULT = dict(lr=1e-2, lr_tau=50, batch_size=512, hidden=None, mixture_components=12,
               obs_embedding=None, obs_skip=True, obs_aligned=True)
TRAIN = ("lr", "lr_tau", "batch_size")
FACTORS = {"lr": (3e-3, 3e-2), "lr_tau": (None, 250), "batch_size": (128, 2048),
           "obs_skip": (False,), "obs_aligned": (False,), "hidden": (32, 64, 128),
           "mixture_components": (3, 10), "obs_embedding": (32, 64, 128)}
ONLY = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] else list(FACTORS)
SPEC_LIST = sys.argv[3].split(",") if len(sys.argv) > 3 else \
    ["gaussian", "linear_regression", "outlier", "random_walk"]
VARIANTS = [("defaults", {})] + [(f"{k}={v}", {k: v}) for k in ONLY for v in FACTORS[k]]


def main():
    print(f"budget {BUDGET:.0f} s of training per run; quality = mean ESS/N over 10 "
          f"prior-predictive observation sets (N = 1000)")
    for spec in SPEC_LIST:
        print(f"\n{spec}")
        print(f"  {'configuration':<24}{'steps':>7}{'traces/s':>10}{'val loss':>10}{'ESS/N':>8}")
        for label, change in VARIANTS:
            cfg = {**DEFAULT, **change}
            train = {k: cfg.pop(k) for k in TRAIN}
            m = csis_dsl.compile(SPECS / f"{spec}.ppl")
            pyro.set_rng_seed(0)
            torch.manual_seed(0)
            m.configure(**cfg)
            h = train_for(m, BUDGET, **train)
            tps = h.traces / h.wall_time[-1]
            print(f"  {label:<24}{h.steps[-1]:>7}{tps:>10.0f}{h.val_loss[-1]:>10.3f}"
                  f"{quality(m):>8.3f}", flush=True)


if __name__ == "__main__":
    main()
