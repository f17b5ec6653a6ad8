"""Proposal families, one file each (after pyprob's ``nn/``): a family owns everything
about proposing one kind of latent -- its head, its statistics of prior simulations,
where it is located relative to the prior, its value features and its sampling.

A catalogue entry names its family (``DistSpec.proposal``); every module of this
package that defines ``FAMILY`` (a :class:`~.base.ProposalFamily` subclass) is found
here, so adding a family is adding one file.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import LatentInfo, ProposalFamily

FAMILIES = {}
for _m in pkgutil.iter_modules(__path__):
    _mod = importlib.import_module(f"{__name__}.{_m.name}")
    _cls = getattr(_mod, "FAMILY", None)
    if _cls is not None:
        FAMILIES[_cls.name] = _cls


def make_family(info: LatentInfo, config) -> ProposalFamily:
    """The proposal module for one latent variable."""
    return FAMILIES[info.family](info, config)


__all__ = ["FAMILIES", "LatentInfo", "ProposalFamily", "make_family"]
