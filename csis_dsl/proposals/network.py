"""The inference network generated from the graph (Le, Baydin & Wood 2017).

* observation embedding: one MLP per observed variable (inputs standardised with
  statistics of prior simulations; replaceable by a user ``nn.Module``), concatenated
  and mixed by a final layer;
* ``architecture="lstm"``: an LSTM over the latent *instances* in execution order; its
  input at each step is the observation embedding, an embedding of the previous
  instance's value, learned embeddings of the previous and current address and
  distribution type, and the loop position; one address embedding and one head per
  latent variable (statement), shared by all instances of a loop;
* ``architecture="feedforward"``: each head sees only the observation embedding, the
  address and the loop position (the mean-field variant);
* one proposal family per latent (see ``families/``), matched to the prior's support.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..catalogue.distributions import DISTRIBUTIONS
from ..frontend.checked import Checked
from ..middle.plan import Plan
from .families import LatentInfo, make_family

@dataclass
class NetworkConfig:
    architecture: str = "lstm"     # lstm | feedforward
    obs_embedding: int = 64
    value_embedding: int = 16
    address_embedding: int = 16
    dist_embedding: int = 4
    hidden: int = 64
    mixture_components: int = 5
    count_components: int = 3
    obs_skip: bool = True          # a linear path from the observations to every head
    obs_aligned: bool = True       # instance j of a loop also reads the observations at j

    def to_dict(self):
        return asdict(self)


class ProposalNetwork(nn.Module):
    def __init__(self, checked: Checked, plan: Plan, graph, config: NetworkConfig,
                 obs_embeddings: Optional[dict] = None):
        super().__init__()
        self.config = config
        ch = checked
        self.latents = [LatentInfo(i + 1, ch.vars[n]) for i, n in enumerate(plan.latents)]
        self.by_name = {l.name: l for l in self.latents}
        self.observed = list(plan.observed)
        C = config
        obs_embeddings = obs_embeddings or {}
        shape = {n: tuple(ch.vars[n].type.shape) for n in self.observed}
        size = {n: int(math.prod(shape[n])) for n in self.observed}
        self.obs_nets = nn.ModuleDict()
        for n in self.observed:
            if n in obs_embeddings:
                self.obs_nets[n] = obs_embeddings[n]
            else:
                self.obs_nets[n] = nn.Sequential(nn.Linear(size[n], C.obs_embedding), nn.ReLU(),
                                                 nn.Linear(C.obs_embedding, C.obs_embedding),
                                                 nn.ReLU())
            self.register_buffer(f"obs_mean_{n}", torch.zeros(size[n]))
            self.register_buffer(f"obs_std_{n}", torch.ones(size[n]))
        with torch.no_grad():
            widths = [self._embed(n, torch.zeros(1, size[n]), torch.zeros((1,) + shape[n]))
                      .shape[1] for n in self.observed]
        self.obs_mix = nn.Sequential(nn.Linear(sum(widths), C.obs_embedding), nn.ReLU())
        # The skip: a linear map from the standardised observations (those embedded by
        # the default MLP) straight to the hidden vector every head reads, zero at the
        # start. Posterior locations are often close to linear in the data; this path
        # learns that part in a few steps, and the deep path learns the rest.
        own_mlp = [n for n in self.observed if n not in obs_embeddings]
        self.skip_names = own_mlp if C.obs_skip else []
        raw = sum(size[n] for n in self.skip_names)
        self.obs_skip = _zero_linear(raw, C.hidden) if raw else None
        # Aligned observations, from the static graph: when a latent with instances
        # (c[i] in a loop, or h[t] of a sequential family) is a direct parent of an observed
        # variable whose leading dimensions are the latent's instances (y[i], y[t]), the
        # proposal for instance j also reads that variable's elements at j, through a
        # linear map into its step input and another into its head (both zero at the
        # start). Otherwise instance j would have to find y[j] inside the embedding of all
        # of y.
        self.aligned: Dict[str, list] = {}
        self.align_in = nn.ModuleDict()
        self.align_skip = nn.ModuleDict()
        for l in self.latents if C.obs_aligned else []:
            k = len(l.inst_shape)
            if l.n <= 1:
                continue
            names = [o for o in own_mlp if graph.has_edge(l.name, o)
                     and shape[o][:k] == l.inst_shape]
            if not names:
                continue
            width = sum(int(math.prod(shape[o][k:])) for o in names)
            self.aligned[l.name] = names
            self.align_in[l.name] = _zero_linear(width, C.obs_embedding)
            self.align_skip[l.name] = _zero_linear(width, C.hidden)
        n_addr = len(self.latents) + 1
        self.addr_emb = nn.Embedding(n_addr, C.address_embedding)
        self.dist_emb = nn.Embedding(len(DISTRIBUTIONS) + 1, C.dist_embedding)
        step_in = C.obs_embedding + 2 * C.address_embedding + 2 * C.dist_embedding + 2
        if C.architecture == "lstm":
            step_in += C.value_embedding
            self.core = nn.LSTM(step_in, C.hidden, batch_first=True)
        elif C.architecture == "feedforward":
            self.core = nn.Sequential(nn.Linear(step_in, C.hidden), nn.ReLU(),
                                      nn.Linear(C.hidden, C.hidden), nn.ReLU())
        else:
            raise ValueError(f"architecture must be 'lstm' or 'feedforward', "
                             f"got {C.architecture!r}")
        self.families = nn.ModuleDict({l.name: make_family(l, config) for l in self.latents})
        self.value_emb = nn.ModuleDict({l.name: nn.Linear(self.families[l.name].feat_dim,
                                                          C.value_embedding)
                                        for l in self.latents})

    def _embed(self, n, flat, full):
        """Observed variable n through its embedding: flattened (batch, size) or, if
        that fails (a user's CNN, say), in its own shape; -> (batch, width)."""
        net = self.obs_nets[n]
        try:
            e = net(flat)
        except (RuntimeError, ValueError):
            e = net(full)
        return e.reshape(e.shape[0], -1)

    # ---------------------------------------------------------------- statistics
    @torch.no_grad()
    def fit_statistics(self, sims: Dict[str, torch.Tensor]):
        """Standardisation statistics from prior simulations."""
        for n in self.observed:
            x = sims[n].reshape(sims[n].shape[0], -1).to(torch.get_default_dtype())
            getattr(self, f"obs_mean_{n}").copy_(x.mean(0))
            getattr(self, f"obs_std_{n}").copy_(x.std(0).clamp(min=1e-3))
        for l in self.latents:
            x = sims[l.name].to(torch.get_default_dtype())
            self.families[l.name].fit(x.reshape(x.shape[0], l.n, l.de))

    # ---------------------------------------------------------------- the core
    def lstm_step(self, inp, hc):
        """One LSTM step, (M, 1, in) -> ((M, 1, H), (h, c)), with the LSTM's own weights
        (PyTorch's gate order i, f, g, o). For a single step this is cheaper than the
        oneDNN sequence kernel, forwards and backwards; the results are the same."""
        core = self.core
        x = inp[:, 0]
        gates = F.linear(x, core.weight_ih_l0, core.bias_ih_l0 + core.bias_hh_l0)
        if hc is not None:
            h0, c0 = hc[0][0], hc[1][0]
            gates = torch.addmm(gates, h0, core.weight_hh_l0.t())
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(i) * torch.tanh(g)
        if hc is not None:
            c = c + torch.sigmoid(f) * c0
        h = torch.sigmoid(o) * torch.tanh(c)
        return h.unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0))

    # ---------------------------------------------------------------- embedding
    def embed_observations(self, obs: Dict[str, torch.Tensor], M: int):
        """-> (the observation embedding (M, obs_embedding), the skip (M, hidden) or None,
        the standardised observations {name: (1 or M, size)})."""
        parts, raws = [], {}
        for n in self.observed:
            x = obs[n].to(torch.get_default_dtype())
            x = x.reshape(x.shape[0], -1)
            x = (x - getattr(self, f"obs_mean_{n}")) / getattr(self, f"obs_std_{n}")
            raws[n] = x
            parts.append(self._embed(n, x, obs[n].to(torch.get_default_dtype())))
        e = _to_batch(self.obs_mix(torch.cat(parts, -1)), M)
        if self.obs_skip is None:
            return e, None, raws
        k = self.obs_skip(torch.cat([raws[n] for n in self.skip_names], -1))
        return e, _to_batch(k, M), raws


def _to_batch(x, M):
    """(1, w) -> (M, w) by broadcasting; (M, w) as it is."""
    return x.expand(M, x.shape[1]) if x.shape[0] == 1 else x


def _zero_linear(n_in, n_out):
    """A linear layer that starts at zero: a new path changes nothing until it learns."""
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
