"""Numeric options checked where they enter the API (the command line checks its own
with argparse types): a clear OptionError naming the option, never a torch error later."""
from __future__ import annotations

import math
import numbers
from typing import Optional

from .errors import OptionError


def integer(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise OptionError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return int(value)


def optional_integer(name: str, value, minimum: int = 0) -> Optional[int]:
    return None if value is None else integer(name, value, minimum)


def number(name: str, value, low: float = 0.0, high: float = math.inf,
           low_open: bool = True, high_open: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and \
        math.isfinite(value) if high == math.inf else isinstance(value, numbers.Real)
    if ok:
        v = float(value)
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        ok = ok and not math.isnan(v)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open or high == math.inf else "]"
        raise OptionError(f"{name} must be a number in {lo}{low:g}, {high:g}{hi}, got {value!r}")
    return float(value)


def optional_number(name: str, value, **kw) -> Optional[float]:
    return None if value is None else number(name, value, **kw)
