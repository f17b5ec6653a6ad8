"""One-file checkpoints: spec source, resolved args, network configuration, weights and
training history; read back with ``torch.load(..., weights_only=True)``."""
from __future__ import annotations

import torch

from ..errors import CheckpointError, CompileError

FORMAT = "csis_dsl-checkpoint"
VERSION = 2   # 2: the observation skip and aligned paths (obs_skip, obs_aligned)


def save(model, path):
    ckpt = {
        "format": FORMAT, "version": VERSION,
        "name": model.name, "file": model.file, "source": model.source,
        "args": {n: v.clone() for n, v in model.checked.args.items()},
        "config": model.guide.config.to_dict(),
        "state_dict": model.guide.state_dict(),
        "history": model.history.to_dict() if model.history is not None else {},
        "fitted": bool(model._stats_fitted),
    }
    torch.save(ckpt, str(path))


def load(path, obs_embeddings=None):
    from ..compiler import CompiledModel
    from ..engine.train import TrainingHistory
    from ..proposals.network import NetworkConfig
    try:
        ckpt = torch.load(str(path), weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable csis_dsl checkpoint (the file is "
                              f"corrupt or of another kind: {type(err).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a csis_dsl checkpoint (no '{FORMAT}' header); "
                              "save one with model.save(path) or `csis-dsl train`")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt.get('version')} is not "
                              f"supported (this csis_dsl reads version {VERSION})")
    try:
        args = {n: v for n, v in ckpt["args"].items()}
        model = CompiledModel(ckpt["source"], ckpt["file"], args)
    except CompileError as err:
        raise CheckpointError(f"{path}: the spec stored in the checkpoint no longer "
                              f"compiles:\n{err}") from None
    except KeyError as err:
        raise CheckpointError(f"{path}: checkpoint is missing {err}") from None
    try:
        config = NetworkConfig(**ckpt["config"])
    except (TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: the network configuration in the checkpoint is not "
                              f"one this csis_dsl knows ({err})") from None
    model.configure(config, obs_embeddings=obs_embeddings)
    try:
        model.guide.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not match the network of its spec "
                              f"({str(err).splitlines()[0]})") from None
    model._stats_fitted = ckpt.get("fitted", True)
    model.history = TrainingHistory.from_dict(ckpt.get("history"))
    return model
