"""The observation embedding: every observed variable, standardised with statistics of
prior simulations, becomes one vector per observation set.

* A flat MLP per observed variable (replaceable by a user ``nn.Module``).
* An observed variable defined in a plate (``observe y[i] ~ ...`` in an independent
  loop) also gets a permutation-invariant set embedding (DeepSets): the mean over its
  instances of a layer of the instance's elements and of the args it reads at the same
  index (covariates ``x[i]``), then a layer on that mean. Exchangeable data sets are summarised the way their
  posterior depends on them (sums over data points), whatever their size.
* A linear skip from the standardised observations to the hidden vector of every
  proposal, zero at the start: posterior locations are often close to linear in the
  data, and this path learns that part within a few steps.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn as nn

from ..frontend.checked import Checked
from ..middle.plan import Plan


def zero_linear(n_in, n_out):
    """A linear layer that starts at zero: a new path changes nothing until it learns."""
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def mlp(n_in, width):
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())


class ByName(nn.ModuleDict):
    """A ModuleDict keyed by the names of a spec's variables, whatever they are: the
    keys are stored with a prefix, so that a variable named ``training`` or
    ``parameters`` cannot collide with an attribute of ``nn.Module``."""

    PREFIX = "v_"

    def __getitem__(self, name):
        return super().__getitem__(self.PREFIX + name)

    def __setitem__(self, name, module):
        super().__setitem__(self.PREFIX + name, module)

    def __contains__(self, name):
        return super().__contains__(self.PREFIX + name)

    def keys(self):
        return [k[len(self.PREFIX):] for k in super().keys()]

    def items(self):
        return [(k[len(self.PREFIX):], v) for k, v in super().items()]

    def __iter__(self):
        return iter(self.keys())


def to_batch(x, M):
    """(1, ...) -> (M, ...) by broadcasting; (M, ...) as it is."""
    return x.expand((M,) + tuple(x.shape[1:])) if x.shape[0] == 1 else x


def plate_covariates(checked: Checked, graph, name: str) -> List[str]:
    """The args an observed variable in a plate reads at its own index: those among its
    parents (or its deterministic parents' parents) whose leading dims are its
    instances."""
    v = checked.vars[name]
    k = len(v.family_dims)
    parents = set(graph.predecessors(name))
    for p in list(parents):
        if checked.vars[p].kind == "deterministic":
            parents |= set(graph.predecessors(p))
    return sorted(p for p in parents if checked.vars[p].kind == "arg"
                  and tuple(checked.vars[p].type.shape[:k]) == tuple(v.family_dims)
                  and checked.vars[p].type.base == "real")


class ObservationEmbedding(nn.Module):
    def __init__(self, checked: Checked, plan: Plan, graph, config, user: Dict[str, nn.Module]):
        super().__init__()
        E = config.obs_embedding
        self.observed = list(plan.observed)
        self.shape = {n: tuple(checked.vars[n].type.shape) for n in self.observed}
        self.size = {n: int(math.prod(self.shape[n])) for n in self.observed}
        self.flat = ByName()
        for n in self.observed:
            self.flat[n] = user[n] if n in user else mlp(self.size[n], E)
            self.register_buffer(f"mean_{n}", torch.zeros(self.size[n]))
            self.register_buffer(f"std_{n}", torch.ones(self.size[n]))
        # set embeddings of observations in plates, with their covariates
        self.sets = ByName()
        self.instances: Dict[str, int] = {}
        S = config.set_embedding
        for n in self.observed if S else []:
            v = checked.vars[n]
            if not v.family_dims or v.is_family or math.prod(v.family_dims) < 2:
                continue
            n_inst = int(math.prod(v.family_dims))
            cov = [checked.args[a].to(torch.get_default_dtype()).reshape(n_inst, -1)
                   for a in plate_covariates(checked, graph, n)]
            cov = torch.cat(cov, -1) if cov else torch.zeros(n_inst, 0)
            if cov.shape[-1]:
                cov = (cov - cov.mean(0)) / cov.std(0).clamp(min=1e-6)
            self.register_buffer(f"cov_{n}", cov.unsqueeze(0))
            self.instances[n] = n_inst
            self.sets[n] = nn.ModuleList([nn.Linear(self.size[n] // n_inst + cov.shape[-1], S),
                                          nn.Linear(S, S)])
        with torch.no_grad():
            width = sum(self._flat(n, torch.zeros(1, self.size[n])).shape[1]
                        for n in self.observed) + S * len(self.sets)
        self.mix = nn.Sequential(nn.Linear(width, E), nn.ReLU())
        self.skip_names = [n for n in self.observed if n not in user] if config.obs_skip else []
        raw = sum(self.size[n] for n in self.skip_names)
        self.skip = zero_linear(raw, config.hidden) if raw else None

    def _flat(self, n, x):
        """x: (batch, size) standardised -> (batch, width): flattened, or, if that fails
        (a user's CNN, say), in the variable's own shape."""
        net = self.flat[n]
        try:
            e = net(x)
        except (RuntimeError, ValueError):
            e = net(x.reshape((x.shape[0],) + self.shape[n]))
        return e.reshape(e.shape[0], -1)

    @torch.no_grad()
    def fit(self, sims: Dict[str, torch.Tensor]):
        for n in self.observed:
            x = sims[n].reshape(sims[n].shape[0], -1).to(torch.get_default_dtype())
            getattr(self, f"mean_{n}").copy_(x.mean(0))
            getattr(self, f"std_{n}").copy_(x.std(0).clamp(min=1e-3))

    def standardise(self, obs) -> Dict[str, torch.Tensor]:
        out = {}
        for n in self.observed:
            x = obs[n].to(torch.get_default_dtype()).reshape(obs[n].shape[0], -1)
            out[n] = (x - getattr(self, f"mean_{n}")) / getattr(self, f"std_{n}")
        return out

    def forward(self, obs, M: int):
        """-> (the embedding (M, E), the skip (M, hidden) or None, the standardised
        observations {name: (1 or M, size)})."""
        raws = self.standardise(obs)
        parts = [self._flat(n, raws[n]) for n in self.observed]
        for n, net in self.sets.items():
            x = raws[n]
            elems = x.reshape(x.shape[0], self.instances[n], -1)
            cov = getattr(self, f"cov_{n}").expand(x.shape[0], -1, -1)
            # per instance one layer, then the mean, then a layer on the mean (a linear
            # map commutes with the mean, so it runs once per set, not per instance)
            pooled = torch.relu(net[0](torch.cat([elems, cov], -1))).mean(1)
            parts.append(torch.relu(net[1](pooled)))
        e = to_batch(self.mix(torch.cat(parts, -1)), M)
        if self.skip is None:
            return e, None, raws
        k = self.skip(torch.cat([raws[n] for n in self.skip_names], -1))
        return e, to_batch(k, M), raws
