"""Static types: a base (real | int | bool) and a concrete shape (args are known when
compiling, so every shape is a tuple of ints)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Type:
    base: str                      # real | int | bool
    shape: Tuple[int, ...] = ()

    def __str__(self) -> str:
        if not self.shape:
            return self.base
        return f"{self.base}[{', '.join(map(str, self.shape))}]"

    @property
    def is_scalar(self) -> bool:
        return not self.shape

    def with_shape(self, shape) -> "Type":
        return Type(self.base, tuple(shape))


REAL, INT, BOOL = Type("real"), Type("int"), Type("bool")


def join_base(a: str, b: str) -> str:
    """The base of an arithmetic result: real wins, bool counts as int."""
    if "real" in (a, b):
        return "real"
    return "int"


def broadcast(s1: Tuple[int, ...], s2: Tuple[int, ...]) -> Optional[Tuple[int, ...]]:
    """NumPy broadcasting of two shapes, or None when they do not fit."""
    out = []
    for a, b in zip(reversed((1,) * (len(s2) - len(s1)) + tuple(s1)),
                    reversed((1,) * (len(s1) - len(s2)) + tuple(s2))):
        if a == b or b == 1:
            out.append(a)
        elif a == 1:
            out.append(b)
        else:
            return None
    return tuple(reversed(out))
