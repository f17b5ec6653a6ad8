"""The posterior predictive: the model run forward from latents resampled by the
importance weights, its observed variables simulated afresh (one vectorised run)."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .. import options as opt
from .seeding import seeded


def predictive(post, n: int = 1000, seed: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """n posterior predictive observation sets of ``post`` (a Posterior): a dict from
    each observed variable to (n, *shape). Latents come from the weighted posterior
    (systematic resampling), deterministic variables are recomputed from them, and
    every observed variable is drawn from its distribution given them."""
    n = opt.integer("n", n, 1)
    seed = opt.optional_integer("seed", seed)
    model = post.model
    idx = post.resample(n, seed)
    values = {name: post._values[name][idx] for name in model.latents}
    with torch.no_grad(), seeded(seed):
        _, _, env = model.pyro_model.score(n, None, values)
    return {name: env[name].expand((n,) + tuple(env[name].shape[1:])).cpu().clone()
            for name in model.observed}   # on the CPU, as the Posterior's draws
