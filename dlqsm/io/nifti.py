"""NIfTI load/save that keep the affine and give clear errors.

nibabel's own warnings and log lines (e.g. about zero ``pixdim``) never reach the terminal: they
become dlqsm notices naming the file (:attr:`NiftiVolume.notices`), shown and recorded by the
commands. :func:`affine_problem` names what is wrong with an affine (singular, sheared).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from dlqsm.errors import InputError
from dlqsm.io.atomic import atomic_path
from dlqsm.physics.geometry import voxel_size_from_affine


@dataclass
class NiftiVolume:
    """Array data (float32 unless ``dtype`` says otherwise) with its affine and source path."""

    data: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: object | None = None
    notices: list[str] = field(default_factory=list)

    @property
    def voxel_size(self) -> np.ndarray:
        return voxel_size_from_affine(self.affine)

    @property
    def shape(self):
        return self.data.shape

    @property
    def affine_problem(self) -> str | None:
        """What is wrong with this file's affine, or None (see :func:`affine_problem`)."""
        return affine_problem(self.affine)


SHEAR_TOL_DEG = 0.1
"""Largest deviation from 90 degrees between voxel axes before an affine counts as sheared."""


def shear_deg(affine) -> float:
    """Largest deviation (degrees) from 90 degrees between two voxel axes of an affine.

    0 for an orthogonal (rotation and scaling) affine; NaN for a singular one.
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    n = np.linalg.norm(a, axis=0)
    if np.any(n == 0) or not np.all(np.isfinite(a)):
        return math.nan
    u = a / n
    cos = [abs(float(u[:, i] @ u[:, j])) for i, j in ((0, 1), (0, 2), (1, 2))]
    return float(np.degrees(np.arcsin(min(max(cos), 1.0))))


def affine_problem(affine) -> str | None:
    """``"singular"`` (a zero or degenerate voxel axis: no geometry), ``"sheared"`` (voxel
    axes not orthogonal, beyond :data:`SHEAR_TOL_DEG`) or None for a usable affine."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    if (not np.all(np.isfinite(a)) or np.any(np.linalg.norm(a, axis=0) == 0)
            or abs(np.linalg.det(a)) < 1e-12):
        return "singular"
    if shear_deg(affine) > SHEAR_TOL_DEG:
        return "sheared"
    return None


@contextlib.contextmanager
def _captured(notices: list[str], path):
    """Turn warnings and nibabel log records raised inside the block into notices."""
    records: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("nibabel.global")
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [_Collect()], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.handlers, logger.propagate = saved
    records += [str(w.message) for w in caught]
    for text in dict.fromkeys(records):
        notices.append(f"{path}: nibabel: {text.strip()}")


def load_nifti(path, *, ndim: int | tuple[int, ...] | None = None, finite: bool = True,
               dtype=np.float32, what: str = "image") -> NiftiVolume:
    """Load a NIfTI file with its affine.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        ndim: required number of dimensions (or a tuple of allowed ones); 4D files with a
            singleton 4th axis pass as 3D.
        finite: reject NaN/inf values with a clear error.
        what: a name for the image used in messages ("local field", "mask", ...).

    Raises:
        InputError: missing or unreadable file, wrong dimensionality, NaN/inf.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file does not exist.", path=p, fix="check the path.")
    notices: list[str] = []
    try:
        with _captured(notices, p):
            img = nib.load(str(p))
            data = np.asanyarray(img.dataobj)
            affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types
        raise InputError(f"cannot read {what} as NIfTI ({exc.__class__.__name__}: {exc}).",
                         path=p, fix="give a valid .nii or .nii.gz file.") from exc
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if data.ndim == 4 and 3 in allowed and 4 not in allowed and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim not in allowed:
            raise InputError(
                f"{what} has {data.ndim} dimensions {data.shape}; expected "
                f"{' or '.join(f'{a}D' for a in allowed)}.", path=p,
                fix="select one volume (e.g. one echo) or give the right file.")
    if dtype is not None:
        data = np.asarray(data, dtype=dtype)
    if finite and np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        n = int(np.size(data) - np.isfinite(data).sum())
        raise InputError(f"{what} contains {n} NaN/inf values.", path=p,
                         fix="replace them (e.g. with 0) and exclude them from the mask.")
    return NiftiVolume(data=data, affine=affine, path=p, header=img.header, notices=notices)


def save_nifti(path, data, affine, *, dtype=np.float32, header=None) -> Path:
    """Write a NIfTI atomically (temporary file in the same folder, then rename).

    ``data`` may be a numpy array or a torch tensor (moved to CPU). The affine is written to
    the sform and, when it is a rotation and scaling (no shear, not singular), to the qform too.
    """
    import torch

    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    p = Path(path)
    aff = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), None)
    img.header.set_sform(aff, code=1)
    if affine_problem(aff) is None:
        img.header.set_qform(aff, code=1)
    else:
        img.header.set_qform(None, code=0)
        if affine_problem(aff) == "singular":
            img.header.set_zooms(tuple(float(v) if v > 0 else 1.0
                                       for v in voxel_size_from_affine(aff))
                                 + img.header.get_zooms()[3:])
    suffix = ".nii.gz" if p.name.endswith(".nii.gz") else ".nii"
    with atomic_path(p, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return p
