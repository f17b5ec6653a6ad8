"""What a training step costs as a plate grows (issue 9; printed, never asserted).

The model is the two-component mixture of bench/real/quakes.ppl (one discrete
allocation per data point) at N = 10, 100 and 1000 points; batch 128, one torch thread.
Steps of all sizes are interleaved (so that a noisy machine slows them alike) and the
medians are printed: simulation alone and a whole step (simulation, loss, backward,
Adam), with the default ``plate_subsample=64`` and with every instance scored
(``plate_subsample=None``), and each step's cost relative to N = 10.

    python bench/bench_plates.py [steps]
"""
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

import csis_dsl
from csis_dsl.engine.train import joint_batch

warnings.simplefilter("ignore")
SRC = (Path(__file__).resolve().parent / "real" / "quakes.ppl").read_text()
SIZES = (10, 100, 1000)
B = 128


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    torch.set_num_threads(1)
    runs = {}
    for sub in (64, None):
        for N in SIZES:
            m = csis_dsl.compile_string(SRC, name="quakes.ppl", args={"N": N})
            m.train(num_steps=3, batch_size=B, progress=False, validation_size=0, seed=0,
                    plate_subsample=sub)
            good = (0, {k: v.clone() for k, v in m.guide.state_dict().items()})
            runs[sub, N] = (m, good, [], [])
    for _ in range(steps):
        for (sub, N), (m, good, sim, step) in runs.items():
            t0 = time.perf_counter()
            latents, obs = joint_batch(m, B)
            t1 = time.perf_counter()
            m._trainer.step(latents, obs, B, 10.0, good)
            t2 = time.perf_counter()
            sim.append(t1 - t0)
            step.append(t2 - t0)
    print(f"batch {B}, one thread, medians of {steps} interleaved steps (ms)")
    print(f"  {'N':>6}{'simulate':>10}{'step, subsample 64':>21}{'x N=10':>8}"
          f"{'step, all instances':>22}{'x N=10':>8}")
    med = {k: (statistics.median(v[2]) * 1e3, statistics.median(v[3]) * 1e3)
           for k, v in runs.items()}
    for N in SIZES:
        s64, sall = med[64, N][1], med[None, N][1]
        print(f"  {N:>6}{med[64, N][0]:>10.1f}{s64:>21.1f}{s64 / med[64, 10][1]:>8.2f}"
              f"{sall:>22.1f}{sall / med[None, 10][1]:>8.2f}")


if __name__ == "__main__":
    main()
