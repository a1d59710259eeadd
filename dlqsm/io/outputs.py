"""Result folders: refuse to overwrite without ``force``, write every file atomically."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dlqsm.errors import OutputExistsError
from dlqsm.io.atomic import write_text_atomic
from dlqsm.io.nifti import save_nifti


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


class OutputDir:
    """A result folder. ``check(names)`` refuses existing files unless ``force``.

    Example::

        out = OutputDir("OUT", force=False)
        out.check(["chimap.nii.gz", "record.json"])   # before any expensive work
        out.nifti("chimap.nii.gz", chi, affine)
        out.json("record.json", record)
    """

    def __init__(self, path, *, force: bool = False):
        self.path = Path(path)
        self.force = force

    def check(self, names: Iterable[str]) -> None:
        existing = [n for n in names if (self.path / n).exists()]
        if existing and not self.force:
            raise OutputExistsError(
                f"{self.path}: would overwrite existing {', '.join(existing)}. "
                "Fix: choose another output folder or pass --force.")

    def _target(self, name: str) -> Path:
        p = self.path / name
        if p.exists() and not self.force:
            raise OutputExistsError(
                f"{p} exists. Fix: choose another output folder or pass --force.")
        return p

    def nifti(self, name: str, data, affine) -> Path:
        return save_nifti(self._target(name), data, affine)

    def json(self, name: str, obj) -> Path:
        return write_json_atomic(self._target(name), obj)
