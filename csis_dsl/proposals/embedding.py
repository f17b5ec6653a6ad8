"""The observation embedding: every observed variable, standardised with robust
statistics of prior simulations (squashed far outside them, :mod:`.standardise`), becomes
one vector per observation set.

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
from torch.utils.checkpoint import checkpoint

from ..frontend.checked import Checked
from ..middle.plan import Plan
from .standardise import robust_statistics, squash


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


# rows of (sets x instances) one chunk of a set embedding's instance layer holds: small
# enough that its activations stay in the cache, large enough to amortise the call
POOL_CHUNK = 8192


def _relu_sum(layer, x):
    return torch.relu(narrow_linear(layer, x)).sum(1)


def narrow_linear(layer, x):
    """``layer(x)``; for a few inputs per row as broadcast products (a matrix product
    with an inner dimension of 1 or 2 is several times slower on the CPU)."""
    if layer.in_features > 2:
        return layer(x)
    out = layer.bias
    for k in range(layer.in_features):
        out = out + x[..., k:k + 1] * layer.weight[:, k]
    return out


class _SortedHinges(torch.autograd.Function):
    """mean_i relu(w_s x_i + b_s) for scalar data x_i (one per instance), exactly, from
    the sorted data: the instances where a hinge is active are those beyond its knot
    t_s = -b_s / w_s (above it for w_s > 0, below for w_s < 0, all or none for w_s = 0),
    so the mean is (w_s * their sum + b_s * their number) / n, and its gradient in
    (w_s, b_s) is (their sum, their number) / n -- what autograd gives through the relu.
    A search per hinge instead of a product per instance and hinge."""

    @staticmethod
    def forward(ctx, xs, csum, w, b):
        """xs (sets, n) sorted, csum (sets, n + 1) its cumulative sums from 0 (float64);
        w, b (S,) -> (sets, S)."""
        n = xs.shape[1]
        knots = torch.where(w != 0, -b / w, torch.zeros_like(w)).to(xs.dtype)
        knots = knots.expand(xs.shape[0], -1).contiguous()
        above = torch.searchsorted(xs, knots, right=True)      # first x > knot
        below = torch.searchsorted(xs, knots, right=False)     # first x >= knot
        total = csum[:, -1:]
        pos = (w > 0).unsqueeze(0)
        count = torch.where(pos, n - above, below).to(csum.dtype)
        sums = torch.where(pos, total - csum.gather(1, above), csum.gather(1, below))
        flat = (w == 0).unsqueeze(0)                           # relu(b_s) for every x
        on = (b > 0).unsqueeze(0).to(csum.dtype)
        count = torch.where(flat, on * n, count)
        sums = torch.where(flat, on * total, sums)
        ctx.save_for_backward(count, sums)
        ctx.n, ctx.dtype = n, w.dtype
        return ((w.double() * sums + b.double() * count) / n).to(xs.dtype)

    @staticmethod
    def backward(ctx, g):
        count, sums = ctx.saved_tensors
        g = g.double() / ctx.n
        return None, None, (g * sums).sum(0).to(ctx.dtype), (g * count).sum(0).to(ctx.dtype)


def sorted_rows(x):
    """Each row of x (sets, n) sorted. On the CPU through numpy, whose sort of a few
    hundred thousand floats is some 30x faster than torch's there."""
    if x.device.type == "cpu":
        import numpy as np
        return torch.from_numpy(np.sort(x.detach().numpy(), 1))
    return x.sort(1).values.contiguous()


def pooled_layer(layer, x):
    """The mean over instances of relu(layer(x)), x (sets, instances, width). For scalar
    data (width 1, the usual plate of observations without covariates) it is computed
    exactly from the sorted data (:class:`_SortedHinges`); otherwise in chunks of
    instances, each recomputed in the backward pass (activation checkpointing), so that
    the (sets x instances x width) activations of a large data set are never held in
    memory at once -- on the CPU the traffic to memory, not the arithmetic, is what
    made this layer cost most of a training step."""
    n = x.shape[1]
    if x.shape[-1] == 1 and n > 16 and not x.requires_grad:
        xs = sorted_rows(x[..., 0])
        csum = torch.nn.functional.pad(xs.double().cumsum(1), (1, 0))
        return _SortedHinges.apply(xs, csum, layer.weight[:, 0], layer.bias)
    c = max(1, POOL_CHUNK // max(x.shape[0], 1))
    if n <= c:
        return torch.relu(narrow_linear(layer, x)).mean(1)
    grad = torch.is_grad_enabled()
    total = 0.0
    for i in range(0, n, c):
        xc = x[:, i:i + c]
        total = total + (checkpoint(_relu_sum, layer, xc, use_reentrant=False) if grad
                         else _relu_sum(layer, xc))
    return total / n


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
            centre, scale = robust_statistics(x)
            getattr(self, f"mean_{n}").copy_(centre)
            getattr(self, f"std_{n}").copy_(scale)

    def standardise(self, obs) -> Dict[str, torch.Tensor]:
        """Each observed variable in sds from the simulations' mean (:func:`.robust_statistics`:
        winsorised where their tails are heavy), not squashed: the distance
        :func:`~csis_dsl.engine.diagnostics.far_observations` reports."""
        out = {}
        for n in self.observed:
            x = obs[n].to(torch.get_default_dtype()).reshape(obs[n].shape[0], -1)
            out[n] = (x - getattr(self, f"mean_{n}")) / getattr(self, f"std_{n}")
        return out

    def forward(self, obs, M: int):
        """-> (the embedding (M, E), the skip (M, hidden) or None, the standardised
        observations {name: (1 or M, size)})."""
        raws = {n: squash(z) for n, z in self.standardise(obs).items()}
        parts = [self._flat(n, raws[n]) for n in self.observed]
        for n, net in self.sets.items():
            x = raws[n]
            elems = x.reshape(x.shape[0], self.instances[n], -1)
            cov = getattr(self, f"cov_{n}").expand(x.shape[0], -1, -1)
            # per instance one layer, then the mean, then a layer on the mean (a linear
            # map commutes with the mean, so it runs once per set, not per instance)
            pooled = pooled_layer(net[0], torch.cat([elems, cov], -1))
            parts.append(torch.relu(net[1](pooled)))
        e = to_batch(self.mix(torch.cat(parts, -1)), M)
        if self.skip is None:
            return e, None, raws
        k = self.skip(torch.cat([raws[n] for n in self.skip_names], -1))
        return e, to_batch(k, M), raws
