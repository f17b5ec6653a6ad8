"""Shared by the benchmarks: train for a wall-clock budget, and measure posterior quality
as the mean ESS / N over prior-predictive observation sets (fixed seeds)."""
import time

import torch

# The first torch optimiser built in a process imports torch._dynamo (about 1 s here).
# That is a once-per-process cost of torch, not of training: pay it on import, before any
# clock runs, so that no contender or configuration is charged for it.
torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def train_for(m, seconds, batch_size, **kw):
    """Train in chunks of 25 steps until ``seconds`` of wall-clock time have passed (the
    engine's defaults unless ``kw`` overrides them, e.g. ``lr``)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        m.train(num_steps=25, batch_size=batch_size, progress=False, validation_size=512,
                validate_every=25, **kw)
    return m.history


def quality(m, n_sets=10, n=1000):
    sims = m.simulate(n_sets, seed=1234)
    fr = []
    for i in range(n_sets):
        obs = {k: sims[k][i] for k in m.observed}
        fr.append(m.infer(obs, num_samples=n, seed=i).ess / n)
    return sum(fr) / len(fr)
