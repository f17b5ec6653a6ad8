"""Online training of the proposal network on fresh simulations (inference compilation).

Each step draws one batch of joint traces from the model in one vectorised call and
minimises  mean over traces of  -sum log q(latent | observations)  over the sites present.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List, Optional

import pyro
import torch
from tqdm.auto import tqdm

from ..backend.observations import Observations


@dataclass
class TrainingHistory:
    steps: List[int] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    val_steps: List[int] = field(default_factory=list)
    val_loss: List[float] = field(default_factory=list)
    traces_per_s: List[float] = field(default_factory=list)
    wall_time: List[float] = field(default_factory=list)
    traces: int = 0
    interrupted: bool = False

    def to_dict(self):
        return {k: getattr(self, k) for k in ("steps", "loss", "val_steps", "val_loss",
                                              "traces_per_s", "wall_time", "traces")}

    @classmethod
    def from_dict(cls, d):
        h = cls()
        for k, v in (d or {}).items():
            setattr(h, k, v)
        return h

    def plot(self, path=None):
        """Training and validation loss, and traces/s, per step (a matplotlib Figure;
        saved as an image when ``path`` is given)."""
        from ..plots import plot_history
        return plot_history(self, path=path)


def joint_batch(model, B: int):
    """B joint traces from the prior, in one vectorised run (no Pyro trace): (the
    latents {name: (B, ...)}, the observations)."""
    sims = model.pyro_model.simulate(B)
    return ({n: sims[n] for n in model.latents},
            Observations({n: sims[n] for n in model.observed}))


def guide_loss(model, latents, obs, B: int) -> torch.Tensor:
    """The inference-compilation loss: the mean over traces of -log q(latents | obs)."""
    return -model.guide.log_q(obs, latents, B).mean()


class Trainer:
    """Holds the optimiser and validation batch so that training can continue."""

    def __init__(self, model, lr: float, validation_size: int, seed: Optional[int]):
        self.model = model
        self.lr = lr
        params = list(model.guide.parameters())
        # the fused kernel updates all parameters in one call (several times faster than
        # the per-tensor loop for a network of this size); it needs float dense tensors
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                    for p in params)
        self.opt = torch.optim.Adam(params, lr=lr, fused=fused or None)
        self.history = TrainingHistory()
        if seed is not None:
            pyro.set_rng_seed(seed)
        self.validation = joint_batch(model, validation_size) if validation_size else None
        self.validation_size = validation_size

    def validation_loss(self) -> float:
        if self.validation is None:
            return float("nan")
        with torch.no_grad():
            return float(guide_loss(self.model, *self.validation, self.validation_size))

    def run(self, num_steps, batch_size, lr_decay=None, clip=10.0, progress=True,
            validate_every=None, lr_tau=None):
        h = self.history
        validate_every = validate_every or max(1, num_steps // 20)
        start_step = h.steps[-1] if h.steps else 0
        base_time = h.wall_time[-1] if h.wall_time else 0.0
        t0 = time.perf_counter()
        t_prev = t0
        bar = tqdm(range(num_steps), disable=not progress, desc="training", unit="step",
                   dynamic_ncols=True)
        ema = None
        try:
            for i in bar:
                # the rate: lr / sqrt(1 + steps so far / lr_tau) over the whole training
                # (it carries on across calls), times an optional decay within this call
                # to lr_decay of its start
                rate = self.lr
                if lr_tau:
                    rate = rate / math.sqrt(1.0 + (start_step + i) / lr_tau)
                if lr_decay:
                    rate = rate * lr_decay ** (i / max(num_steps, 1))
                for g in self.opt.param_groups:
                    g["lr"] = rate
                latents, obs = joint_batch(self.model, batch_size)
                loss = guide_loss(self.model, latents, obs, batch_size)
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.guide.parameters(), clip, foreach=True)
                self.opt.step()
                now = time.perf_counter()
                step = start_step + i + 1
                h.steps.append(step)
                h.loss.append(float(loss.detach()))
                tps = batch_size / max(now - t_prev, 1e-9)
                t_prev = now
                ema = tps if ema is None else 0.9 * ema + 0.1 * tps
                h.traces_per_s.append(ema)
                h.traces += batch_size
                h.wall_time.append(base_time + now - t0)
                if (i + 1) % validate_every == 0 or i + 1 == num_steps:
                    h.val_steps.append(step)
                    h.val_loss.append(self.validation_loss())
                    bar.set_postfix(loss=f"{h.loss[-1]:.3f}", val=f"{h.val_loss[-1]:.3f}",
                                    traces_s=f"{ema:.0f}")
        except KeyboardInterrupt:
            h.interrupted = True
        finally:
            bar.close()
        return h
