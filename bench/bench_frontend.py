"""Front-end and simulation figures (printed, not asserted)."""
import time

import pyro
import torch

import csis_dsl
from pathlib import Path

N = 2000
src = "model big {\n  a0 ~ Normal(0.0, 1.0);\n" + "".join(
    f"  a{i} ~ Normal(a{i - 1} * 0.5 + {i % 7}.0, 1.0);\n" for i in range(1, N - 1)) + \
    f"  observe y ~ Normal(a{N - 2}, 1.0);\n}}\n"
t = time.perf_counter()
m = csis_dsl.compile_string(src)
print(f"parse + check + graph, {N}-statement spec: {time.perf_counter() - t:.3f} s (goal < 1 s)")

seed = csis_dsl.compile(Path(__file__).resolve().parents[1] / "specs" / "gaussian.ppl")
seed.simulate(1000)
t = time.perf_counter()
seed.simulate(100_000)
vec = time.perf_counter() - t
print(f"100000 joint traces of the seed model, one vectorised call: {vec:.4f} s (goal < 0.2 s)")
n = 2000
t = time.perf_counter()
with torch.no_grad():
    for _ in range(n):
        pyro.poutine.trace(seed.pyro_model).get_trace()
loop = (time.perf_counter() - t) / n * 100_000
print(f"100000 traces one Pyro call per trace (extrapolated from {n}): {loop:.1f} s; "
      f"ratio {loop / vec:.0f}x")
