"""The weighted posterior as an ArviZ DataTree (arviz-base), so ArviZ's summaries,
diagnostics and plots work on it.

Groups: ``posterior`` -- draws resampled by weight (systematic resampling, one chain);
``observed_data`` -- the observations; ``importance`` -- the raw draws with their log
weights (``log_weight``), over a ``sample`` dimension. The ESS, Pareto k-hat, log
evidence and sample count are attributes of the root and of ``posterior``."""
from __future__ import annotations

import math
from typing import Optional

from .. import options as opt
from ..errors import OptionError


def _arviz():
    try:
        import arviz_base
    except ImportError:
        raise OptionError("to_arviz needs ArviZ: pip install 'csis_dsl[arviz]' (it installs "
                          "arviz-base and h5netcdf)") from None
    return arviz_base


def _dims(name, shape):
    return [f"{name}_dim_{i}" for i in range(len(shape))]


def to_arviz(post, num_draws: Optional[int] = None, seed: Optional[int] = None):
    az = _arviz()
    num_draws = opt.optional_integer("num_draws", num_draws, 1)
    seed = opt.optional_integer("seed", seed)
    model = post.model
    idx = post.resample(num_draws, seed)
    names = model.latents + model.deterministic
    posterior, raw, dims = {}, {}, {}
    for name in names:
        x = post.values(name)            # NaN where an element does not exist
        shape = tuple(x.shape[1:])
        dims[name] = _dims(name, shape)
        posterior[name] = x[idx].numpy()[None]
        raw[name] = x.numpy()
    observed = {}
    for name, t in post.observations.items():
        v = t[0] if t.dim() and t.shape[0] == 1 else t
        observed[name] = v.numpy()
        dims[name] = _dims(name, tuple(v.shape))
    raw["log_weight"] = post.log_weights.numpy()
    stats = {"ess": post.ess, "num_samples": post.num_samples,
             "pareto_k": post.pareto_k, "log_evidence": post.log_evidence,
             "proposal": post.proposal, "model": model.name,
             "refine_steps": len(post.refinement.ess) if post.refinement else 0,
             "inference_library": "csis_dsl"}
    stats = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
             for k, v in stats.items()}
    tree = az.from_dict(
        {"posterior": posterior, "observed_data": observed},
        dims=dims, attrs={"posterior": stats, "/": stats})
    imp = az.dict_to_dataset(raw, sample_dims=["sample"],
                             dims={n: d for n, d in dims.items() if n in raw},
                             attrs=stats)
    tree["importance"] = imp
    return tree


def write_netcdf(post, path, num_draws: Optional[int] = None, seed: Optional[int] = None):
    """``to_arviz`` written to a netCDF file (atomically)."""
    from ..files import atomic_write
    tree = to_arviz(post, num_draws, seed)
    atomic_write(path, lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf"), "the netCDF file")
    return tree
