"""Entry points: ``compile(path)`` / ``compile_string(text)`` -> :class:`CompiledModel`,
and ``load(path)``.

The phases (stanc3-style), each handing the next a typed result:
parse (``frontend.parser``) -> ``Program`` -> check (``frontend.statements``) ->
``Checked`` -> plan (``middle.plan``) -> ``Plan`` and graph (``middle.graph``) -> the
Pyro model (``backend``) and the proposal network (``proposals``). ``CompiledModel`` is
a thin facade that owns the user API; ``dump(phase)`` prints each phase's result.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Optional

import torch

from . import options as opt
from .backend.pyro_model import PyroModel
from .device import on, resolve
from .errors import CheckpointError, CompileError, Diagnostic, OptionError
from .frontend import parser
from .frontend.statements import check
from .middle.graph import build_graph, summary, to_dot
from .middle.plan import make_plan

PHASES = ("ast", "checked", "graph", "dot", "pyro")


def _on_device(method):
    """Run a method of the model on its device (after moving the model to
    ``device=...`` when the call gives one), outside torch's inference mode: a call
    made inside ``torch.inference_mode()`` would otherwise build the network's weights
    or fit its statistics as inference tensors, which no later training can use
    ("Inference tensors do not track version counter")."""
    @functools.wraps(method)
    def run(self, *a, **kw):
        if kw.get("device") is not None:
            self.to(kw["device"])
        with torch.inference_mode(False), on(self.device):
            return method(self, *a, **kw)
    return run


class CompiledModel:
    """A compiled spec: ``.graph``, ``.pyro_model``, ``.guide``, ``.train``, ``.infer``,
    ``.save``."""

    def __init__(self, source: str, file: str, args: Optional[dict] = None):
        self.source = source
        self.file = file
        self.ast = parser.parse(source, file)
        self.checked = check(self.ast, args)
        self.plan = make_plan(self.checked)
        self.name = self.ast.name
        self.graph = build_graph(self.checked)
        self.pyro_model = PyroModel(self.checked, self.plan)
        self._guide = None
        self._trainer = None
        self.history = None

    # ---------------------------------------------------------------- the guide
    def configure(self, config=None, obs_embeddings=None, **sizes):
        """(Re)build the proposal network: ``architecture``, ``hidden``,
        ``mixture_components``, ... or a whole ``NetworkConfig``; ``obs_embeddings``
        maps an observed variable to your own ``nn.Module`` embedding it."""
        from .proposals.guide import Guide
        from .proposals.network import NetworkConfig
        self._needs_a_proposal()
        try:
            cfg = config or NetworkConfig(**sizes)
        except TypeError as err:
            raise OptionError(f"configure: {err}; the settings are "
                              f"{', '.join(NetworkConfig.__dataclass_fields__)}") from None
        except ValueError as err:
            raise OptionError(f"configure: {err}") from None
        with torch.inference_mode(False):     # weights that training can use (_on_device)
            self._guide = Guide(self.pyro_model, self.graph, cfg, obs_embeddings).to(self.device)
        self._trainer = None
        self.history = None
        return self

    def _needs_a_proposal(self):
        """A proposal needs something to propose and something to condition on."""
        what = None
        if not self.latents:
            what = (f"model '{self.name}' has no latent variable, so there is nothing to "
                    "infer (every '~' without 'observe' is a latent); its simulate() and "
                    "log_joint() still work")
        elif not self.observed:
            what = (f"model '{self.name}' observes nothing, so there is no posterior to "
                    "learn (mark the data with 'observe'); simulate() still works")
        if what:
            raise CompileError([Diagnostic(self.ast.span, what)], self.source)

    @property
    def device(self) -> torch.device:
        """Where the model runs: its network's weights and every tensor it creates."""
        return self.pyro_model.device

    def to(self, device):
        """Move the model to ``device`` ("cpu", "cuda", "cuda:1", a torch.device): the
        network's weights, the optimiser's state and the held-out validation data;
        from then on everything it runs is made there. Returns the model."""
        dev = resolve(device)
        if dev == self.device:
            return self
        self.pyro_model.device = dev
        if self._guide is not None:
            self._guide.to(dev)
        if self._trainer is not None:
            self._trainer.to(dev)
        return self

    @property
    def guide(self):
        """The generated proposal network (a torch.nn.Module and a Pyro guide)."""
        if self._guide is None:
            self.configure()
        return self._guide

    @_on_device
    def train(self, num_steps=None, batch_size=512, lr=1e-2, seed=None, progress=True,
              validation_size=256, lr_decay=None, clip=10.0, validate_every=None,
              lr_tau=50, keep_best=False, device=None, dataset=None, epochs=1,
              plate_subsample=64):
        """Train the proposal network (``num_steps``, default 1000) on fresh
        simulations, or for ``epochs`` passes over an offline ``dataset`` folder written
        by ``simulate_to``; calling again continues where it stopped. Returns the
        TrainingHistory.

        Every ``validate_every`` steps it records the loss on held-out simulated traces
        and the ESS/N of importance sampling on held-out simulated observation sets
        (``history.val_ess``). By default that is 20 times a call and at the last step,
        but a validation is skipped while validating has taken more of the call's time
        than training (beyond its first second): with costly proposals (collapsed fits)
        one validation can cost ten steps; ``keep_best=True`` ends with
        the network state of the best such ESS/N over the whole training.
        ``device``: move the model there first (``to``).

        Adam's rate at step t of the whole training is ``lr / sqrt(1 + t / lr_tau)``
        (``lr_tau=None``: constant), times a decay within this call from 1 to
        ``lr_decay`` when that is given. Gradients are clipped to norm ``clip``.

        ``plate_subsample``: the loss of a site with more instances than this (a large
        plate, a long chain) is estimated, without bias, from that many of them drawn at
        random in each trace batch (each weighted by the ratio), so that a step's network
        cost does not grow with the data set's size (``None``: every instance).

        Started by ``torchrun`` (or ``csis-dsl train --nproc N``), it trains data-parallel:
        each rank its own batches (its own seed stream, its own shards of a dataset),
        gradients averaged over the ranks; rank 0 validates and shows the progress."""
        from .engine import distributed
        from .engine.train import Trainer
        if dataset is not None and num_steps is not None:
            raise OptionError("give num_steps (online training) or dataset= with epochs= "
                              "(offline training), not both")
        num_steps = opt.integer("num_steps", 1000 if num_steps is None else num_steps, 0)
        batch_size = opt.integer("batch_size", batch_size, 1)
        lr = opt.number("lr", lr)
        seed = opt.optional_integer("seed", seed)
        validation_size = opt.integer("validation_size", validation_size, 0)
        lr_decay = opt.optional_number("lr_decay", lr_decay, high=1.0)
        clip = opt.number("clip", clip)
        validate_every = opt.optional_integer("validate_every", validate_every, 1)
        lr_tau = opt.optional_number("lr_tau", lr_tau)
        epochs = opt.integer("epochs", epochs, 1)
        plate_subsample = opt.optional_integer("plate_subsample", plate_subsample, 1)
        group = distributed.from_environment()
        if group is not None:
            self.to(group.device(self.device))
            distributed.join(group, self.device)
        with on(self.device):
            batches = None
            if dataset is not None:
                from .engine.dataset import Dataset
                data = Dataset(dataset, self)
                rank, world = (group.rank, group.world) if group else (0, 1)
                num_steps = epochs * data.steps_per_epoch(batch_size, world)
                gen = None
                if seed is not None:
                    gen = torch.Generator().manual_seed(
                        group.seed(seed) if group else seed)
                batches = data.batches(batch_size, epochs, rank, world, gen)
            if seed is not None:   # torch, random and numpy
                import pyro
                pyro.set_rng_seed(seed)
            self.guide.fit_statistics()
            if self._trainer is None or self._trainer.group != group:
                self._trainer = Trainer(self, lr, validation_size, seed, group)
            elif group is not None and seed is not None:
                import pyro
                pyro.set_rng_seed(group.seed(seed))
            self._trainer.lr = lr
            self._trainer.subsample = plate_subsample
            self.history = self._trainer.run(num_steps, batch_size, lr_decay=lr_decay,
                                             clip=clip, lr_tau=lr_tau, progress=progress,
                                             validate_every=validate_every,
                                             keep_best=keep_best, batches=batches)
        return self.history

    @_on_device
    def simulate_to(self, folder, num_traces: int, shard_size: int = 100_000,
                    seed: Optional[int] = None, progress: bool = False):
        """Write ``num_traces`` joint traces of the model to ``folder`` as an offline
        dataset (shards of ``shard_size`` traces in the safetensors format, and an
        index), for ``train(dataset=folder, epochs=...)``. Returns the folder's Path."""
        from .engine import dataset
        from .engine.seeding import seeded
        num_traces = opt.integer("num_traces", num_traces, 1)
        shard_size = opt.integer("shard_size", shard_size, 1)
        seed = opt.optional_integer("seed", seed)
        with seeded(seed):
            return dataset.write(self, folder, num_traces, shard_size, progress)

    @_on_device
    def infer(self, observations, num_samples=1000, proposal="guide", seed=None,
              refine_steps=0, progress=False, defensive=0.1, device=None, program="auto"):
        """Importance sampling with the trained guide (or the prior): a Posterior.

        ``refine_steps=N`` first adapts a copy of the proposal to these observations
        (``refine``), then draws the samples from it. ``defensive``: that share of the
        traces comes from the proposals broadened (every scale doubled; the prior of a
        discrete site), the network's and the program's in the shares of the rest,
        which keeps the weights bounded where q is too narrow. ``program``: the share of
        the rest drawn from the program's own
        proposal (the priors, and the informed sites' exact local posteriors, Laplace
        fits and messages, with no network) instead of the trained network's; "auto"
        (the default) sets it by a pilot of 256 draws to what gives the most effective
        samples -- near 0 where the network learned these observations' posterior, more
        where they are unlike its training simulations and it extrapolates
        (``Posterior.mixture`` says what was used; a refined proposal, ``refine_steps``,
        is mixed with it the same way). The weights stay exact either way.
        ``device``: move the model there first (``to``); the Posterior's draws and
        weights are returned on the CPU."""
        from .engine.posterior import importance
        num_samples = opt.integer("num_samples", num_samples, 1)
        seed = opt.optional_integer("seed", seed)
        refine_steps = opt.integer("refine_steps", refine_steps, 0)
        defensive = opt.number("defensive", defensive, low_open=False, high=1.0, high_open=True)
        if program != "auto":
            try:
                program = opt.number("program", program, low_open=False, high=1.0)
            except OptionError as err:
                raise OptionError(f'{err} (or "auto")') from None
        if proposal not in ("guide", "prior"):
            raise OptionError(f"proposal must be 'guide' or 'prior', got {proposal!r}")
        if proposal == "guide":
            self.guide.fit_statistics()
        if refine_steps and proposal == "guide":
            return self.refine(observations, steps=refine_steps, seed=seed,
                               progress=progress).infer(num_samples, seed=seed,
                                                        defensive=defensive, program=program)
        return importance(self, observations, num_samples, proposal, seed,
                          defensive=defensive, program=program)

    @_on_device
    def refine(self, observations, steps=200, draws=256, lr=1e-3, seed=None,
               progress=False, max_seconds=None):
        """A copy of the proposal adapted to ``observations`` by importance-weighted
        (wake-phase) updates; ``.infer(num_samples)`` draws from it, ``.guide`` is the
        refined network, ``.ess`` the ESS of each step. The amortised network is
        unchanged."""
        from .engine.refine import refine
        steps = opt.integer("steps", steps, 0)
        draws = opt.integer("draws", draws, 2)
        lr = opt.number("lr", lr)
        seed = opt.optional_integer("seed", seed)
        max_seconds = opt.optional_number("max_seconds", max_seconds)
        self.guide.fit_statistics()
        return refine(self, observations, steps=steps, draws=draws, lr=lr, seed=seed,
                      progress=progress, max_seconds=max_seconds)

    @_on_device
    def calibrate(self, num_datasets=200, num_samples=1000, seed=None, num_ranks=100,
                  defensive=0.1, alpha=0.05):
        """Simulation-based calibration: simulate ``num_datasets`` data sets from the
        prior, infer each with ``num_samples`` importance samples (all in one network
        pass per chunk) and rank each true latent element among ``num_ranks`` draws of
        the weighted posterior and of the plain proposal. Returns a Calibration with
        the ranks, a KS uniformity test per element, the expected-coverage curves, a
        verdict per inference, ``.summary()`` and ``.plot(path)``."""
        from .engine.calibration import calibrate
        return calibrate(self, num_datasets, num_samples, seed, num_ranks, defensive, alpha)

    def check_observations(self, observations):
        """Raise ObservationError unless ``observations`` fit the model exactly (every
        observed variable, right shape, dtype and support); returns them as tensors."""
        from .backend.observations import Observations
        return dict(Observations.of(self.checked, observations, require_all=True))

    def save(self, path):
        """Write a checkpoint (atomically: the old file survives any failure)."""
        from .engine import checkpoint
        checkpoint.write(path, checkpoint.Checkpoint(
            name=self.name, file=self.file, source=self.source,
            args={n: v.clone() for n, v in self.checked.args.items()},
            config=self.guide.config.to_dict(),
            state_dict={k: v.cpu() for k, v in self.guide.state_dict().items()},
            history=self.history.to_dict() if self.history is not None else {}))

    # ---------------------------------------------------------------- facts
    @property
    def args(self) -> Dict[str, object]:
        return {n: (v.item() if v.dim() == 0 else v.tolist())
                for n, v in self.checked.args.items()}

    @property
    def latents(self):
        return list(self.plan.latents)

    @property
    def observed(self):
        return list(self.plan.observed)

    @property
    def deterministic(self):
        return list(self.plan.deterministic)

    # ---------------------------------------------------------------- running
    @_on_device
    def simulate(self, num_traces: int, seed: Optional[int] = None, **args):
        """Draw ``num_traces`` joint samples in one vectorised call: a dict from every
        variable name to a tensor of shape (num_traces, *shape)."""
        from .engine.seeding import seeded
        num_traces = opt.integer("num_traces", num_traces, 1)
        seed = opt.optional_integer("seed", seed)
        with seeded(seed):
            return self.pyro_model.simulate(num_traces, **args)

    @_on_device
    def log_joint(self, values: Dict[str, object], **args) -> torch.Tensor:
        """log p(values) of one complete assignment (latents and observations)."""
        import pyro.poutine as poutine
        from .backend.observations import to_tensor
        obs = {k: v for k, v in values.items() if k in self.observed}
        cond = {}
        for k, v in values.items():
            if k in self.latents:
                t = to_tensor(v, k)
                cond[k] = t.to(torch.get_default_dtype()) \
                    if self.checked.vars[k].type.base == "real" else t
        tr = poutine.trace(poutine.condition(self.pyro_model, data=cond)).get_trace(
            observations=obs, **args)
        return tr.log_prob_sum()

    def dump(self, phase: str) -> str:
        """Text of one compiler phase: 'ast', 'checked', 'graph', 'dot' or 'pyro'."""
        if phase == "ast":
            return repr(self.ast)
        if phase == "checked":   # the middle IR: the checked symbol table, in order
            return "\n".join(_checked_line(self.checked.vars[n]) for n in self.checked.order)
        if phase == "graph":
            return summary(self.graph)
        if phase == "dot":
            return to_dot(self.graph)
        if phase == "pyro":
            import pyro.poutine as poutine
            tr = poutine.trace(self.pyro_model).get_trace()
            return "\n".join(f"{n}: {type(s['fn']).__name__} value shape "
                             f"{tuple(s['value'].shape)}"
                             for n, s in tr.nodes.items() if s["type"] == "sample")
        raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")

    def __repr__(self):
        return (f"<CompiledModel {self.name}: latents {self.latents}, "
                f"observed {self.observed}>")


def _checked_line(v) -> str:
    return (f"{v.kind:<13} {v.name}: {v.type}"
            + (f" ~ {v.dist}" if v.dist else "")
            + (f", support {v.support}" if v.support is not None else "")
            + (f", family dims {list(v.family_dims)}" if v.family_dims else "")
            + (", conditional" if v.conditional else "")
            + (f", reads {sorted(v.reads)}" if v.reads else "")
            + (f", controlled by {sorted(v.control)}" if v.control else ""))


def _args_with_data(args, data):
    """Arg values from a data file (JSON or CSV, or a dict), then ``args`` over them."""
    if data is None:
        return args
    from .data import read_data
    merged = read_data(data)
    merged.update(args or {})
    return _FromData(merged, set(merged) - set(args or {}))


class _FromData(dict):
    """Arg values, knowing which came from a data file: a data file may also hold the
    observations (as Stan's do); the checker skips those names instead of refusing them."""

    def __init__(self, values, from_data):
        super().__init__(values)
        self.from_data = from_data


def compile_string(text: str, name: Optional[str] = None, args: Optional[dict] = None,
                   data=None):
    return CompiledModel(text, name or "<string>", _args_with_data(args, data))


def compile(path, args: Optional[dict] = None, data=None) -> CompiledModel:  # noqa: A001
    """Compile the spec at ``path``. ``args``: arg values (numbers, lists, numpy arrays,
    tensors); ``data``: a JSON or CSV file (or a dict) of arg values, which ``args``
    overrides. Int sizes left out (``arg int N;``) are read off the arrays they size."""
    from .files import read_text
    args = _args_with_data(args, data)

    class _Unreadable(Exception):
        pass
    try:
        text = read_text(path, "spec", _Unreadable)
    except _Unreadable as err:
        raise CompileError([Diagnostic(None, str(err))]) from None
    return CompiledModel(text, str(path), args)


def load(path, obs_embeddings=None, device=None) -> CompiledModel:
    """A model saved with ``CompiledModel.save``: the stages composed again from the
    stored spec and args, then the stored network and history, on ``device`` (default
    the CPU, whatever device it was trained on)."""
    from .engine import checkpoint
    from .engine.train import TrainingHistory
    from .proposals.network import NetworkConfig
    ckpt = checkpoint.read(path)
    try:
        model = CompiledModel(ckpt.source, ckpt.file, dict(ckpt.args))
    except CompileError as err:
        raise CheckpointError(f"{path}: the spec stored in the checkpoint no longer "
                              f"compiles:\n{err}") from None
    try:
        config = NetworkConfig(**ckpt.config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the network configuration in the checkpoint is not "
                              f"one this csis_dsl knows ({err})") from None
    try:
        model.configure(config, obs_embeddings=obs_embeddings)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the network configuration in the checkpoint "
                              f"cannot be built ({err})") from None
    try:
        model.guide.load_state_dict(ckpt.state_dict)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not match the network of its spec "
                              f"({str(err).splitlines()[0]})") from None
    try:
        model.history = TrainingHistory.from_dict(ckpt.history)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the training history in the checkpoint is not "
                              f"readable ({err})") from None
    return model.to(device) if device is not None else model
