"""The site-handler seam: one interpreter serves the model, the guide and the fast
training path. The interpreter computes each random statement's distribution and hands
it to a handler as a :class:`Site`; the handler decides the value (sample it, take an
observation, propose it, replay a given one) and may record whatever it likes (a Pyro
sample site, a log density). Named hooks, as Pyro's messengers have:

* ``latent(site)`` -- a latent statement (or latent family);
* ``observed(site)`` -- an observed statement (or observed family).

Both return the value in the runtime layout: ``(B, *loop sizes, *element shape)`` for a
statement, ``(B, *family shape)`` for a family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from ..catalogue.supports import is_dependent
from ..frontend import ast as A
from ..frontend.checked import Loop, Var


@dataclass(eq=False)
class Site:
    var: Var
    stmt: A.Stmt              # the statement (the first piece, for a family)
    fn: object                # the distribution, batch (B, *loop sizes, *element batch)
    mask: Optional[torch.Tensor]   # (B, *loop sizes): where it runs; None: everywhere
    loops: List[Loop]
    family: bool = False      # one site over a whole family produced in order
    env: Optional[dict] = None   # what the interpreter has computed so far
    runtime: object = None       # the interpreter (to score other statements at will)

    @property
    def name(self) -> str:
        return self.var.name

    def value_shape(self, B: int):
        if self.family:
            return (B,) + tuple(self.var.type.shape)
        return (B,) + tuple(l.size for l in self.loops) + tuple(self.var.elem_shape)


class SiteHandler:
    """The default handler samples every latent from its prior and takes observed
    values from ``observations`` (sampling those not given)."""

    # whether ``observed`` reads the site's distribution: a handler that only takes the
    # given values (a guide) says no, and the interpreter does not build it
    reads_observed = True

    def __init__(self, observations: Optional[Dict[str, torch.Tensor]] = None):
        self.observations = observations or {}

    def latent(self, site: Site) -> torch.Tensor:
        return draw(site)

    def observed(self, site: Site) -> torch.Tensor:
        x = self.observations.get(site.name)
        if x is None:
            return draw(site)
        return given(x, site)


def draw(site: Site) -> torch.Tensor:
    """A draw from the site's distribution, checked. torch's samplers fail quietly at
    extreme parameters (a Poisson at a rate beyond about 1e19 returns negative counts, a
    Normal whose scale nears float32's largest value returns inf): such a draw is outside
    the support, so its trace has density zero under the model. It is marked on the
    interpreter (``zero_density``), which simulation drops and draws again."""
    x = site.fn.sample()
    ok = in_support(site.fn, x)
    if ok is None or site.runtime is None or bool(ok.all()):     # the common case
        return x
    where = ok
    if site.mask is not None and ok.dim() >= site.mask.dim():   # where it runs
        m = site.mask
        where = ok.reshape(ok.shape[:m.dim()] + (-1,)).all(-1) | ~m
    bad = ~where.reshape(where.shape[0], -1).all(1)
    if bool(bad.any()):
        shown = f" {float(x[~ok][0]):g}" if ok.shape == x.shape else " a value"
        site.runtime.zero_density(
            bad, f"{type(site.fn).__name__} drew{shown} for '{site.name}', "
            "outside its support (its sampler fails at such extreme parameters)", site.stmt)
    return x


def in_support(fn, x: torch.Tensor) -> Optional[torch.Tensor]:
    """Where ``x`` is finite and, for a discrete distribution, in ``fn``'s support: a
    bool tensor over the dims the support check keeps, or None where there is nothing
    to check. Supports that depend on other values are checked where those are (the
    interpreter's parameter checks)."""
    checks = [torch.isfinite(x)] if x.is_floating_point() else []
    sup = fn.support
    if not is_dependent(sup) and getattr(sup, "is_discrete", False):
        checks.append(sup.check(x))
    if not checks:
        return None
    n = min(c.dim() for c in checks)
    ok = checks[0].reshape(checks[0].shape[:n] + (-1,)).all(-1)
    for c in checks[1:]:
        ok = ok & c.reshape(c.shape[:n] + (-1,)).all(-1)
    return ok


def given(x: torch.Tensor, site: Site, B: Optional[int] = None) -> torch.Tensor:
    """An observed array (1 or B, *shape) in the site's runtime layout."""
    B = B or site.fn.batch_shape[0]
    x = x.expand((B,) + tuple(x.shape[1:]))
    return x.reshape(site.value_shape(B))


def site_log_prob(site: Site, x: torch.Tensor) -> torch.Tensor:
    """log p(x) of a site per trace, (B,): absent elements contribute nothing."""
    lp = site.fn.log_prob(x)
    if site.mask is not None:
        m = site.mask.reshape(site.mask.shape + (1,) * (lp.dim() - site.mask.dim()))
        lp = torch.where(m, lp, torch.zeros_like(lp))
    return lp.reshape(lp.shape[0], -1).sum(-1)


class Scorer(SiteHandler):
    """Latents from ``values`` (sampled from the prior where not given), observed values
    from ``observations`` (sampled where not given); accumulates log p of the latents
    and of the observed values per trace. No Pyro: the fast path of training and
    importance sampling."""

    def __init__(self, B: int, observations=None, values: Optional[Dict[str, torch.Tensor]] = None):
        super().__init__(observations)
        self.values = values or {}
        self.log_latent = torch.zeros(B)
        self.log_observed = torch.zeros(B)

    def latent(self, site):
        x = self.values.get(site.name)
        B = self.log_latent.shape[0]
        x = draw(site) if x is None else \
            x.expand((B,) + tuple(x.shape[1:])).reshape(site.value_shape(B))
        self.log_latent = self.log_latent + site_log_prob(site, x)
        return x

    def observed(self, site):
        x = super().observed(site)
        self.log_observed = self.log_observed + site_log_prob(site, x)
        return x
