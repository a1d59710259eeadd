"""NIfTI load/save that keep the affine and give clear errors."""

from __future__ import annotations

from dataclasses import dataclass
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

    @property
    def voxel_size(self) -> np.ndarray:
        return voxel_size_from_affine(self.affine)

    @property
    def shape(self):
        return self.data.shape


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
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
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
    return NiftiVolume(data=data, affine=np.asarray(img.affine, dtype=np.float64), path=p,
                       header=img.header)


def save_nifti(path, data, affine, *, dtype=np.float32, header=None) -> Path:
    """Write a NIfTI atomically (temporary file in the same folder, then rename).

    ``data`` may be a numpy array or a torch tensor (moved to CPU). The affine is written to
    both the sform and qform.
    """
    import torch

    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    p = Path(path)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), np.asarray(affine, dtype=np.float64))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    suffix = ".nii.gz" if p.name.endswith(".nii.gz") else ".nii"
    with atomic_path(p, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return p
