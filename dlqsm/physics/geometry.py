"""B0 geometry: the B0 direction and voxel size from a NIfTI affine.

The affine maps voxel indices to RAS+ world coordinates (nibabel convention). For a head-first
supine scan the main field points along world +z. The B0 direction in *voxel coordinates* is the
world direction expressed in the (orthonormalised) voxel axes, so that the dipole kernel can be
built on the voxel grid of the file without resampling. Oblique slices are the common case.
"""

from __future__ import annotations

import numpy as np

from dlqsm.errors import InputError


def voxel_size_from_affine(affine) -> np.ndarray:
    """Voxel size (mm) of each array axis: the norms of the affine's first three columns."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return np.linalg.norm(a, axis=0)


def b0_dir_from_affine(affine, b0_world=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Unit B0 vector in voxel coordinates, shape (3,).

    Args:
        affine: (4, 4) voxel-to-world (RAS+) matrix.
        b0_world: B0 direction in world coordinates; +z for a head-first scan.

    Raises:
        InputError: for a singular affine or a zero B0 vector.
    """
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    vox = np.linalg.norm(a, axis=0)
    if np.any(vox == 0) or abs(np.linalg.det(a)) < 1e-12:
        raise InputError("the NIfTI affine is singular (a zero voxel size or degenerate axes).",
                         fix="repair the header (qform/sform) or pass --b0-dir and --voxel-size.")
    b = np.asarray(b0_world, dtype=np.float64)
    if np.linalg.norm(b) == 0:
        raise InputError("the B0 direction is the zero vector.", fix="give a non-zero B0 vector.")
    rot = a / vox  # columns: unit world vectors of the voxel axes
    bv = np.linalg.solve(rot, b)  # = rot.T @ b for an orthonormal (unsheared) affine
    return bv / np.linalg.norm(bv)


def normalize_b0_dir(b0_dir) -> np.ndarray:
    """Validate and normalise a user-given B0 vector to unit length."""
    b = np.asarray(b0_dir, dtype=np.float64).reshape(-1)
    if b.shape != (3,) or not np.all(np.isfinite(b)):
        raise InputError(f"a B0 direction needs three finite numbers, got {b0_dir!r}.")
    n = np.linalg.norm(b)
    if n == 0:
        raise InputError("the B0 direction is the zero vector.", fix="give e.g. 0 0 1.")
    return b / n


def normalize_voxel_size(voxel_size) -> np.ndarray:
    """Validate a voxel size: three positive finite numbers (mm)."""
    v = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, 3)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(f"a voxel size needs three positive numbers in mm, got {voxel_size!r}.")
    return v


def rotation_matrix(axis, angle_rad: float) -> np.ndarray:
    """3x3 rotation about ``axis`` by ``angle_rad`` (right-handed, Rodrigues)."""
    k = normalize_b0_dir(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * kx + (1 - np.cos(angle_rad)) * (kx @ kx)


def angle_to_b0(b0_dir, axis=(0.0, 0.0, 1.0)) -> float:
    """Angle in degrees between a B0 direction and a voxel axis (0 for an axial scan)."""
    b = normalize_b0_dir(b0_dir)
    a = normalize_b0_dir(axis)
    return float(np.degrees(np.arccos(np.clip(abs(b @ a), -1.0, 1.0))))
