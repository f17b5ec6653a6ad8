"""The compiled model as a plain Pyro model, ``pyro_model(observations=None, **args)``,
and its vectorised simulation. Built from the checked program and its plan alone."""
from __future__ import annotations

import math
from typing import Dict, Optional

import pyro
import torch
from pyro.poutine.runtime import am_i_wrapped

from ..device import CPU, current, here, on
from ..frontend.args import resolve_runtime_args
from ..frontend.checked import Checked
from ..errors import ModelRuntimeError
from ..middle.plan import Plan
from .handlers import Scorer, SiteHandler
from .interpreter import Runtime
from .observations import Observations
from .pyro_sites import Layout, PyroSites


class Env(dict):
    """Every variable's value (B, *shape); ``.exists`` masks conditional elements."""
    exists: dict


def env_of(stored) -> Env:
    out = Env({n: s.t for n, s in stored.items()})
    out.exists = {n: s.exists for n, s in stored.items() if s.exists is not None}
    return out


class PyroModel:
    """``model(observations=None, **args)``: a plain Pyro model of the spec.

    Called plainly it runs one trace with the spec's shapes. ``num_traces=B`` runs B
    independent traces at once inside a ``_traces`` plate. It returns every variable's
    value (an :class:`Env`).
    """

    def __init__(self, checked: Checked, plan: Plan):
        self.checked, self.plan = checked, plan
        self.__name__ = checked.program.name
        self.device = CPU           # set by CompiledModel.to
        self._args_on = None        # (device, the compiled args there)
        self._warned = False        # of traces simulation drew again

    def args(self, overrides=None) -> Dict[str, torch.Tensor]:
        """The arg values for one run, on the current device (the compiled ones are
        copied there once, not at every run)."""
        dev = current()
        if not overrides:
            if self._args_on is None or self._args_on[0] != dev:
                self._args_on = (dev, {n: v.to(dev) for n, v in self.checked.args.items()})
            return dict(self._args_on[1])
        return {n: v.to(dev) for n, v in resolve_runtime_args(self.checked, overrides).items()}

    def __call__(self, observations=None, num_traces: Optional[int] = None, **args) -> Env:
        with on(self.device):
            return self._call(observations, num_traces, **args)

    def _call(self, observations=None, num_traces: Optional[int] = None, **args) -> Env:
        obs = None if observations is None else \
            Observations.of(self.checked, observations, batch=num_traces, require_all=False)
        layout = Layout(self.plan, num_traces or 1, num_traces is not None)
        # Under Pyro's handlers the latents may come from outside (NUTS, conditioning):
        # values that make a parameter illegal are then a trace of density zero, a
        # factor of -inf, not an error. Run on its own, the model draws its own values,
        # and an illegal parameter is the model's bug (a located ModelRuntimeError).
        wrapped = am_i_wrapped()
        rt = Runtime(self.checked, self.plan, layout.B, PyroSites(layout, obs),
                     self.args(args), strict=not wrapped)
        with layout.traces_plate():
            env = env_of(rt.run())
            if wrapped and bool(rt.invalid.any()):
                dead = torch.where(rt.invalid, torch.full(rt.invalid.shape, -math.inf),
                                   torch.zeros(rt.invalid.shape))
                dead = dead.reshape((layout.B,) + (1,) * layout.D) if layout.batched \
                    else dead.sum()
                pyro.factor("_zero_density", dead)
        return env

    # The share of prior simulations that may compute an illegal parameter (a
    # covariance that is not positive definite in float32, a scale that underflows to
    # 0) before it is the model's fault rather than a rare numerical accident; judged
    # over at least ``judged_over`` draws, so that one bad trace of a few is no verdict.
    tolerated = 0.01
    judged_over = 1024

    def simulate(self, num_traces: int, **args) -> Dict[str, torch.Tensor]:
        """``num_traces`` joint samples in one vectorised call, without Pyro: every
        variable as a tensor (num_traces, *shape), on the model's device.

        A trace whose values make a parameter illegal has density zero under the model
        (that is how scoring and inference treat it), so it is dropped and drawn again,
        with a warning that names the statement, as long as such traces are rare (at
        most ``tolerated`` of them: numerical accidents of float32 in the far tails).
        More than that is the model's bug: a :class:`ModelRuntimeError` naming the
        statement. The share is judged over at least ``judged_over`` draws: a batch
        smaller than that which drops a trace draws its replacements from a round of
        that size (a batch of 1 at a 0.1% accident is no error)."""
        with torch.no_grad(), on(self.device):
            parts, have, drawn, dropped, problem = [], 0, 0, 0, None
            for _ in range(20):      # each round draws what the ones before dropped
                need = num_traces - have
                n = need if not dropped else max(need, self.judged_over - drawn, 1)
                rt = Runtime(self.checked, self.plan, n, SiteHandler(), self.args(args),
                             strict=False)
                env = rt.run()
                values = {k: env[k].t.expand((n,) + tuple(env[k].t.shape[1:]))
                          for k in self.checked.order}
                bad = int(rt.invalid.sum())
                drawn += n
                if bad:
                    problem = problem or rt.problem
                    dropped += bad
                    keep = ~rt.invalid
                    values = {k: v[keep] for k, v in values.items()}
                if dropped > self.tolerated * max(drawn, self.judged_over):
                    if drawn >= self.judged_over:
                        raise self._fault(problem, dropped, drawn)
                    continue            # too few draws to judge: draw a full round
                values = {k: v[:need] for k, v in values.items()}
                parts.append(values)
                have += min(n - bad, need)
                if have >= num_traces:
                    break
            else:
                raise self._fault(problem, dropped, drawn)
        if dropped:
            self._warn_dropped(problem, dropped, drawn)
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in self.checked.order}

    @staticmethod
    def _fault(problem, bad, n):
        return ModelRuntimeError(f"{problem.message}, which fails in {bad} of {n} "
                                 "simulated trace(s)", problem.span, problem.source)

    def _warn_dropped(self, problem, bad, n):
        import warnings
        if self._warned:
            return
        self._warned = True
        warnings.warn(f"{problem.span}: {problem.message} in {bad} of {n} prior "
                      "simulations: those traces have density zero under the model and "
                      "were drawn again (rare numerical accidents are expected in float32; "
                      "if it keeps happening, check the statement)", RuntimeWarning,
                      stacklevel=3)

    EXTREME = 1e30        # beyond float32's range by a factor of 1e8 at most either way
    TOO_VAGUE = 0.05      # the share of a latent's draws out there that earns a warning

    def warn_extreme(self, sims):
        """Warn, naming the statement, of each continuous latent whose prior simulations
        (``sims``, as :meth:`simulate` returns them) fall beyond 1e30 or, not zero,
        within 1e-30 of it in more than 5% of their elements: a prior too vague to
        simulate in float32 (BUGS's Gamma(0.001, 0.001) precision draws 90% of its
        values below 1e-38, which the sampler returns as 1.2e-38; a N(0, 1000)
        coefficient on the log-odds saturates every probability). What the network
        learns from such simulations says nothing about real data: the program's own
        proposal and refinement carry the inference, and the training loss reaches
        1e8 nats and more."""
        import warnings
        for name in self.checked.order:
            v = self.checked.vars[name]
            if v.kind == "observed" or v.discrete or name not in sims:
                continue
            x = sims[name].detach().double().abs().reshape(-1)
            if not x.numel():
                continue
            share = float(((x >= self.EXTREME) | ((x > 0) & (x <= 1 / self.EXTREME))).double().mean())
            if share > self.TOO_VAGUE:
                warnings.warn(
                    f"{v.stmts[0].span}: {share:.0%} of the prior draws of '{name}' are "
                    "beyond 1e30 or within 1e-30 of zero, out of float32's range: its prior "
                    "(or one it depends on) is too vague to simulate, so training learns "
                    "little from the simulations and the posterior rests on the proposal's "
                    "fits to the data. Give it a weakly informative prior (a scale: "
                    "HalfNormal on the sd rather than Gamma(0.001, 0.001) on the precision; "
                    "a coefficient: Normal(0, 2.5) on standardised predictors)",
                    RuntimeWarning, stacklevel=4)

    def score(self, num_traces: int, observations=None, values=None, **args):
        """One vectorised run without Pyro: latents from ``values`` (sampled from the
        prior where not given), observed variables from ``observations``. Returns
        (log p of the latents (B,), log p of the observations (B,), the :class:`Env`);
        given latents that make a parameter illegal have log p = -inf."""
        with on(self.device):
            return self._score(num_traces, observations, values, **args)

    def _score(self, num_traces, observations, values, **args):
        if values is not None:
            values = {n: here(v) for n, v in values.items()}
        if observations is not None:
            observations = Observations.of(self.checked, observations, batch=num_traces,
                                           require_all=False)
        scorer = Scorer(num_traces, observations, values)
        rt = Runtime(self.checked, self.plan, num_traces, scorer, self.args(args),
                     strict=values is None)
        env = env_of(rt.run())
        # a trace whose given latents make a parameter illegal has density zero
        dead = torch.where(rt.invalid, torch.full_like(scorer.log_latent, -float("inf")),
                           torch.zeros_like(scorer.log_latent))
        return scorer.log_latent + dead, scorer.log_observed, env
