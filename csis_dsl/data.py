"""Data files: the values of args (``compile(path, data=...)``, ``--data FILE``) and of
observations (``--obs-file FILE``), read from JSON or CSV.

* JSON: one object of ``name: value`` (numbers, nested lists, booleans); or a bundle
  ``{"args": {...}, "observations": {...}, "source": "..."}`` holding both, of which
  each reader takes its part.
* CSV: a header row of names, then one row per record: each column is one variable, a
  1-D array (integers where every entry is an integer). Empty cells are an error that
  names the row and column: a model has no notion of a missing value.

Errors are ``DataError``s naming the file and the place in it.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, Union

import numpy as np

from .errors import ObservationError
from .files import read_text


class DataError(ObservationError):
    """A data or observation file that cannot be read as one."""


def read_data(source: Union[str, Path, dict, None], what: str = "data file",
              part: str = "args") -> Dict:
    """``source`` (a path to a JSON or CSV file, or a dict already) as a dict of name to
    value (numpy arrays for CSV columns); of a bundle, its ``part`` ("args" or
    "observations")."""
    if source is None:
        return {}
    if isinstance(source, dict):
        return _part(dict(source), part)
    return _part(_read(source, what), part)


def _part(d: Dict, part: str) -> Dict:
    if any(isinstance(d.get(k), dict) for k in ("args", "observations")):
        return dict(d.get(part) or {})
    return d


def _read(source, what) -> Dict:
    path = Path(source)
    text = read_text(path, what, DataError)
    if path.suffix.lower() == ".csv":
        return _csv(text, path, what)
    if path.suffix.lower() not in (".json", ""):
        stripped = text.lstrip()
        if not stripped.startswith("{"):
            return _csv(text, path, what)
    return _json(text, path, what)


def _json(text, path, what):
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{what} '{path}' is not valid JSON: {err.msg} at line {err.lineno}, "
                        f"column {err.colno}") from None
    if not isinstance(loaded, dict):
        raise DataError(f"{what} '{path}' must hold one JSON object of name: value, such "
                        f"as {{\"y\": [1.5, 2.0]}}; it holds a {type(loaded).__name__}")
    return loaded


def _csv(text, path, what):
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{what} '{path}' is empty; a CSV file needs a header row of "
                        "names, then one row per record")
    header = [h.strip() for h in rows[0]]
    for k, h in enumerate(header):
        if not h:
            raise DataError(f"{what} '{path}': column {k + 1} of the header has no name")
        if h in header[:k]:
            raise DataError(f"{what} '{path}': the column name '{h}' appears twice")
    body = rows[1:]
    if not body:
        raise DataError(f"{what} '{path}' has a header but no rows")
    for i, r in enumerate(body, start=2):
        if len(r) != len(header):
            raise DataError(f"{what} '{path}', row {i}: {len(r)} fields where the header "
                            f"has {len(header)}")
    out = {}
    cells = np.array(body, dtype=object)
    for k, name in enumerate(header):
        col = [c.strip() for c in cells[:, k]]
        try:
            arr = np.array(col, dtype=np.float64)
        except ValueError:
            for i, c in enumerate(col, start=2):
                try:
                    float(c)
                except ValueError:
                    hint = " (an empty cell: a model has no missing values)" if not c else ""
                    raise DataError(f"{what} '{path}', row {i}, column '{name}': "
                                    f"'{c}' is not a number{hint}") from None
            raise
        if np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)) and \
                all("." not in c and "e" not in c.lower() for c in col):
            arr = arr.astype(np.int64)
        out[name] = arr
    return out
