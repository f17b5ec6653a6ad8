"""Drawing the dependency graph with graphviz (the ``dot`` binary for svg/png)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .errors import CsisDslError
from .middle.graph import to_dot


def render_graph(model, path):
    from .files import atomic_write, check_writable
    path = Path(path)
    dot = to_dot(model.graph)
    fmt = path.suffix.lstrip(".").lower()
    if fmt == "dot" or fmt == "gv":
        atomic_write(path, lambda tmp: Path(tmp).write_text(dot), "the graph")
        return path
    if fmt not in ("svg", "png", "pdf"):
        raise CsisDslError(f"error: cannot draw to '{path}': use a .svg, .png, .pdf or .dot file")
    check_writable(path, "the graph")
    exe = shutil.which("dot")
    if exe is None:
        raise CsisDslError("error: drawing svg/png needs the graphviz 'dot' program, which is "
                           "not installed; install it (Debian/Ubuntu: apt-get install "
                           "graphviz; macOS: brew install graphviz) or write a .dot file")
    r = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot.encode(),
                       capture_output=True)
    if r.returncode != 0:
        raise CsisDslError(f"error: graphviz failed: {r.stderr.decode(errors='replace')}")
    return path
