"""The inference network generated from the graph (after Le, Baydin & Wood 2017, with
what a static graph allows).

* The observations are embedded once (:mod:`.embedding`).
* ``architecture="lstm"``: an LSTM cell takes one step per latent *site* (statement),
  in execution order; its input is the observation embedding, a summary of the
  previous site's value (the mean value embedding over its instances) and learned
  embeddings of the previous and current address and distribution type.
  ``"feedforward"`` drops the recurrence (the mean-field variant).
* Every instance of a site gets its own hidden vector from the site's state, in one
  batched call: an instance encoder reads the values already drawn in the site's
  Markov blanket and the observations aligned with the instance (:mod:`.context`)
  and its position. The instances of a plate are proposed together, whatever their
  number.
* A family produced in order (``h[t]`` reads ``h[t - 1]``) is proposed element by
  element as a Markov chain: element t reads element t - 1 and a bidirectional
  encoding of the aligned observation series (past and future), so the proposal can
  represent the smoothing posterior p(h[t] | h[t - 1], all y), not only the filter.
* One proposal family per latent (``families/``) turns a hidden vector into a
  proposal on the prior's support.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..catalogue.distributions import DISTRIBUTIONS
from ..frontend.checked import Checked
from ..middle.plan import Plan
from .context import SiteInputs
from .embedding import ByName, ObservationEmbedding, zero_linear
from .families import LatentInfo, make_family
from .families.base import DIST_IDS
from .families.base import OutputLayer, Rows


@dataclass
class NetworkConfig:
    architecture: str = "lstm"     # lstm | feedforward
    obs_embedding: Optional[int] = None   # None: sized to the model (see sized)
    value_embedding: int = 16
    address_embedding: int = 16
    dist_embedding: int = 4
    hidden: Optional[int] = None          # None: sized to the model (see sized)
    mixture_components: int = 12
    count_components: int = 3
    obs_skip: bool = True          # a linear path from the observations to every head
    obs_aligned: bool = True       # instance j of a loop also reads the observations at j
    context: bool = True           # a site reads the values drawn in its Markov blanket
    set_embedding: int = 32        # width of the DeepSets embedding of observations in a
                                   # plate (0: none)
    smoothing: int = 8             # features of the bidirectional encoding of aligned series
    instance_hidden: int = 32      # the inner width of the per-instance encoder
    informed: bool = True          # locate proposals by how candidates explain the data
    tails: str = "normal"          # continuous components: "normal" or "student"
    full_covariance: int = 16      # continuous sites of up to this many unconstrained
                                   # elements get full-covariance components (0: only
                                   # MultivariateNormal priors)
    newton_steps: int = 4          # Newton steps of an informed continuous site's Laplace
                                   # location (each a pass over its observations)

    def __post_init__(self):
        for k, f in self.__dataclass_fields__.items():
            v = getattr(self, k)
            zero_ok = k in ("set_embedding", "smoothing", "full_covariance")
            if f.type == "Optional[int]" and v is None:
                continue                                  # sized to the model
            if f.type in ("int", "Optional[int]") and (
                    isinstance(v, bool) or not isinstance(v, int) or v < 0
                    or (v == 0 and not zero_ok)):
                raise ValueError(f"'{k}' must be a positive integer, got {v!r}")
            if f.type == "bool" and not isinstance(v, bool):
                raise ValueError(f"'{k}' must be true or false, got {v!r}")
        if self.architecture not in ("lstm", "feedforward"):
            raise ValueError(f"architecture must be 'lstm' or 'feedforward', "
                             f"got {self.architecture!r}")
        if self.tails not in ("normal", "student"):
            raise ValueError(f"tails must be 'normal' or 'student', got {self.tails!r}")

    def to_dict(self):
        return asdict(self)

    # a model with at most this many latent numbers gets the narrow network
    SMALL_MODEL = 4

    def sized(self, latent_numbers: int) -> "NetworkConfig":
        """The widths left to the model made concrete: the recurrent state and the
        observation embedding carry what the proposals of all latent numbers need from
        the observations, so a model with at most ``SMALL_MODEL`` of them gets 32 of
        each (posteriors as good as at 64 on the small specs and real models measured,
        at 1.8x the traces per second of the seed model: README, "Defaults, and why"),
        larger models 64."""
        width = 32 if latent_numbers <= self.SMALL_MODEL else 64
        return replace(self, hidden=self.hidden or width,
                       obs_embedding=self.obs_embedding or width)


class InstanceEncoder(nn.Module):
    """h (M, H) and per-instance inputs -> one hidden vector per instance (M * m, H): h
    plus a linear and a one-hidden-layer path in (h, inputs), both zero at the start (so
    an untrained site proposes from its state alone). The inputs are ``const``, known
    before the site is drawn (context, aligned observations, position), and ``var``,
    the previous element in a family produced in order. The parts in h and in const are
    computed once per site (``prepare``), so that drawing a family element by element
    only adds the small part in var (``step``)."""

    def __init__(self, hidden: int, const: int, var: int = 0, inner: int = 32):
        super().__init__()
        self.const, self.var = const, var
        width = const + var
        self.lin = zero_linear(width, hidden)
        self.inp_h = nn.Linear(hidden, inner)
        self.inp_x = nn.Linear(width, inner, bias=False)
        self.out = zero_linear(inner, hidden)

    def forward(self, h, const, var=None, skip=None):
        """Factored hidden vectors (:class:`Rows`) of every instance; ``skip`` (M, H) is
        added to all of a trace's instances."""
        x = const if var is None else torch.cat([const, var], -1)
        z = torch.relu(self.inp_h(h).unsqueeze(1) + self.inp_x(x))
        shared = h + self.lin.bias + self.out.bias + (0 if skip is None else skip)
        return Rows(shared, [(x, self.lin.weight), (z, self.out.weight)], x.shape[1])

    def prepare(self, h, const):
        """What does not depend on the previous element: (M, n, inner), (M, n, H)."""
        c = self.const
        a = self.inp_h(h).unsqueeze(1) + F.linear(const, self.inp_x.weight[:, :c])
        b = h.unsqueeze(1) + F.linear(const, self.lin.weight[:, :c], self.lin.bias)
        return a, b

    def step(self, prepared, j, var, skip=None):
        """The hidden vectors of element j given the previous element var (M, 1, w)."""
        a, b = prepared
        c = self.const
        z = torch.relu(a[:, j:j + 1] + F.linear(var, self.inp_x.weight[:, c:]))
        out = b[:, j:j + 1] + F.linear(var, self.lin.weight[:, c:]) + self.out(z)
        out = out.reshape(out.shape[0], -1)
        return out if skip is None else out + skip


class SeriesEncoder(nn.Module):
    """A bidirectional encoding of a series (M, T, w) -> (M, T, width): per-element
    features phi(x_t), then their exponentially weighted means over the past and over
    the future at a few learned decay rates. Linear in time and cheap (two scans); it
    gives element t a summary of the whole series on both sides, which is what a
    smoothing posterior of a Markov chain depends on."""

    def __init__(self, width_in: int, features: int, decays=(0.5, 0.8, 0.93, 0.98)):
        super().__init__()
        self.phi = nn.Linear(width_in, features)
        self.logit = nn.Parameter(torch.logit(torch.tensor(decays)))
        self.width = 2 * features * len(decays)

    def forward(self, x):
        f = torch.tanh(self.phi(x)).unsqueeze(2)               # (M, T, 1, F)
        r = torch.sigmoid(self.logit).reshape(1, -1, 1)         # (1, K, 1)
        M, T = f.shape[:2]
        fwd, bwd = [], []
        acc = torch.zeros(M, r.shape[1], f.shape[-1])
        for t in range(T):
            acc = r * acc + (1 - r) * f[:, t]
            fwd.append(acc)
        acc = torch.zeros_like(acc)
        for t in reversed(range(T)):
            acc = r * acc + (1 - r) * f[:, t]
            bwd.append(acc)
        # divide by the weights' sum (1 - r^(terms)), so that ends are means too
        n = torch.arange(1, T + 1, dtype=f.dtype).reshape(1, T, 1, 1)
        norm = 1 - r.unsqueeze(1) ** n                          # (1, T, K, 1)
        out = torch.cat([torch.stack(fwd, 1) / norm, torch.stack(bwd[::-1], 1) / norm.flip(1)], 2)
        return out.reshape(M, T, -1)


class ProposalNetwork(nn.Module):
    def __init__(self, checked: Checked, plan: Plan, graph, config: NetworkConfig,
                 obs_embeddings: Optional[dict] = None):
        super().__init__()
        self.latents = [LatentInfo(i + 1, checked.vars[n]) for i, n in enumerate(plan.latents)]
        self.config = C = config.sized(sum(l.n * l.de for l in self.latents))
        self.by_name = {l.name: l for l in self.latents}
        self.observed = list(plan.observed)
        self.embedding = ObservationEmbedding(checked, plan, graph, C, obs_embeddings or {})
        self.addr_emb = nn.Embedding(len(self.latents) + 1, C.address_embedding)
        self.dist_emb = nn.Embedding(DIST_IDS, C.dist_embedding)
        step_in = C.obs_embedding + 2 * C.address_embedding + 2 * C.dist_embedding
        if C.architecture == "lstm":
            self.core = nn.LSTMCell(step_in + C.value_embedding, C.hidden)
        else:
            self.core = nn.Sequential(nn.Linear(step_in, C.hidden), nn.ReLU(),
                                      nn.Linear(C.hidden, C.hidden), nn.ReLU())
        self.families = ByName()
        self.value_emb = ByName()
        for l in self.latents:
            self.families[l.name] = make_family(l, C)
            self.value_emb[l.name] = nn.Linear(self.families[l.name].feat_dim,
                                               C.value_embedding)
        self.inputs = SiteInputs(checked, plan, graph, self.latents, self.families, C)
        for name, quadratic in self.inputs.quadratic.items():
            if hasattr(self.families[name], "quadratic"):
                self.families[name].quadratic = quadratic
        self.smoothers = ByName()
        self.encoders = ByName()
        for l in self.latents:
            const = self.inputs.context_width(l.name) + self.inputs.align_width[l.name] + 1
            var = 0
            if not l.plate:
                const += 1                                       # the first-element flag
                var = self.families[l.name].feat_dim             # element t - 1
                if self.inputs.align_width[l.name] and C.smoothing:
                    self.smoothers[l.name] = SeriesEncoder(
                        self.inputs.align_width[l.name] + self.inputs.context_width(l.name),
                        C.smoothing)
                    const += self.smoothers[l.name].width
            self.encoders[l.name] = InstanceEncoder(C.hidden, const, var, C.instance_hidden)

    # ---------------------------------------------------------------- statistics
    @torch.no_grad()
    def fit_statistics(self, sims):
        """Standardisation statistics from prior simulations."""
        self.embedding.fit(sims)
        for l in self.latents:
            x = sims[l.name].to(torch.get_default_dtype())
            self.families[l.name].fit(x.reshape(x.shape[0], l.n, l.de))
        self.inputs.fit(sims)

    # ---------------------------------------------------------------- inference
    defensive = 0.0     # the weight of every site's broad component (0 while training)

    @contextlib.contextmanager
    def defensive_mixing(self, weight: float):
        """Propose from (1 - weight) q + weight q_broad at every site meanwhile."""
        saved, self.defensive = self.defensive, float(weight)
        try:
            yield
        finally:
            self.defensive = saved

    @contextlib.contextmanager
    def networkless(self, on: bool = True):
        """Meanwhile every family proposes from the program alone (its output layer
        gives its initial bias, whatever the hidden state): the prior, or an informed
        site's exact local posterior, Laplace fit or message, at its own width -- the
        proposal before any training, with no random output weights."""
        layers = [m for m in self.modules() if isinstance(m, OutputLayer)]
        saved = [m.networkless for m in layers]
        bare = self.__dict__.get("_bare", False)
        for m in layers:
            m.networkless = on
        # a refinement's adapters belong to the network's proposal: moved towards its
        # weighted draws, they would carry the program's proposal off with it
        self._bare = on
        try:
            yield
        finally:
            for m, s in zip(layers, saved):
                m.networkless = s
            self._bare = bare

    # ---------------------------------------------------------------- refinement
    def add_adapters(self):
        """Per-instance parameters of every site, zero at the start (see each family's
        ``adapter_shapes``): what a refinement for one set of observations learns."""
        self.adapters = ByName()
        for l in self.latents:
            shapes = self.families[l.name].adapter_shapes(self.adapter_context_width(l))
            self.adapters[l.name] = nn.ParameterDict(
                {k: nn.Parameter(torch.zeros((l.n,) + tuple(shape))) for k, shape in shapes.items()})
        return list(self.adapters.parameters())

    def adapter_context_width(self, info: LatentInfo) -> int:
        """What a refinement's affine adapter may be linear in: the site's context, and
        for a family produced in order the previous element too."""
        extra = 0 if info.plate else self.families[info.name].feat_dim
        return self.inputs.context_width(info.name) + extra

    def adapted(self, name: str) -> bool:
        """Whether site ``name`` has a refinement's adapters."""
        return name in getattr(self, "adapters", {})

    def adapter(self, name: str, j0: int, m: int, M: int, context=None):
        """The adapters of instances j0 .. j0 + m - 1 for M traces, rows first, and the
        context features of those rows (M, m, p) when the site has any."""
        adapters = getattr(self, "adapters", None)
        if adapters is None or name not in adapters or self.__dict__.get("_bare", False):
            return None
        out = {k: p[j0:j0 + m].unsqueeze(0).expand((M, m) + tuple(p.shape[1:]))
               .reshape((M * m,) + tuple(p.shape[1:])) for k, p in adapters[name].items()}
        if context is not None:
            out["context"] = context.reshape(M * m, -1)
        return out

    def embed(self, obs, M: int):
        return self.embedding(obs, M)

    # ---------------------------------------------------------------- the core
    def step(self, state, info: LatentInfo) -> torch.Tensor:
        """The recurrent step of one site: (M, hidden); the new recurrent state is kept
        aside until the site's value is known (``state.pending``).

        The step's input is [observation embedding | previous and current address |
        previous and current distribution | previous value summary]. The address and
        distribution parts are the same in every trace (the graph is static), so their
        product with the input weights is one row, broadcast; before the first site the
        state and the previous value are zero, so their products are skipped. The result
        is exactly that of ``LSTMCell`` (or the feedforward core) on the whole input."""
        C = self.config
        E = C.obs_embedding
        K = 2 * C.address_embedding + 2 * C.dist_embedding
        addr, dist = self.addr_emb.weight, self.dist_emb.weight
        fixed = torch.cat([addr[state.prev_addr], addr[info.addr],
                           dist[state.prev_dist], dist[info.dist]]).unsqueeze(0)
        if C.architecture != "lstm":
            first = self.core[0]
            x = F.linear(state.obs, first.weight[:, :E]) + \
                F.linear(fixed, first.weight[:, E:E + K], first.bias)
            state.pending = None
            return self.core[1:](x)
        core = self.core
        W = core.weight_ih
        gates = F.linear(state.obs, W[:, :E]) + \
            F.linear(fixed, W[:, E:E + K], core.bias_ih + core.bias_hh)
        if state.prev_val is not None:
            gates = gates + F.linear(state.prev_val, W[:, E + K:])
        if state.hc is None:                        # from the zero state
            i, _, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(i) * torch.tanh(g)
        else:
            h0, c0 = state.hc
            gates = gates + F.linear(h0, core.weight_hh)
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        state.pending = (h, c)
        return h

    def value_summary(self, info: LatentInfo, x, present) -> torch.Tensor:
        """The mean value embedding over a site's present instances: (M, value_embedding)."""
        f = self.families[info.name].features(x, 0).nan_to_num(0.0, 10.0, -10.0).clamp(-10.0, 10.0)
        # the embedding is affine: the mean of the embeddings is the embedding of the
        # mean features (one small product per trace, not one per instance)
        if present is None:
            return self.value_emb[info.name](f.mean(1))
        w = present.to(f.dtype).unsqueeze(-1)
        return self.value_emb[info.name]((f * w).sum(1) / w.sum(1).clamp(min=1.0))

    def smooth(self, info: LatentInfo, aligned, context) -> Optional[torch.Tensor]:
        """The bidirectional encoding of a family's aligned series: (M, n, 2 * smoothing)."""
        if info.name not in self.smoothers:
            return None
        inp = aligned if context is None else torch.cat([aligned, context], -1)
        return self.smoothers[info.name](inp)



def positions(index: torch.Tensor, n: int, M: int) -> torch.Tensor:
    """The relative positions (M, len(index), 1) of instances ``index`` of n."""
    pos = index.to(torch.get_default_dtype()) / max(n - 1, 1)
    return pos.reshape(1, -1, 1).expand(M, -1, 1)


def first_flags(j0: int, m: int, M: int) -> torch.Tensor:
    return (torch.arange(j0, j0 + m) == 0).to(torch.get_default_dtype()).reshape(1, m, 1).expand(M, m, 1)

