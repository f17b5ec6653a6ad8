import os
import sys
import warnings
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs in parallel workers (make test: pytest -n auto, one per core): one
    # thread each, so that the workers share the cores instead of fighting over them
    import torch
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPECS = ROOT / "specs"


@pytest.fixture(autouse=True)
def _quiet():
    warnings.simplefilter("ignore", RuntimeWarning)
    yield


def compile_spec(stem, **kw):
    """A shipped spec, with its data file (specs/<stem>.json) where it has one."""
    import csis_dsl
    data = SPECS / f"{stem}.json"
    return csis_dsl.compile(SPECS / f"{stem}.ppl", data=data if data.exists() else None, **kw)


def program_posterior(m, observations, num_samples, seed=0, defensive=0.0):
    """Importance sampling before any training with the program's own proposal alone
    (its informed locations, no network; ``defensive``: the broadened share), warnings
    silenced: what the model's static choices give by themselves."""
    m.guide.fit_statistics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return m.infer(observations, num_samples=num_samples, seed=seed, program=1.0,
                       defensive=defensive)


def assert_fast_path_equals_pyro_path(m, B):
    """The training loss of the fast path (the interpreter and the network run directly)
    and of the Pyro path (the model traced, the guide traced replaying its latents, as
    pyro.infer.CSIS does) are the same number with the same gradient, on one batch of
    B traces. Returns how many parameters have a gradient."""
    import math

    import pyro
    import pyro.poutine as poutine
    import torch
    from csis_dsl.engine.train import guide_loss
    pyro.set_rng_seed(0)
    tr = poutine.trace(m.pyro_model).get_trace(num_traces=B)
    env = tr.nodes["_RETURN"]["value"]
    latents = {n: env[n] for n in m.latents}
    obs = {n: env[n] for n in m.observed}
    params = [p for p in m.guide.parameters() if p.requires_grad]
    fast = guide_loss(m, latents, obs, B)
    g_fast = torch.autograd.grad(fast, params, allow_unused=True)
    gtr = poutine.trace(poutine.replay(m.guide, trace=tr)).get_trace(observations=obs,
                                                                     num_traces=B)
    slow = -gtr.log_prob_sum() / B
    g_slow = torch.autograd.grad(slow, params, allow_unused=True)
    assert math.isfinite(float(fast.detach()))
    assert float(fast.detach()) == pytest.approx(float(slow.detach()), rel=1e-5, abs=1e-4)
    used = 0
    for a, b in zip(g_fast, g_slow):
        assert (a is None) == (b is None)
        if a is not None:
            used += 1
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    return used
