"""File writing that never leaves a partial output behind: write a temp file beside the target, then rename."""
from __future__ import annotations

import contextlib
import os
import tempfile

from .errors import ExportError


def check_writable(path: str) -> str:
    """Resolve `path` and make sure its folder exists and is writable; raise ExportError naming it if not."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise ExportError(f"output path {path} is a directory; give a file name")
    if not os.path.isdir(folder):
        raise ExportError(f"output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise ExportError(f"output folder {folder} is not writable; choose another output path")
    return path


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask is set-and-get and racy
    with other threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix + ".tmp",
                               dir=os.path.dirname(path))
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600; give the result the mode a plain open(path, "w") would have
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
