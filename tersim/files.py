"""Every file tersim writes goes through here: atomic writes and file names made safe.

Why one place: a report, plot, cache entry, checkpoint or model archive must never be left half-written (a
crash, Ctrl-C or a full disk leaves the previous file or nothing), must get a normal file mode, and a name
taken from input (a hardware config's `name:`, a model's name) must never steer a write outside the output
folder. A failing write is one line naming the file (a TersimError), not a traceback.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tersim.errors import TersimError

MAX_NAME_CHARS = 120  # file systems allow 255 bytes per name; leave room for suffixes and UTF-8
_UMASK_LOCK = threading.Lock()


class OutputError(TersimError):
    """An output file or folder cannot be created or written (not a folder, no permission, disk full)."""


def safe_name(text: object, fallback: str = "unnamed") -> str:
    """`text` as one file-name component: letters, digits, '-', '_', '.' kept, anything else '_'.

    No path separators survive, a name is never '.', '..' or hidden (leading dots become '_'), and long
    names are cut, so `out / safe_name(x)` always stays inside `out`.
    """
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
    name = re.sub(r"^\.+", lambda m: "_" * len(m.group()), name)[:MAX_NAME_CHARS]
    return name or fallback


def _file_mode() -> int:
    """0o666 minus the umask: what open() would give, where mkstemp gives 0o600."""
    with _UMASK_LOCK:
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def ensure_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` (and parents) if needed; one-line error if it is a file or cannot be created."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: {what} is a file, not a folder") from None
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the {what}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise OutputError(f"{path}: {what} is not a folder")
    return path


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """Fail early (before hours of work) if `path` cannot become a writable folder; creates nothing."""
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe == path and not path.is_dir():
        raise OutputError(f"{path}: {what} is a file, not a folder")
    if not probe.is_dir():
        raise OutputError(f"{path}: cannot create the {what}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot create the {what}: {probe} is not writable")
    return path


@contextmanager
def atomic_file(path: str | Path) -> Iterator[str]:
    """Yield a temp file name beside `path`; rename it onto `path` when the block succeeds.

    On any failure the temp file is removed and `path` is untouched. OSErrors (full disk, no permission)
    become one-line OutputErrors naming `path`. The temp name keeps `path`'s suffix (torch and matplotlib
    look at it).
    """
    path = Path(path)
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        os.chmod(tmp, _file_mode())
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, write) -> Path:
    """Call `write(binary_file_object)` into a temp file and rename it onto `path` (torch.save & co.)."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path
