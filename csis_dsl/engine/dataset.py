"""Offline datasets of joint traces, for models whose simulation is expensive.

``write(model, folder, n, shard_size)`` simulates n joint traces and writes them as
shards in the safetensors format (plain tensors and a JSON header: loading never runs
pickle), plus ``index.json``, which names the model, a fingerprint of its spec and
args, each variable's shape and dtype, and each shard with its size and SHA-256.

``Dataset(folder, model)`` checks all of that against the model before training reads
a single trace, and ``batches(...)`` yields training batches epoch by epoch: the shards
of this rank (shard i goes to rank i mod world) in a new order each epoch, the traces
shuffled within each shard, the same number of steps on every rank.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from ..backend.observations import Observations
from ..errors import DatasetError

FORMAT = "csis_dsl-dataset"
VERSION = 1
INDEX = "index.json"


def fingerprint(model) -> str:
    """What the traces depend on: the spec's source and its resolved args."""
    h = hashlib.sha256(model.source.encode())
    for name in sorted(model.checked.args):
        v = model.checked.args[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(v.dtype).encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write(model, folder, n: int, shard_size: int = 100_000, progress: bool = False) -> Path:
    """Simulate ``n`` joint traces of ``model`` into ``folder`` (created; it must be
    empty or hold nothing but an earlier dataset, which is replaced)."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from ..files import atomic_write
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"cannot write a dataset to '{folder}': it is a file")
    if folder.is_dir():
        stray = [p.name for p in folder.iterdir()
                 if not (p.name == INDEX or p.name.lstrip(".").startswith(("shard-", INDEX)))]
        if stray:
            raise DatasetError(f"cannot write a dataset to '{folder}': it holds other files "
                               f"({', '.join(sorted(stray)[:3])}); use an empty folder")
        for p in list(folder.glob("shard-*")) + list(folder.glob(".shard-*")):
            p.unlink()
        (folder / INDEX).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    names = model.latents + model.observed
    shards, variables = [], None
    count = math.ceil(n / shard_size)
    for i in tqdm(range(count), disable=not progress, desc="simulating", unit="shard"):
        size = min(shard_size, n - i * shard_size)
        sims = model.pyro_model.simulate(size)
        tensors = {k: sims[k].detach().cpu().contiguous().clone() for k in names}
        if variables is None:
            variables = {k: {"shape": list(t.shape[1:]), "dtype": str(t.dtype)}
                         for k, t in tensors.items()}
        file = f"shard-{i:06d}.safetensors"
        atomic_write(folder / file, lambda tmp: save_file(tensors, tmp,
                                                          metadata={"format": FORMAT}),
                     "a dataset shard")
        shards.append({"file": file, "n": size, "sha256": _sha256(folder / file)})
    index = {"format": FORMAT, "version": VERSION, "model": model.name,
             "fingerprint": fingerprint(model), "n": n, "latents": model.latents,
             "observed": model.observed, "variables": variables, "shards": shards}
    atomic_write(folder / INDEX, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=1)),
                 "the dataset index")
    return folder


class Dataset:
    """A dataset folder, checked against ``model``."""

    def __init__(self, folder, model):
        self.folder = Path(folder)
        self.model = model
        where = f"dataset '{self.folder}'"
        index_path = self.folder / INDEX
        if not self.folder.is_dir():
            raise DatasetError(f"{where}: no such folder; write one with "
                               "model.simulate_to(folder, n) or `csis-dsl simulate`")
        try:
            idx = json.loads(index_path.read_text())
        except FileNotFoundError:
            raise DatasetError(f"{where}: no {INDEX}, so it is not a csis_dsl dataset "
                               "(or its writing was cut short); simulate it again") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"{where}: {INDEX} is unreadable ({err}); simulate it "
                               "again") from None
        if not isinstance(idx, dict) or idx.get("format") != FORMAT:
            raise DatasetError(f"{where}: {INDEX} is not a csis_dsl dataset index")
        if idx.get("version") != VERSION:
            raise DatasetError(f"{where}: dataset version {idx.get('version')} is not "
                               f"supported (this csis_dsl reads version {VERSION})")
        if idx.get("fingerprint") != fingerprint(model):
            raise DatasetError(
                f"{where}: its traces were simulated from model '{idx.get('model')}' with "
                f"another spec or other args than model '{model.name}' ({model.file}) has "
                "now; simulate it again from this model")
        try:
            self.shards: List[dict] = [dict(file=str(s["file"]), n=int(s["n"]),
                                            sha256=str(s["sha256"])) for s in idx["shards"]]
            self.variables: Dict[str, dict] = dict(idx["variables"])
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{where}: {INDEX} is damaged ({err!r})") from None
        names = set(model.latents + model.observed)
        if set(self.variables) != names:
            raise DatasetError(f"{where}: it holds {sorted(self.variables)}, the model "
                               f"needs {sorted(names)}")
        for s in self.shards:
            if "/" in s["file"] or not (self.folder / s["file"]).is_file():
                raise DatasetError(f"{where}: shard '{s['file']}' is missing; simulate "
                                   "the dataset again")
        self.n = sum(s["n"] for s in self.shards)

    def of_rank(self, rank: int, world: int) -> List[dict]:
        return self.shards[rank::world]

    def steps_per_epoch(self, batch_size: int, world: int = 1) -> int:
        """The same for every rank: the whole batches in the smallest rank's share."""
        if len(self.shards) < world:
            raise DatasetError(f"dataset '{self.folder}' has {len(self.shards)} shard(s) "
                               f"for {world} ranks; simulate it with a smaller shard_size")
        least = min(sum(s["n"] for s in self.of_rank(r, world)) for r in range(world))
        steps = least // batch_size
        if steps == 0:
            raise DatasetError(f"dataset '{self.folder}': a rank's share ({least} traces) "
                               f"is smaller than one batch ({batch_size}); lower batch_size "
                               "or simulate more traces")
        return steps

    def load(self, shard: dict) -> Dict[str, torch.Tensor]:
        """One shard's tensors, checked (checksum, names, shapes, dtypes, size)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        path = self.folder / shard["file"]
        where = f"dataset '{self.folder}', shard '{shard['file']}'"
        if _sha256(path) != shard["sha256"]:
            raise DatasetError(f"{where}: its checksum does not match the index (the file "
                               "changed or is damaged); simulate the dataset again")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise DatasetError(f"{where}: unreadable ({err})") from None
        for k, spec in self.variables.items():
            t = tensors.get(k)
            if t is None or list(t.shape[1:]) != spec["shape"] or str(t.dtype) != spec["dtype"] \
                    or t.shape[0] != shard["n"]:
                raise DatasetError(f"{where}: variable '{k}' is missing or has the wrong "
                                   "shape or dtype")
        return tensors

    def batches(self, batch_size: int, epochs: int, rank: int = 0, world: int = 1,
                generator: Optional[torch.Generator] = None
                ) -> Iterator[Tuple[dict, Observations]]:
        """(latents, observations) batches on the current device, ``epochs`` times
        through this rank's shards."""
        from ..device import here
        steps = self.steps_per_epoch(batch_size, world)
        mine = self.of_rank(rank, world)
        lat, obs = self.model.latents, self.model.observed
        for _ in range(epochs):
            order = torch.randperm(len(mine), generator=generator).tolist()
            carry: Optional[Dict[str, torch.Tensor]] = None
            done = 0
            for i in order:
                data = self.load(mine[i])
                perm = torch.randperm(mine[i]["n"], generator=generator)
                data = {k: v[perm] for k, v in data.items()}
                if carry is not None:
                    data = {k: torch.cat([carry[k], data[k]]) for k in data}
                n = next(iter(data.values())).shape[0]
                start = 0
                while n - start >= batch_size and done < steps:
                    part = {k: here(v[start:start + batch_size]) for k, v in data.items()}
                    yield ({k: part[k] for k in lat}, Observations({k: part[k] for k in obs}))
                    start += batch_size
                    done += 1
                carry = {k: v[start:] for k, v in data.items()}
                if done == steps:
                    break
