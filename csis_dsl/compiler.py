"""Entry points: ``compile(path)`` / ``compile_string(text)`` -> :class:`CompiledModel`.

The phases (stanc3-style): parse (frontend.parser) -> check (frontend.checks) -> graph
(graph) -> Pyro model (backend). ``dump(phase)`` prints each phase's result.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

from .backend.pyro_model import PyroModel
from .backend.runtime import make_plans, unsupported
from .errors import CompileError, Diagnostic, ObservationError
from .frontend import checks, parser
from .graph import build_graph, summary, to_dot


class CompiledModel:
    """A compiled spec: ``.graph``, ``.pyro_model``, ``.guide``, ``.train``, ``.infer``,
    ``.save``."""

    def __init__(self, source: str, file: str, args: Optional[dict] = None):
        self.source = source
        self.file = file
        self.ast = parser.parse(source, file)
        self.checked = checks.check(self.ast, args)
        unsupported(self.checked)
        self.name = self.ast.name
        self.plans = make_plans(self.checked)
        self.plate_names = self._plate_names()
        self.graph = build_graph(self.checked)
        self.pyro_model = PyroModel(self)
        self.arg_overrides = dict(args or {})
        self._guide = None
        self._trainer = None
        self._stats_fitted = False
        self.history = None

    # ---------------------------------------------------------------- the guide
    def configure(self, config=None, obs_embeddings=None, **sizes):
        """(Re)build the proposal network: ``architecture``, ``hidden``,
        ``mixture_components``, ... or a whole ``NetworkConfig``; ``obs_embeddings``
        maps an observed variable to your own ``nn.Module`` embedding it."""
        from .proposals.guide import Guide
        from .proposals.network import NetworkConfig
        cfg = config or NetworkConfig(**sizes)
        self._guide = Guide(self, cfg, obs_embeddings)
        self._trainer = None
        self._stats_fitted = False
        self.history = None
        return self

    @property
    def guide(self):
        """The generated proposal network (a torch.nn.Module and a Pyro guide)."""
        if self._guide is None:
            self.configure()
        return self._guide

    def _fit_statistics(self, n=5000):
        if not self._stats_fitted:
            import pyro.poutine as poutine
            with poutine.block():   # may run inside a caller's handlers (pyro.infer.CSIS)
                sims = self.simulate(n)
            self.guide.net.fit_statistics(sims)
            self._stats_fitted = True

    def train(self, num_steps=1000, batch_size=512, lr=1e-2, seed=None, progress=True,
              validation_size=256, lr_decay=None, clip=10.0, validate_every=None,
              lr_tau=50):
        """Train the proposal network online on fresh simulations; calling again
        continues where it stopped. Returns the TrainingHistory.

        Adam's rate at step t of the whole training is ``lr / sqrt(1 + t / lr_tau)``
        (``lr_tau=None``: constant), times a decay within this call from 1 to
        ``lr_decay`` when that is given. Gradients are clipped to norm ``clip``."""
        from .engine.train import Trainer
        if seed is not None:   # torch, random and numpy
            import pyro
            pyro.set_rng_seed(seed)
        self._fit_statistics()
        if self._trainer is None:
            self._trainer = Trainer(self, lr, validation_size, seed)
        self._trainer.lr = lr
        self.history = self._trainer.run(num_steps, batch_size, lr_decay=lr_decay, clip=clip,
                                         lr_tau=lr_tau,
                                         progress=progress, validate_every=validate_every)
        return self.history

    def infer(self, observations, num_samples=1000, proposal="guide", seed=None):
        """Importance sampling with the trained guide (or the prior): a Posterior."""
        from .engine.posterior import importance
        if proposal == "guide":
            self._fit_statistics()
        return importance(self, observations, num_samples, proposal, seed)

    def check_observations(self, observations):
        """Raise ObservationError unless ``observations`` fit the model exactly (every
        observed variable, right shape, dtype and support); returns them as tensors."""
        from .backend.pyro_model import validate_observations
        return validate_observations(self.checked, observations, require_all=True)

    def save(self, path):
        from .engine.checkpoint import save
        save(self, path)

    # ---------------------------------------------------------------- facts
    @property
    def args(self) -> Dict[str, object]:
        return {n: (v.item() if v.dim() == 0 else v.tolist())
                for n, v in self.checked.args.items()}

    @property
    def latents(self):
        return [n for n in self.checked.order if self.checked.vars[n].kind == "latent"]

    @property
    def observed(self):
        return [n for n in self.checked.order if self.checked.vars[n].kind == "observed"]

    @property
    def deterministic(self):
        return [n for n in self.checked.order
                if self.checked.vars[n].kind == "deterministic"]

    def _plate_names(self):
        loops = list(self.checked.loops.values())
        counts = {}
        for l in loops:
            counts[l.var] = counts.get(l.var, 0) + 1
        return {id(l.stmt): (l.var if counts[l.var] == 1 else f"{l.var}_{l.span.line}")
                for l in loops}

    def resolve_runtime_args(self, overrides) -> Dict[str, torch.Tensor]:
        args = dict(self.checked.args)
        for name, value in (overrides or {}).items():
            v = self.checked.vars.get(name)
            if v is None or v.kind != "arg":
                raise ObservationError(f"'{name}' is not an arg of model {self.name}; its "
                                       f"args are {list(self.checked.args)}")
            if v.type.base != "real":
                new = checks.Checker(self.ast, {}).convert_arg(name, v.type, value, v.span)
                if not torch.equal(new, args[name]):
                    raise ObservationError(
                        f"arg '{name}' ({v.type}) fixes the model's structure; recompile "
                        f"with compile(..., args={{'{name}': {value!r}}}) to change it")
                continue
            args[name] = checks.Checker(self.ast, {}).convert_arg(name, v.type, value, v.span)
        return args

    # ---------------------------------------------------------------- running
    def simulate(self, num_traces: int, seed: Optional[int] = None, **args):
        """Draw ``num_traces`` joint samples in one vectorised call: a dict from every
        variable name to a tensor of shape (num_traces, *shape)."""
        from .engine.seeding import seeded
        with torch.no_grad(), seeded(seed):
            out = self.pyro_model(num_traces=num_traces, **args)
        return {n: out[n].expand((num_traces,) + tuple(out[n].shape[1:]))
                for n in self.checked.order}

    def log_joint(self, values: Dict[str, object], **args) -> torch.Tensor:
        """log p(values) of one complete assignment (latents and observations)."""
        import pyro.poutine as poutine
        latents = {k: v for k, v in values.items() if k in self.latents}
        obs = {k: v for k, v in values.items() if k in self.observed}
        from .backend.pyro_model import to_tensor
        cond = {k: to_tensor(v, k).to(torch.get_default_dtype()) if
                self.checked.vars[k].type.base == "real" else to_tensor(v, k)
                for k, v in latents.items()}
        tr = poutine.trace(poutine.condition(self.pyro_model, data=cond)).get_trace(
            observations=obs, **args)
        return tr.log_prob_sum()

    def dump(self, phase: str) -> str:
        """Text of one compiler phase: 'ast', 'checked', 'graph', 'dot' or 'pyro'."""
        if phase == "ast":
            return repr(self.ast)
        if phase == "checked":   # the middle IR: the checked symbol table, in order
            lines = []
            for n in self.checked.order:
                v = self.checked.vars[n]
                lines.append(f"{v.kind:<13} {n}: {v.type}"
                             + (f" ~ {v.dist}" if v.dist else "")
                             + (f", support {v.support}" if v.support is not None else "")
                             + (f", family dims {list(v.family_dims)}" if v.family_dims else "")
                             + (", conditional" if v.conditional else "")
                             + (f", reads {sorted(v.reads)}" if v.reads else "")
                             + (f", controlled by {sorted(v.control)}" if v.control else ""))
            return "\n".join(lines)
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
        raise ValueError(f"unknown phase {phase!r}; one of ast, checked, graph, dot, pyro")

    def __repr__(self):
        return (f"<CompiledModel {self.name}: latents {self.latents}, "
                f"observed {self.observed}>")


def compile_string(text: str, name: Optional[str] = None, args: Optional[dict] = None):
    return CompiledModel(text, name or "<string>", args)


def compile(path, args: Optional[dict] = None) -> CompiledModel:  # noqa: A001
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise CompileError([Diagnostic(None, f"cannot read spec '{path}': "
                                       f"{err.strerror or err}")]) from None
    return CompiledModel(text, str(path), args)
