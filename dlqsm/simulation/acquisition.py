"""Acquisition geometry and field model: B0 direction, voxel size, local and total fields.

Conventions (one operator for everything: :class:`dlqsm.physics.dipole.DipoleOperator`):

* ``reference_chi(chi, mask) = (chi - mean_mask(chi)) * mask``: susceptibility referenced to
  its mean inside the mask (the brain for heads), zero outside.
* ``local_field(chi, mask) = mask * D(mask * chi)``: the field (ppm) of the sources inside the
  mask, seen inside the mask. Applied to the referenced chi this is the training target pair.
  (Referencing changes the field only by the field of a uniform source filling the mask,
  which is harmonic inside it: the part background removal removes anyway.)
* ``total_field = D(chi_all - chi_air) + shim`` over the whole volume: every source, the air
  outside the field of view included (zero padding = air), plus an optional smooth
  second-order shim residual. Callers mask it to the region with signal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dlqsm.physics.dipole import DipoleOperator, dipole_kernel
from dlqsm.physics.fft import as_triple, crop3, irfft3, pad3, rfft3
from dlqsm.physics.geometry import normalize_b0_dir, normalize_voxel_size
from dlqsm.simulation.rng import random_b0_dirs, random_voxel_sizes
from dlqsm.simulation.textures import random_polynomial_field


def sample_geometry(generator, n: int, *, voxel_size=(1.0, 1.0, 1.0),
                    max_tilt_deg: float = 0.0, isotropic_prob: float = 0.0):
    """Random B0 directions (n, 3) and voxel sizes (n, 3) mm.

    Args:
        voxel_size: a number, three numbers (fixed) or a (low, high) range per axis.
        max_tilt_deg: B0 directions are uniform on the cap within this angle of the z axis.
        isotropic_prob: with a range, the chance that the voxels are isotropic.
    """
    b0 = random_b0_dirs(generator, n, max_tilt_deg).cpu()
    vs = random_voxel_sizes(generator, n, voxel_size, isotropic_prob=isotropic_prob).cpu()
    return b0, vs


def reference_chi(chi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Demean ``chi`` inside ``mask`` (per batch element) and zero it outside.

    Args:
        chi: (..., X, Y, Z) ppm. mask: same shape (bool or {0, 1}).
    """
    m = mask.to(chi.dtype)
    n = m.sum(dim=(-3, -2, -1), keepdim=True).clamp_min(1.0)
    mean = (chi * m).sum(dim=(-3, -2, -1), keepdim=True) / n
    return (chi - mean) * m


def dipole_kernels(shape: Sequence[int], voxel_size, b0_dir, *, padding=0,
                   device=None) -> torch.Tensor:
    """Half-spectrum dipole kernels on the padded grid for a batch.

    Args:
        shape: unpadded (X, Y, Z). voxel_size: (3,) or (B, 3) mm. b0_dir: (3,) or (B, 3).
        padding: zero padding per side (voxels), as in :class:`DipoleOperator`.

    Returns:
        (X', Y', Zk) for a single geometry, (B, 1, X', Y', Zk) for a batch.
    """
    pad = as_triple(padding)
    pshape = tuple(int(s) + 2 * p for s, p in zip(shape, pad, strict=True))
    vs = torch.as_tensor(voxel_size, dtype=torch.float32).cpu()
    b0 = torch.as_tensor(b0_dir, dtype=torch.float32).cpu()
    if vs.ndim == 1 and b0.ndim == 1:
        return dipole_kernel(pshape, vs.tolist(), b0, device=device)
    n = max(vs.shape[0] if vs.ndim == 2 else 1, b0.shape[0] if b0.ndim == 2 else 1)
    vs = vs.reshape(-1, 3).expand(n, 3)
    b0 = b0.reshape(-1, 3).expand(n, 3)
    if torch.all(vs == vs[:1]):
        return dipole_kernel(pshape, vs[0].tolist(), b0.to(device), device=device)
    return torch.stack([dipole_kernel(pshape, v.tolist(), b.to(device), device=device)
                        for v, b in zip(vs, b0, strict=True)]).unsqueeze(1)


def forward_field(chi: torch.Tensor, voxel_size, b0_dir, *, padding=0,
                  kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Field (ppm) of a susceptibility distribution (ppm): crop(F^-1 D F pad(chi)).

    Args:
        chi: (X, Y, Z) with a single geometry, or (B, C, X, Y, Z) with per-sample geometry.
        voxel_size, b0_dir: (3,) or (B, 3).
        kernel: precomputed :func:`dipole_kernels` output (optional).

    For a single geometry this equals ``DipoleOperator(shape, voxel_size, b0_dir,
    padding=padding).forward(chi)``.
    """
    shape = tuple(chi.shape[-3:])
    if kernel is None:
        kernel = dipole_kernels(shape, voxel_size, b0_dir, padding=padding, device=chi.device)
    pad = as_triple(padding)
    pshape = tuple(s + 2 * p for s, p in zip(shape, pad, strict=True))
    return crop3(irfft3(rfft3(pad3(chi, pad)) * kernel, pshape), pad)


def local_field(chi: torch.Tensor, mask: torch.Tensor, voxel_size, b0_dir, *, padding=0,
                kernel: torch.Tensor | None = None) -> torch.Tensor:
    """``mask * D(mask * chi)``: the field of the sources inside ``mask``, inside it (ppm)."""
    m = mask.to(chi.dtype)
    return m * forward_field(chi * m, voxel_size, b0_dir, padding=padding, kernel=kernel)


def shim_field(shape: Sequence[int], voxel_size, amplitude_ppm: float, generator, *,
               scale_mm=None, device=None) -> torch.Tensor:
    """A random second-order polynomial field (ppm) such as an imperfect shim leaves, (X, Y, Z).

    Coefficients of the 9 terms (constant, linear, second order in coordinates normalised by
    ``scale_mm``, default half the field of view) are uniform in +-``amplitude_ppm``.
    """
    return random_polynomial_field(shape, voxel_size, amplitude_ppm, generator, order=2,
                                   scale_mm=scale_mm, device=device)


def total_field(chi_all: torch.Tensor, voxel_size, b0_dir, *, chi_outside: float = 0.0,
                padding=0, shim: torch.Tensor | None = None) -> torch.Tensor:
    """Field (ppm) of all sources, the region beyond the field of view having ``chi_outside``.

    ``chi_outside`` is subtracted before the (zero-padded) convolution so that padding stands
    for that medium (e.g. air, +9.4 ppm relative to tissue); a constant has no field.
    """
    f = forward_field(chi_all - chi_outside, voxel_size, b0_dir, padding=padding)
    return f if shim is None else f + shim


def affine_for(shape: Sequence[int], voxel_size, b0_dir=(0.0, 0.0, 1.0)) -> np.ndarray:
    """A NIfTI affine whose B0 direction in voxel coordinates is ``b0_dir`` (world B0 = +z).

    The volume centre sits at world (0, 0, 0); the rotation is the smallest one taking the
    voxel axes so that ``b0_dir_from_affine(affine) == b0_dir``. An axial scan (b0 = z) gives
    a diagonal affine.
    """
    b = normalize_b0_dir(b0_dir)
    vox = normalize_voxel_size(voxel_size)
    helper = np.array([0.0, 1.0, 0.0]) if abs(b[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(helper, b)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(b, e1)
    rot = np.stack([e1, e2, b])  # rows; rot.T @ z = b
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(vox)
    a[:3, 3] = -a[:3, :3] @ ((np.asarray(shape, dtype=float) - 1) / 2)
    return a


def dipole_operator(shape: Sequence[int], voxel_size, b0_dir, *, padding=0,
                    device=None) -> DipoleOperator:
    """The shared :class:`DipoleOperator` for one geometry (convenience)."""
    return DipoleOperator(shape, voxel_size, b0_dir, padding=padding, device=device)
