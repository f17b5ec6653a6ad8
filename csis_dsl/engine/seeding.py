"""``seeded(seed)``: run a block with its own seeded random stream, then put the global
stream back where it was.

``infer(..., seed=s)`` and ``simulate(..., seed=s)`` are reproducible without rewinding
the caller's stream: evaluating a posterior with a fixed seed between two calls of
``train`` must not make the next training batches repeat the previous ones.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import pyro
import torch
from pyro.util import get_rng_state, set_rng_state


@contextmanager
def seeded(seed: Optional[int]):
    if seed is None:
        yield
        return
    saved = get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        set_rng_state(saved)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
