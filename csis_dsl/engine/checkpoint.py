"""One-file checkpoints: the spec's source, its resolved args, the network
configuration, the weights and the training history, read back with
``torch.load(..., weights_only=True)`` (no pickle of code, ever).

This module only writes and reads the file and checks its fields; composing the stages
again from what it holds is the model's job (``csis_dsl.load``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch

from ..errors import CheckpointError

FORMAT = "csis_dsl-checkpoint"
VERSION = 6   # 6: the guide's proposal order; 5: full-covariance heads; 4: stable distribution ids; 3: one module per proposal family


@dataclass
class Checkpoint:
    name: str
    file: str
    source: str
    args: Dict[str, torch.Tensor]
    config: dict
    state_dict: dict
    history: dict


def write(path, ckpt: Checkpoint):
    """Atomically: a temporary file in the same folder, renamed into place."""
    from ..files import atomic_write
    payload = {"format": FORMAT, "version": VERSION, **ckpt.__dict__}
    atomic_write(path, lambda tmp: torch.save(payload, tmp), "the checkpoint")


def read(path) -> Checkpoint:
    try:
        raw = torch.load(str(path), weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable csis_dsl checkpoint (the file is "
                              f"corrupt or of another kind: {type(err).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a csis_dsl checkpoint (no '{FORMAT}' header); "
                              "save one with model.save(path) or `csis-dsl train`")
    if raw.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {raw.get('version')} is not "
                              f"supported (this csis_dsl reads version {VERSION})")
    try:
        ckpt = Checkpoint(**{k: raw[k] for k in Checkpoint.__dataclass_fields__})
    except KeyError as err:
        raise CheckpointError(f"{path}: checkpoint is missing {err}") from None
    expected = {"name": str, "file": str, "source": str, "args": dict, "config": dict,
                "state_dict": dict, "history": dict}
    for field, kind in expected.items():
        if not isinstance(getattr(ckpt, field), kind):
            raise CheckpointError(f"{path}: checkpoint field '{field}' should be a "
                                  f"{kind.__name__}, it is a {type(getattr(ckpt, field)).__name__}")
    for name, v in list(ckpt.args.items()) + list(ckpt.state_dict.items()):
        if not isinstance(name, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: checkpoint entry {name!r} is not a named tensor")
    return ckpt
