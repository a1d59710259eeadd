"""Result folders: one writer at a time, checked before work, nothing overwritten without
``force``, every file written atomically and named by its hash in the record."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dlqsm.errors import OutputBusyError, OutputExistsError, OutputNotWritableError
from dlqsm.io.atomic import write_text_atomic
from dlqsm.io.nifti import save_nifti

try:  # POSIX advisory locks; elsewhere the lock file is created exclusively
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def write_json_atomic(path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy values converted)."""
    return write_text_atomic(path, json.dumps(_jsonable(obj), indent=2) + "\n")


def software_versions() -> dict:
    """Versions of dlqsm and its main dependencies, for records and model metadata."""
    import nibabel
    import scipy
    import torch

    import dlqsm

    return {"dlqsm": dlqsm.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "nibabel": nibabel.__version__,
            "python": platform.python_version()}


LOCK_NAME = ".dlqsm.lock"
"""The lock file a run holds in its output folder while it writes (removed when it ends)."""


def git_revision(path=None, *, untracked: bool = True) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the git checkout holding ``path``
    (default: the dlqsm package); ``untracked=False`` ignores untracked files for "dirty"."""
    where = Path(path or Path(__file__).resolve().parents[1])

    def _git(*args):
        return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        status = ["status", "--porcelain"] + ([] if untracked else ["--untracked-files=no"])
        return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git(*status))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (records name the exact map they describe)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_writable_folder(path) -> Path:
    """Raise unless ``path`` is (or can become) a writable folder; returns it as a Path.

    Checks, before any computation: the path is not a file, the nearest existing folder on it is
    a folder, and a file can actually be created there (this catches read-only folders and
    read-only file systems, also for root). Creates nothing that it does not remove.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputNotWritableError(
            f"{p}: the output path is a file, not a folder. Fix: give a folder with -o "
            "(it is created if missing).")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputNotWritableError(
            f"{p}: cannot create the output folder: {probe} is a file. Fix: choose another "
            "output folder.")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".dlqsm-write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        reason = "read-only file system" if exc.errno == errno.EROFS else (
            exc.strerror or exc.__class__.__name__).lower()
        raise OutputNotWritableError(
            f"{p}: cannot write into {probe} ({reason}). Fix: choose a writable output "
            "folder.") from None
    return p


class OutputDir:
    """A result folder that one run owns while it writes.

    ``check(names)`` refuses existing results unless ``force`` and checks that the folder is
    writable; ``lock()`` makes the run the folder's only writer (a second run into the same
    folder fails at once, also on another machine sharing the folder); every file is written
    atomically. Example::

        out = OutputDir("OUT", force=False)
        with out.lock():                               # before any expensive work
            out.check(["chimap.nii.gz", "record.json"])
            out.nifti("chimap.nii.gz", chi, affine)
            out.json("record.json", record)
    """

    def __init__(self, path, *, force: bool = False):
        self.path = Path(path)
        self.force = force
        self._lock_fd: int | None = None

    def check(self, names: Iterable[str]) -> None:
        """Refuse existing ``names`` (unless ``force``) and an unwritable folder."""
        check_writable_folder(self.path)
        existing = [n for n in names if (self.path / n).exists()]
        dirs = [n for n in existing if (self.path / n).is_dir()]
        if dirs:
            raise OutputNotWritableError(
                f"{self.path}: {', '.join(dirs)} would be written but is a folder. Fix: "
                "choose another output folder.")
        if existing and not self.force:
            raise OutputExistsError(
                f"{self.path}: would overwrite existing {', '.join(existing)}. "
                "Fix: choose another output folder or pass --force.")

    @contextlib.contextmanager
    def lock(self):
        """Own the folder while the block runs: create it and hold ``.dlqsm.lock``.

        A folder created here and still empty at the end (the run failed) is removed again.

        Raises:
            OutputBusyError: another run holds the folder (its pid, host and start time named).
            OutputNotWritableError: the folder cannot be created or written.
        """
        check_writable_folder(self.path)
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputNotWritableError(f"{self.path}: cannot create the output folder "
                                         f"({exc.strerror}). Fix: choose another one.") from None
        self._lock_fd = _acquire(self.path / LOCK_NAME)
        try:
            yield self
        finally:
            _release(self.path / LOCK_NAME, self._lock_fd)
            self._lock_fd = None
            if created:  # a run that failed before writing leaves no empty folder behind
                with contextlib.suppress(OSError):
                    self.path.rmdir()

    def target(self, name: str) -> Path:
        """``folder/name``, refused if it exists without ``force`` (for other writers)."""
        p = self.path / name
        if p.exists() and not self.force:
            raise OutputExistsError(
                f"{p} exists. Fix: choose another output folder or pass --force.")
        return p

    def nifti(self, name: str, data, affine) -> Path:
        return save_nifti(self.target(name), data, affine)

    def json(self, name: str, obj) -> Path:
        return write_json_atomic(self.target(name), obj)


def _lock_owner(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another run"
    return (f"run {info.get('pid', '?')} on {info.get('host', '?')} since "
            f"{info.get('started', '?')}")


def _busy(path: Path) -> OutputBusyError:
    return OutputBusyError(f"{path.parent}: another dlqsm run is writing into this folder "
                           f"({_lock_owner(path)}). Fix: wait for it to finish or choose "
                           "another output folder.")


def _acquire(path: Path) -> int:
    """Create/open ``path`` and take an exclusive, non-blocking lock on it; return the fd.

    With ``fcntl`` (POSIX) the lock dies with its process, so a killed run never leaves a folder
    locked; the file is checked to still be the one on disk after locking (a finishing run
    removes it). Without ``fcntl`` the file is created exclusively (``O_EXCL``).
    """
    try:
        if fcntl is None:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise _busy(path) from None
        else:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise _busy(path) from None
            if not path.exists() or os.stat(path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)  # the previous owner removed the file between open and lock
                return _acquire(path)
            os.ftruncate(fd, 0)
    except PermissionError as exc:
        raise OutputNotWritableError(f"{path.parent}: cannot write into the output folder "
                                     f"({exc.strerror}). Fix: choose a writable folder.") \
            from None
    os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "started": time.strftime(
        "%Y-%m-%dT%H:%M:%S%z")}).encode())
    return fd


def _release(path: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.close(fd)
