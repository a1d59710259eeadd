"""B0 geometry: the B0 direction and voxel size from a NIfTI affine.

The affine maps voxel indices to RAS+ world coordinates (nibabel convention). For a head-first
supine scan the main field points along world +z. The B0 direction in *voxel coordinates* is the
world direction expressed in the (orthonormalised) voxel axes, so that the dipole kernel can be
built on the voxel grid of the file without resampling. Oblique slices are the common case.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

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


class VoxelSize(tuple):
    """A validated voxel size: three positive finite floats, mm, one per array axis.

    Built by :func:`as_voxel_size` (or ``VoxelSize(value)``), which checks once; functions that
    receive a ``VoxelSize`` trust it (:func:`normalize_voxel_size` returns it without checking
    again). It is a tuple, so it compares equal to ``(1.0, 1.0, 1.0)``.
    """

    __slots__ = ()

    def __new__(cls, value=(1.0, 1.0, 1.0)):
        if isinstance(value, VoxelSize):
            return value
        if isinstance(value, Iterator):  # e.g. dataclasses.asdict rebuilding a field
            value = list(value)
        return super().__new__(cls, (float(v) for v in _validated_voxel_size(value)))


class B0Dir(tuple):
    """A validated B0 direction: a unit 3-vector (floats) in voxel coordinates.

    Built by :func:`as_b0_dir` (or ``B0Dir(value)``), which checks and normalises once;
    functions that receive a ``B0Dir`` trust it (:func:`normalize_b0_dir` does not re-check it).
    """

    __slots__ = ()

    def __new__(cls, value=(0.0, 0.0, 1.0)):
        if isinstance(value, B0Dir):
            return value
        if isinstance(value, Iterator):
            value = list(value)
        return super().__new__(cls, (float(v) for v in _validated_b0_dir(value)))


def _validated_b0_dir(b0_dir) -> np.ndarray:
    """The one check of a B0 direction: three finite numbers, not all 0 -> unit vector."""
    b = np.asarray(b0_dir, dtype=np.float64).reshape(-1)
    if b.shape != (3,) or not np.all(np.isfinite(b)):
        raise InputError(f"a B0 direction needs three finite numbers, got {b0_dir!r}.")
    n = np.linalg.norm(b)
    if n == 0:
        raise InputError("the B0 direction is the zero vector.", fix="give e.g. 0 0 1.")
    return b / n


def _validated_voxel_size(voxel_size) -> np.ndarray:
    """The one check of a voxel size: one or three positive finite numbers (mm) -> (3,)."""
    v = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, 3)
    if v.shape != (3,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(f"a voxel size needs three positive numbers in mm, got {voxel_size!r}.")
    return v


def as_voxel_size(voxel_size) -> VoxelSize:
    """Validate a voxel size once (one or three positive finite numbers, mm) -> :class:`VoxelSize`;
    a ``VoxelSize`` is returned as it is.

    Raises:
        InputError: not one or three positive finite numbers.
    """
    return VoxelSize(voxel_size)


def as_b0_dir(b0_dir) -> B0Dir:
    """Validate and normalise a B0 direction once -> :class:`B0Dir` (unit vector, voxel
    coordinates); a ``B0Dir`` is returned as it is.

    Raises:
        InputError: not three finite numbers, or the zero vector.
    """
    return B0Dir(b0_dir)


def normalize_b0_dir(b0_dir) -> np.ndarray:
    """A B0 vector as a unit numpy vector (3,): checked and normalised, unless it is a
    :class:`B0Dir` (validated already: returned as an array, not checked again)."""
    if isinstance(b0_dir, B0Dir):
        return np.array(b0_dir, dtype=np.float64)
    return _validated_b0_dir(b0_dir)


def normalize_voxel_size(voxel_size) -> np.ndarray:
    """A voxel size as a numpy vector (3,) in mm: checked (three positive finite numbers, or one
    for all axes), unless it is a :class:`VoxelSize` (validated already: not checked again)."""
    if isinstance(voxel_size, VoxelSize):
        return np.array(voxel_size, dtype=np.float64)
    return _validated_voxel_size(voxel_size)


@dataclass(frozen=True)
class Geometry:
    """The validated geometry of a volume: grid shape, voxel size, B0 direction, affine.

    Build it with :meth:`Geometry.create` (the one place these values are checked, at the
    boundary: the scan loader, the command line, dataset loaders) and pass it (or its
    ``voxel_size`` / ``b0_dir``) down: the stages trust it.

    Attributes:
        shape: spatial shape (X, Y, Z), three positive ints.
        voxel_size: :class:`VoxelSize`, mm.
        b0_dir: :class:`B0Dir`, unit vector in voxel coordinates.
        affine: (4, 4) voxel-to-world (RAS+) matrix (read-only array), or None.
    """

    shape: tuple[int, int, int]
    voxel_size: VoxelSize
    b0_dir: B0Dir
    affine: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def create(cls, shape, voxel_size, b0_dir=(0.0, 0.0, 1.0), affine=None) -> Geometry:
        """Check every value once and return the geometry.

        Args:
            shape: (X, Y, Z) (a longer shape's last three entries are used).
            voxel_size: one or three positive numbers, mm (a :class:`VoxelSize` is trusted).
            b0_dir: three numbers, not all zero; normalised (a :class:`B0Dir` is trusted).
            affine: optional (4, 4) finite matrix.

        Raises:
            InputError: naming the bad value.
        """
        aff = None if affine is None else _checked_affine(affine)
        return cls(_grid_shape(shape), as_voxel_size(voxel_size), as_b0_dir(b0_dir), aff)

    @classmethod
    def from_affine(cls, shape, affine, *, voxel_size=None, b0_dir=None,
                    path=None) -> Geometry:
        """The geometry of a NIfTI grid: voxel size and B0 direction from the affine (world +z)
        unless given, every value checked once.

        Args:
            shape: (X, Y, Z).
            affine: (4, 4) voxel-to-world (RAS+) matrix.
            voxel_size, b0_dir: explicit values (they win over the affine's).
            path: the file (or "command line") the affine came from, for error messages.

        Raises:
            InputError: a non-finite or non-4x4 affine, a zero voxel size from the affine, a
                singular affine without an explicit B0 direction, or a bad explicit value.
        """
        aff = _checked_affine(affine, path)
        if voxel_size is None:
            vox = voxel_size_from_affine(aff)
            if np.any(vox <= 0):
                raise InputError("the affine gives a zero voxel size.", path=path,
                                 fix="repair the NIfTI header or pass --voxel-size.")
            voxel_size = vox
        if b0_dir is None:
            b0_dir = b0_dir_from_affine(aff)
        return cls(_grid_shape(shape), as_voxel_size(voxel_size), as_b0_dir(b0_dir), aff)


def _grid_shape(shape) -> tuple[int, int, int]:
    sp = tuple(int(s) for s in tuple(shape)[-3:])
    if len(sp) != 3 or any(s <= 0 for s in sp):
        raise InputError(f"a volume needs three positive grid sizes, got {tuple(shape)}.")
    return sp


def _checked_affine(affine, path=None) -> np.ndarray:
    """A read-only float64 copy of a finite (4, 4) affine; InputError (naming ``path``) else."""
    aff = np.array(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise InputError(f"the affine must be a finite 4x4 matrix, got shape {aff.shape}.",
                         path=path)
    aff.setflags(write=False)
    return aff


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
