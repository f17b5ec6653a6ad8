"""Files the user names: read as UTF-8 text with a clear error, written atomically (a
temporary file in the same folder, then renamed into place, so that a crash, a full disk
or two writers at once never leave a half-written file or lose the old one), and checked
for writability before long work that ends in writing them."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import OptionError


def read_text(path, what: str, error=OptionError) -> str:
    """The text of ``path``; ``error`` (an exception class) with a located reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise error(f"cannot read {what} '{path}': {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise error(f"{what} '{path}' is not UTF-8 text: byte {err.start} (line {line}) "
                    f"is 0x{data[err.start]:02x}; save it as UTF-8") from None


def check_writable(path, what: str) -> Path:
    """Fail now, not after the work, if ``path`` cannot be written."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise OptionError(f"cannot write {what} to '{path}': it is a directory")
    if not parent.is_dir():
        raise OptionError(f"cannot write {what} to '{path}': the folder '{parent}' does "
                          "not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".csis_dsl-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OptionError(f"cannot write {what} to '{path}': {err.strerror or err}") from None
    return p


def _mode(p: Path) -> int:
    """The permissions of the file being replaced, or the umask's default for a new one."""
    try:
        return p.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write(path, write: Callable[[str], None], what: str) -> None:
    """``write(tmp_path)`` then rename into ``path``; the old file stays on failure."""
    p = check_writable(path, what)
    fd, tmp = tempfile.mkstemp(dir=p.parent if str(p.parent) else ".",
                               prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode(p))        # mkstemp makes 0600; keep what open() would give
        os.replace(tmp, p)
    except OSError as err:
        raise OptionError(f"cannot write {what} to '{path}': {err.strerror or err}; "
                          "nothing was changed there") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
