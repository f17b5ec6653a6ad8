"""Typed errors with source spans, reported together (after miniwdl's WDL/Error.py).

Every user-facing failure of csis_dsl is one of:

* :class:`CompileError` -- a spec that does not compile; carries *all* diagnostics.
* :class:`ObservationError` -- observations (or arg overrides) that do not fit the model.
* :class:`ModelRuntimeError` -- a well-formed model that did something illegal in a
  particular trace (e.g. read an element of an array that does not exist).
* :class:`CheckpointError` -- a file that is not a csis_dsl checkpoint, or does not
  match its spec.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple


@dataclass(frozen=True)
class Span:
    """A region of a source file; lines and columns are 1-based, end exclusive."""
    file: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass
class Diagnostic:
    span: Optional[Span]
    message: str
    severity: str = "error"
    notes: List[Tuple[Optional[Span], str]] = field(default_factory=list)

    @property
    def line(self) -> Optional[int]:
        return self.span.line if self.span else None

    @property
    def col(self) -> Optional[int]:
        return self.span.col if self.span else None

    def format(self, source: Optional[str] = None) -> str:
        parts = [_format_one(self.span, self.severity, self.message, source)]
        for span, msg in self.notes:
            parts.append(_format_one(span, "note", msg, source))
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.format()


def _format_one(span: Optional[Span], severity: str, message: str,
                source: Optional[str]) -> str:
    if span is None:
        return f"{severity}: {message}"
    head = f"{span}: {severity}: {message}"
    if source is None:
        return head
    lines = source.splitlines()
    if not 1 <= span.line <= len(lines):
        return head
    raw = lines[span.line - 1]
    text = raw.expandtabs(4)
    end = span.end_col if span.end_line == span.line else len(raw) + 1
    # columns count characters, a tab as one: place the caret where the eye sees them
    start = len(raw[:span.col - 1].expandtabs(4))
    width = max(1, len(raw[:end - 1].expandtabs(4)) - start)
    if len(text) > SHOWN:
        # a long line (generated specs): the part around the place, marked as cut
        lo = max(0, min(start - SHOWN // 3, len(text) - SHOWN))
        hi = lo + SHOWN
        width = max(1, min(width, hi - start))
        text = ("..." if lo else "") + text[lo:hi] + ("..." if hi < len(text) else "")
        start = start - lo + (3 if lo else 0)
    return f"{head}\n    {text}\n    {' ' * start}{'^' * width}"


SHOWN = 100      # characters of a source line an error shows at most


class CsisDslError(Exception):
    """Base class of every error csis_dsl raises on purpose. ``format()`` is what a
    user reads (the command line prints it as it is)."""

    def format(self) -> str:
        text = str(self)
        return text if text.startswith("error") else f"error: {text}"


class CompileError(CsisDslError):
    """A spec that does not compile. ``.diagnostics`` lists every problem found."""

    def __init__(self, diagnostics: List[Diagnostic], source: Optional[str] = None):
        self.diagnostics = list(diagnostics)
        self.source = source
        super().__init__(self.format())

    def format(self) -> str:
        text = "\n".join(d.format(self.source) for d in self.diagnostics)
        n = len(self.diagnostics)
        if n > 1:
            text += f"\n{n} errors"
        return text

    __str__ = format


class ObservationError(CsisDslError, ValueError):
    """Observations or arg overrides that do not fit the model."""


class ModelRuntimeError(CsisDslError, RuntimeError):
    """A model that did something illegal while running. ``span`` is the statement or
    expression at fault; the interpreter attaches the spec's ``source`` so that the
    message shows the line with a caret, as compile errors do."""

    def __init__(self, message: str, span: Optional[Span] = None,
                 source: Optional[str] = None):
        self.message, self.span, self.source = message, span, source
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.span}: {self.message}" if self.span else self.message

    def format(self) -> str:
        if self.span is None:
            return f"error: {self.message}"
        return _format_one(self.span, "error", self.message, self.source)


class CheckpointError(CsisDslError):
    """A checkpoint that cannot be read or does not match its spec."""


class TrainingError(CsisDslError, RuntimeError):
    """Training that cannot go on (the loss became NaN or infinite: a learning rate too
    high, a model whose densities overflow); the network is put back to a good state."""


class OptionError(CsisDslError, ValueError):
    """A numeric or path option out of range (a negative number of steps, a learning
    rate that is not a positive number, an output path that cannot be written)."""


class DatasetError(CsisDslError):
    """An offline dataset that cannot be written or read, or belongs to another model."""
