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

    def __init__(self, observations: Optional[Dict[str, torch.Tensor]] = None):
        self.observations = observations or {}

    def latent(self, site: Site) -> torch.Tensor:
        return site.fn.sample()

    def observed(self, site: Site) -> torch.Tensor:
        x = self.observations.get(site.name)
        if x is None:
            return site.fn.sample()
        return given(x, site)


def given(x: torch.Tensor, site: Site, B: Optional[int] = None) -> torch.Tensor:
    """An observed array (1 or B, *shape) in the site's runtime layout."""
    B = B or site.fn.batch_shape[0]
    x = x.expand((B,) + tuple(x.shape[1:]))
    return x.reshape(site.value_shape(B))
