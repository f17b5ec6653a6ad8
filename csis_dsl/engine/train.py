"""Online training of the proposal network on fresh simulations (inference compilation).

Each step draws one batch of joint traces from the model in one vectorised call and
minimises  mean over traces of  -sum log q(latent | observations)  over the sites present.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import List, Optional

import pyro
import torch
from tqdm.auto import tqdm

from ..backend.observations import Observations
from .flat import FlatParameters

VALIDATION_FLOOR = 1.0    # seconds of validation a call always allows (then at most
                          # as much as it has spent training)


@dataclass
class TrainingHistory:
    steps: List[int] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)
    val_steps: List[int] = field(default_factory=list)
    val_loss: List[float] = field(default_factory=list)
    val_ess: List[float] = field(default_factory=list)   # mean ESS/N, held-out sets
    traces_per_s: List[float] = field(default_factory=list)
    wall_time: List[float] = field(default_factory=list)
    traces: int = 0
    best_step: Optional[int] = None      # the state kept by keep_best
    interrupted: bool = False
    skipped: List[int] = field(default_factory=list)     # steps whose gradient was not finite

    def to_dict(self):
        return {k: getattr(self, k) for k in ("steps", "loss", "val_steps", "val_loss",
                                              "val_ess", "traces_per_s", "wall_time",
                                              "traces", "best_step", "skipped")}

    @classmethod
    def from_dict(cls, d):
        h = cls()
        for k, v in (d or {}).items():
            if k not in cls.__dataclass_fields__:
                continue
            if isinstance(getattr(h, k), list) and not (
                    isinstance(v, list) and all(isinstance(x, (int, float)) for x in v)):
                raise ValueError(f"'{k}' should be a list of numbers")
            setattr(h, k, v)
        return h

    def plot(self, path=None):
        """Training and validation loss, the validation ESS/N, and traces/s, per step (a
        matplotlib Figure; saved as an image when ``path`` is given)."""
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


OUTLIER_NATS = 1e4   # how far above the batch's median loss a trace's gradient is full


def bounded_mean(losses: torch.Tensor) -> torch.Tensor:
    """The mean of the traces' losses (B,), whose gradient counts each trace at most
    as a trace ``OUTLIER_NATS`` above the batch's median: beyond, its gradient is scaled
    down to that size (its value, and so the loss reported, unchanged).

    A vague prior's simulations reach where no proposal has a density worth the name:
    BUGS's seeds model (coefficients ~ N(0, 1000) on log-odds, a Gamma(0.001, 0.001)
    precision) has per-trace losses of 1e8 nats typically and 1e31 at worst, whose
    gradient's norm overflows float32 -- every batch was skipped, and training stopped
    as diverged at step 3. Where every trace is within 1e4 nats of the median (every
    model whose proposal is not absurdly far off), this is the plain mean."""
    if losses.numel() < 2:              # (its own median: the per-step overhead at B = 1)
        return losses.mean()
    d = losses.detach()
    finite = torch.isfinite(d)
    if not bool(finite.any()):
        return losses.mean()
    excess = d - d[finite].median()
    scale = OUTLIER_NATS / excess.clamp(min=OUTLIER_NATS)
    return torch.where(finite, d + scale * (losses - d), losses).mean()


class Trainer:
    """Holds the optimiser and the validation data so that training can continue.

    Validation measures two things on data held out from training: the loss on
    ``validation_size`` simulated traces, and the quality that matters, the ESS/N of
    importance sampling with the current proposal for ``quality_sets`` simulated
    observation sets (``quality_samples`` draws each, all in one batched call)."""

    quality_sets, quality_samples = 8, 128

    def __init__(self, model, lr: float, validation_size: int, seed: Optional[int],
                 group=None):
        from .distributed import LossModule
        self.model = model
        self.lr = lr
        self.group = group                     # a distributed.Group, or None
        self.lead = group is None or group.lead
        self.subsample = None                  # instances scored per site (None: all)
        # the loss as a module; in a distributed job, wrapped by DistributedDataParallel
        # from the first step of a run to its end (a wrapper left alive when the process
        # group is destroyed aborts the process at exit)
        self.loss = LossModule(model.guide)
        self.loss_module = self.loss
        self.shared = False           # whether rank 0's weights were given to every rank
        self.skips_in_a_row = 0       # batches in a row whose gradient was not finite
        # the network's parameters, listed once (walking its modules every step cost
        # 0.2 ms of a 4 ms step of the seed model)
        self.params = params = list(model.guide.parameters())
        # one flat tensor of all of them (flat.py): zeroing, clipping and Adam in one
        # operation each
        self.flat = FlatParameters(params) if FlatParameters.possible(params) else None
        self.opt = self._optimiser()
        self.history = TrainingHistory()
        if seed is not None:
            pyro.set_rng_seed(seed)
        if not self.lead:                      # rank 0 alone validates
            validation_size = 0
        self.validation = joint_batch(model, validation_size) if validation_size else None
        self.validation_size = validation_size
        self.held_out = None
        if validation_size:
            sims = model.pyro_model.simulate(self.quality_sets)
            S = self.quality_samples
            self.held_out = Observations({n: sims[n].repeat_interleave(S, 0)
                                          for n in model.observed})
        if group is not None and seed is not None:
            pyro.set_rng_seed(group.seed(seed))   # each rank its own stream from here
        self.best = None               # (mean validation ESS/N, step, state)

    def to(self, device):
        """Move the optimiser's state and the validation data to ``device`` (the
        network itself is moved by the model)."""
        for st in self.opt.state.values():
            for k, v in st.items():
                if torch.is_tensor(v):
                    st[k] = v.to(device)
        move = lambda d: {n: t.to(device) for n, t in d.items()}   # noqa: E731
        if self.validation is not None:
            self.validation = (move(self.validation[0]), Observations(move(self.validation[1])))
        if self.held_out is not None:
            self.held_out = Observations(move(self.held_out))
        if self.best is not None:
            self.best = (self.best[0], self.best[1], move(self.best[2]))

    def validation_loss(self) -> float:
        if self.validation is None:
            return float("nan")
        with torch.no_grad():
            return float(guide_loss(self.model, *self.validation, self.validation_size))

    @torch.no_grad()
    def validation_ess(self) -> float:
        """The mean ESS/N of importance sampling (with the defensive mixture inference
        uses) on the held-out observation sets."""
        if self.held_out is None:
            return float("nan")
        from .posterior import batched_importance, ess_of
        from .seeding import seeded
        Q, S = self.quality_sets, self.quality_samples
        with seeded(1234):      # the same draws' randomness at every validation
            _, log_w = batched_importance(self.model, self.model.guide, self.held_out, Q, S)
        ess = ess_of(log_w)
        return float((ess / S).mean())

    def validate(self, step):
        h = self.history
        h.val_steps.append(step)
        h.val_loss.append(self.validation_loss())
        h.val_ess.append(self.validation_ess())
        if h.val_ess[-1] == h.val_ess[-1] and (self.best is None or h.val_ess[-1] > self.best[0]):
            state = {k: v.detach().clone() for k, v in self.model.guide.state_dict().items()}
            self.best = (h.val_ess[-1], step, state)

    # A heavy-tailed prior simulates now and then a trace no proposal can score in
    # float32 (the pumps model: beta ~ Gamma(0.1, 1) near 1e-15, counts near 1e16, whose
    # Laplace fit is a component of scale 1e-13: its density's derivative overflows and
    # one trace in 50 000 turns the batch's gradient to NaN). Such a batch is skipped
    # (no update; all ranks see the same averaged gradient, so all skip it); a run of
    # MAX_SKIPS of them is divergence.
    MAX_SKIPS = 3

    def skip(self, step, loss, good):
        """The gradient of batch ``step`` is not finite: no update, or, the
        ``MAX_SKIPS``-th time in a row, divergence (:meth:`diverged`)."""
        self.skips_in_a_row += 1
        self.history.skipped.append(step)
        if self.skips_in_a_row >= self.MAX_SKIPS:
            self.skips_in_a_row = 0
            self.diverged(step, loss, good)

    def diverged(self, step, loss, good):
        """The loss or its gradient is not finite: put back the last good state (and a
        fresh optimiser) and say what to change."""
        from ..errors import TrainingError
        self.model.guide.load_state_dict(good[1])
        if self.flat is not None:
            self.flat.linked(self.opt)
        self.opt = self._optimiser()
        raise TrainingError(
            f"training diverged at step {step}: the loss is {loss} (or its gradient is not "
            f"finite, {self.MAX_SKIPS} batches in a row); the network is back at its state "
            f"of step {good[0]}. Lower the "
            f"learning rate (lr={self.lr:g} now) or check that the model's densities stay "
            "finite")

    def _optimiser(self):
        """Adam over the flat parameter, or the parameters. The fused kernel updates
        them in one call (several times faster than the per-tensor loop for a network of
        this size); it needs float dense tensors on the CPU or a GPU."""
        params = [self.flat.param] if self.flat is not None else self.params
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                    for p in params)
        return torch.optim.Adam(params, lr=self.lr, fused=fused or None)

    def restore_best(self):
        """Put back the network state with the best validation ESS/N."""
        if self.best is not None:
            self.model.guide.load_state_dict(self.best[2])
            self.history.best_step = self.best[1]

    def step(self, latents, obs, B: int, clip: float, good, number: int = 0,
             meanwhile=None) -> float:
        """One update on one batch (in a distributed job, on the mean gradient over
        every rank's batch): the batch's loss (the mean over the ranks). ``meanwhile``:
        what to do while the ranks average their gradients (simulate the next batch);
        in one process, or through DistributedDataParallel, after the update."""
        flat, group = self.flat, self.group
        if group is not None and flat is None and self.loss_module is self.loss:
            self.loss_module = group.wrap(self.loss, self.model.device)
        if flat is not None:
            flat.linked(self.opt)
            if group is not None and not self.shared:
                group.share(self.loss, flat.param)
                self.shared = True
        loss = self.loss_module(latents, obs, B, self.subsample)
        if flat is None:
            self.opt.zero_grad()
            loss.backward()
            if group is not None:
                loss = group.mean(loss)
            norm = torch.nn.utils.clip_grad_norm_(self.params, clip, foreach=True)
        else:
            flat.zero_grad()
            loss.backward()
            flat.gathered()
            if group is not None:
                averaging = group.average(flat.param.grad, loss)
                if meanwhile is not None:
                    meanwhile()
                    meanwhile = None
                loss = averaging.wait()
            norm = flat.clip(clip)
        value = float(loss.detach())
        if not (math.isfinite(value) and torch.isfinite(norm)):
            self.skip(number, value, good)
            if meanwhile is not None:
                meanwhile()
            return value
        self.skips_in_a_row = 0
        self.opt.step()
        if meanwhile is not None:
            meanwhile()
        return value

    def run(self, num_steps, batch_size, lr_decay=None, clip=10.0, progress=True,
            validate_every=None, lr_tau=None, keep_best=False, batches=None):
        """``num_steps`` updates of ``batch_size`` traces each, from fresh simulations
        or, when given, from the iterator ``batches`` of (latents, observations)."""
        h = self.history
        # by default 20 validations a call, but no more of the time than the training
        # itself: a validation runs importance sampling on held-out sets, which for a
        # model with costly proposals (collapsed fits) is worth ten training steps
        budgeted = validate_every is None
        validate_every = validate_every or max(1, num_steps // 20)
        validating = 0.0           # seconds spent validating in this call
        world = self.group.world if self.group is not None else 1
        start_step = h.steps[-1] if h.steps else 0
        base_time = h.wall_time[-1] if h.wall_time else 0.0
        t0 = time.perf_counter()
        t_prev = t0
        bar = tqdm(range(num_steps), disable=not (progress and self.lead), desc="training",
                   unit="step", dynamic_ncols=True)
        ema = None
        # the next batch is simulated (or read) while the ranks average the gradients
        fetch = (lambda: joint_batch(self.model, batch_size)) if batches is None else \
            (lambda: next(batches))
        upcoming = []
        good = (start_step, {k: v.detach().clone() for k, v in self.model.guide.state_dict().items()})
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
                latents, obs = upcoming[0] if upcoming else fetch()
                upcoming.clear()
                value = self.step(latents, obs, batch_size, clip, good, start_step + i + 1,
                                  meanwhile=(lambda: upcoming.append(fetch()))
                                  if i + 1 < num_steps else None)
                now = time.perf_counter()
                step = start_step + i + 1
                h.steps.append(step)
                h.loss.append(value)
                tps = world * batch_size / max(now - t_prev, 1e-9)
                t_prev = now
                ema = tps if ema is None else 0.9 * ema + 0.1 * tps
                h.traces_per_s.append(ema)
                h.traces += world * batch_size
                h.wall_time.append(base_time + now - t0)
                due = (i + 1) % validate_every == 0 or i + 1 == num_steps
                if due and budgeted and i + 1 < num_steps and validating > max(
                        VALIDATION_FLOOR, now - t0 - validating):
                    due = False        # over its share of the time: the next one
                if self.lead and due:
                    t_val = time.perf_counter()
                    self.validate(step)
                    if h.val_loss[-1] == h.val_loss[-1]:     # finite: a good state
                        good = (step, {k: v.detach().clone()
                                       for k, v in self.model.guide.state_dict().items()})
                    bar.set_postfix(loss=f"{h.loss[-1]:.3f}", val=f"{h.val_loss[-1]:.3f}",
                                    ess=f"{h.val_ess[-1]:.2f}",
                                    best=f"{self.best[0]:.2f}" if self.best else "-",
                                    traces_s=f"{ema:.0f}")
                    validating += time.perf_counter() - t_val
        except KeyboardInterrupt:
            h.interrupted = True
        finally:
            bar.close()
            self.loss_module = self.loss
            self.shared = False
        skipped = [k for k in h.skipped if k > start_step]
        if skipped and self.lead:
            warnings.warn(
                f"{len(skipped)} of {len(h.steps) - start_step if h.steps else 0} training "
                f"batches were skipped (steps {', '.join(map(str, skipped[:5]))}"
                f"{', ...' if len(skipped) > 5 else ''}): their gradient was not finite, "
                "from prior simulations too extreme to score in float32 (a vague prior's "
                "far tail). Harmless when rare; if it is frequent, give the model "
                "weakly informative priors", RuntimeWarning, stacklevel=2)
        if keep_best:
            self.restore_best()
        return h
