"""Data-parallel training on ``torch.distributed``.

Every rank simulates its own batch from its own seed stream; the gradients of the mean
loss are averaged over the ranks (gloo on the CPU, nccl on GPUs), so that each update is
the update of one process on the concatenated batch: by one all-reduce of the flat
gradient and the loss (:class:`Averaging`), during which the next batch is simulated,
or by ``DistributedDataParallel`` for a network whose parameters are not one tensor.
Rank 0 alone shows the progress bar, validates and writes the checkpoint.

The ranks come from the environment as ``torchrun`` sets it (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so ``torchrun --nnodes ... -m csis_dsl.cli train
...`` runs across machines; ``spawn(n, fn, ...)`` (``csis-dsl train --nproc N``) starts
N such processes on this machine, and stops them all, with the failed worker's error,
as soon as one fails.
"""
from __future__ import annotations

import atexit
import datetime
import gc
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from ..errors import TrainingError

SEED_STRIDE = 1_000_003      # rank r draws from seed + r * SEED_STRIDE
TIMEOUT = datetime.timedelta(minutes=10)
GRACE_S = 20.0               # after Ctrl-C, how long the workers get to stop by themselves


@dataclass(frozen=True)
class Group:
    """This process's place in the job."""
    rank: int
    world: int
    local_rank: int

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def seed(self, seed: Optional[int]) -> Optional[int]:
        """The seed of this rank's own stream."""
        return None if seed is None else seed + self.rank * SEED_STRIDE

    def device(self, device: torch.device) -> torch.device:
        """A CUDA job puts local rank i on GPU i."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" else device

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` under DistributedDataParallel (which also gives every rank rank
        0's weights and buffers now)."""
        import warnings
        from torch.nn.parallel import DistributedDataParallel
        ids = [device.index] if device.type == "cuda" else None
        # the buffers (standardisation statistics) are fixed once fitted: give every
        # rank rank 0's now, and not again before every forward (a collective per step)
        for b in module.buffers():
            dist.broadcast(b, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # its name is changing
            # some weights get no gradient in a step (the value embedding of the last
            # site, a conditional site absent from a batch): EveryWeight gives them a
            # zero one, instead of find_unused_parameters, whose search of the graph
            # each step cost 2 processes 0.2x of their speed-up (0.95-0.97x -> 1.13-1.18x
            # at batch 512, 1.32-1.39x -> 1.44-1.54x at 4096, seed model)
            return DistributedDataParallel(EveryWeight(module), device_ids=ids,
                                           broadcast_buffers=False)

    def share(self, module: nn.Module, flat: torch.Tensor):
        """Give every rank rank 0's weights (``flat``: all of them, one tensor) and
        buffers, as DistributedDataParallel does when it wraps a module."""
        for b in module.buffers():
            dist.broadcast(b, 0)
        dist.broadcast(flat.data, 0)

    def average(self, grad: torch.Tensor, loss: torch.Tensor) -> "Averaging":
        """Start averaging a flat gradient and the loss over the ranks (:class:`Averaging`)."""
        return Averaging(self, grad, loss)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over the ranks."""
        x = x.detach().clone()
        dist.all_reduce(x)
        return x / self.world


class Averaging:
    """The mean over the ranks of the gradient ``grad`` (all the network's, one flat
    tensor: :mod:`.flat`) and of the loss, in one all-reduce started when made, so that
    the process can simulate its next batch meanwhile; :meth:`wait` puts the mean
    gradient into ``grad`` and returns the mean loss.

    Why not DistributedDataParallel here: it needs a second collective for the loss,
    and waits for its all-reduce at the end of the backward pass. On this 2-core
    machine, gloo's all-reduce of the seed model's 24 000 gradients costs 0.6-0.8 ms of
    CPU and 1-1.4 ms of wall time, so 2 processes at batch 512 made 1.03-1.07x the
    traces/s of one through it; one collective overlapped with the simulation makes
    1.19-1.41x (1.46-1.77x at 4096; six runs of bench/bench_scale.py over two days).
    DistributedDataParallel still averages the gradients of a network whose parameters
    cannot be laid out in one tensor."""

    def __init__(self, group: Group, grad: torch.Tensor, loss: torch.Tensor):
        self.group, self.grad = group, grad
        self.buffer = torch.cat([grad.reshape(-1), loss.detach().reshape(1).to(grad.dtype)])
        self.work = dist.all_reduce(self.buffer, async_op=True)

    def wait(self) -> torch.Tensor:
        self.work.wait()
        self.buffer.div_(self.group.world)
        self.grad.copy_(self.buffer[:-1].view_as(self.grad))
        return self.buffer[-1]


def from_environment() -> Optional[Group]:
    """The job torchrun (or ``spawn``) described in the environment; None for a plain
    single process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    try:
        return Group(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)))
    except (KeyError, ValueError):
        raise TrainingError("WORLD_SIZE is set but RANK is not (or not a number): start "
                            "distributed training with torchrun or --nproc") from None


def join(group: Group, device: torch.device):
    """Join the process group (once): gloo on the CPU, nccl on GPUs."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, rank=group.rank, world_size=group.world,
                                timeout=TIMEOUT)
    except (RuntimeError, ValueError) as err:
        raise TrainingError(f"rank {group.rank} could not join the {backend} process "
                            f"group of {group.world}: {err}") from None
    # a script under torchrun never calls leave(): destroy the group at exit, before
    # the interpreter's teardown does (its threads left running abort the process);
    # not together (a rank may be exiting on an error while the others still train)
    atexit.register(leave, together=False)


def leave(together: bool = True):
    """Leave the process group. ``together``: first wait until every rank is leaving, so
    that none closes its connections while another's are still in use (gloo then
    aborts the other process at exit, intermittently: 'terminate called without an
    active exception'); not after a failure (the others may never leave)."""
    if not dist.is_initialized():
        return
    gc.collect()              # DistributedDataParallel wrappers in reference cycles
    if together:
        try:
            dist.barrier()
        except (RuntimeError, ValueError):      # a peer is gone already, or late
            pass
    dist.destroy_process_group()


class LossModule(nn.Module):
    """The training loss as a module's forward, so that DistributedDataParallel can
    wrap it: the mean over the batch of -log q(latents | observations)
    (:func:`.train.bounded_mean`)."""

    def __init__(self, guide):
        super().__init__()
        self.guide = guide

    def forward(self, latents, obs, B: int, subsample=None):
        from .train import bounded_mean
        return bounded_mean(-self.guide.log_q(obs, latents, B, subsample))


class EveryWeight(nn.Module):
    """``module``'s output plus zero times every weight: each weight then has a
    gradient in every step (zero where the step did not use it), as
    DistributedDataParallel without ``find_unused_parameters`` needs."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kw):
        out = self.module(*args, **kw)
        return out + 0.0 * torch.cat([p.reshape(-1) for p in self.module.parameters()]).sum()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(local_rank, world, port, threads, reports, fn, args):
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    try:
        fn(*args)
    except BaseException as err:
        # when one worker fails, the others then fail too (their peer is gone): say
        # when each failed, so that the first failure is the one reported
        report = {"time": time.monotonic(), "error": f"{type(err).__name__}: {err}"}
        with open(os.path.join(reports, f"{local_rank}.json"), "w") as f:
            json.dump(report, f)
        leave(together=False)            # the others may never get to leaving
        raise
    leave()


def _first_failure(reports):
    """(rank, message) of the worker that failed first, from their reports."""
    found = []
    for name in os.listdir(reports):
        try:
            with open(os.path.join(reports, name)) as f:
                r = json.load(f)
            found.append((r["time"], int(name.split(".")[0]), r["error"]))
        except (OSError, ValueError, KeyError):
            continue
    return min(found)[1:] if found else None


def spawn(nproc: int, fn, *args, threads: Optional[int] = None):
    """Run ``fn(*args)`` in ``nproc`` new processes forming one job on this machine.
    If a worker fails, the others are stopped and a TrainingError names the rank and
    its error."""
    import tempfile

    import torch.multiprocessing as mp
    threads = threads or max(1, (os.cpu_count() or 1) // nproc)
    with tempfile.TemporaryDirectory(prefix="csis_dsl-workers-") as reports:
        _run(mp, nproc, threads, reports, fn, args)


def _run(mp, nproc, threads, reports, fn, args):
    ctx = mp.spawn(_entry, args=(nproc, free_port(), threads, reports, fn, args),
                   nprocs=nproc, join=False)
    try:
        while not ctx.join():
            pass
    except KeyboardInterrupt:
        # Ctrl-C reaches the workers too: give them a moment to stop and let rank 0
        # write what was trained, then stop any that are still waiting for the others
        for p in ctx.processes:
            p.join(timeout=GRACE_S)
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
        raise
    except mp.ProcessRaisedException as err:
        for p in ctx.processes:          # let the others write their reports
            p.join(timeout=5)
        first = _first_failure(reports)
        if first is None:
            last = [ln for ln in str(err).strip().splitlines() if ln.strip()]
            first = (err.error_index, last[-1] if last else str(err))
        raise TrainingError(f"worker {first[0]} of {nproc} failed, so the run "
                            f"stopped: {first[1]}") from None
    except mp.ProcessExitedException as err:
        raise TrainingError(f"worker {err.error_index} of {nproc} exited with code "
                            f"{err.exit_code}, so the run stopped") from None
