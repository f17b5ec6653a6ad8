"""Devices: where a model's tensors live.

A compiled model has one device (``model.to(device)``; CPU by default). The network's
weights are moved there once; everything the interpreter, the network and the engine
create while running is made there by running inside ``on(device)``, which is torch's
own default-device context (``with torch.device(...)``). On the CPU it is skipped, so
the CPU path pays nothing for it.
"""
from __future__ import annotations

import contextlib

import torch

from .errors import OptionError

CPU = torch.device("cpu")


def resolve(device) -> torch.device:
    """``device`` (a string such as "cpu", "cuda", "cuda:1", or a torch.device) as a
    torch.device that this machine has, or an OptionError saying which it has."""
    if device is None:
        return CPU
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(f"device {device!r} is not a device name; use 'cpu', 'cuda' "
                          "or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"device {device!r}: this machine has no CUDA GPU that torch "
                              "can use; use 'cpu'")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise OptionError(f"device {device!r}: this machine has {n} CUDA device(s), "
                              f"cuda:0 to cuda:{n - 1}")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":
        raise OptionError(f"device {device!r}: csis_dsl runs on 'cpu' or 'cuda' devices")
    return dev


def on(device: torch.device):
    """Run a block with ``device`` as torch's default device for new tensors."""
    if device is None or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.device(device)


def current() -> torch.device:
    """The device new tensors go to here (inside ``on``, that device)."""
    return torch.get_default_device()


def here(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the current device (no copy when it is there already)."""
    dev = current()
    return t if t.device == dev else t.to(dev)
