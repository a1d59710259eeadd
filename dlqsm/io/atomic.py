"""Atomic file writing: every result file of dlqsm goes through :func:`atomic_path`."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def default_file_mode() -> int:
    """Permissions of a newly created file under the current umask (mkstemp would give 0600)."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """Permissions of a newly created folder under the current umask (mkdtemp gives 0700)."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path, *, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash or an exception leaves ``path`` untouched and no temporary file behind. The file
    gets the usual permissions of a new file (umask honoured). ``suffix`` is the temporary
    file's ending, for writers that pick the format from it (".nii.gz", ".png").
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path, text: str) -> Path:
    """Write text to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
