"""The log density of a site's informing observations at candidate values of the site
(what the informed proposals fit: :mod:`.families`, :mod:`.collapse`), per instance."""
from __future__ import annotations

import torch

from ..backend.values import Stored


def gather_index(rt, o: str, expr, n: int):
    """The instance each observation of ``o`` reads through the data index ``expr``
    (:func:`.context.gathered`), (N,), clamped into 0..n - 1, and where it was in range
    (N,) bool."""
    loops = rt.plan.loops_of(rt.checked.vars[o].stmts[0])
    N = loops[0].size
    e = rt.evaluator(loops)(expr).t
    e = e.expand(e.shape[:1] + (N,)).reshape(-1)[-N:].long()
    valid = (e >= 0) & (e < n)
    return e.clamp(0, n - 1), valid


def informing_loglik(rt, names, observations, overlay, M: int, m: int, n: int,
                     gathered=None, fixed=None, whole: bool = False,
                     recompute=()) -> torch.Tensor:
    """The log density of observations ``names`` with ``overlay`` replacing stored
    variables: per instance (M, m), or summed (M, 1) where ``whole``. ``gathered``:
    observed name -> (index, valid) of those read through a data index, whose
    observation k counts for instance index[k] of the n. ``recompute``: deterministic
    values between the overlay and the observations, recomputed from it in order."""
    if recompute:
        overlay = dict(overlay)
        for d in recompute:
            overlay[d] = Stored(rt.assigned(rt.checked.vars[d].stmts[0], overlay=overlay))
    total = 0.0
    for name in names:
        s = rt.checked.vars[name].stmts[0]
        lp = rt.stmt_log_prob(s, observations[name], overlay, fixed)
        if gathered and name in gathered:          # observation k informs instance e(k)
            at, valid = gathered[name]
            lp = lp.reshape(M, -1).masked_fill(~valid, 0.0)
            total = total + lp.new_zeros(M, n).index_add(1, at, lp)
        elif whole:
            total = total + lp.reshape(M, -1).sum(-1, keepdim=True)
        else:
            total = total + lp.reshape(M, m, -1).sum(-1)    # a row per instance
    return total
