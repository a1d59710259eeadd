"""Smooth and fine random textures, polynomial fields and the voxel coordinate grid.

Textures are zero-mean, unit-variance random fields with a given correlation length in mm:
white Gaussian noise on a coarse grid (spacing = correlation length) interpolated trilinearly to
the voxel grid. Used for susceptibility textures, gyral folding, M0/R2* variation, smooth phase
offsets and coil sensitivities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dlqsm.simulation.rng import randn


def grid_coords(shape: Sequence[int], voxel_size, *, device=None,
                dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel-centre coordinates in mm relative to the volume centre.

    Coordinate of index i along an axis of N voxels of size h is (i - (N - 1) / 2) * h.

    Returns:
        (x, y, z) of shapes (X, 1, 1), (1, Y, 1), (1, 1, Z) (broadcastable).
    """
    out = []
    for axis, (n, h) in enumerate(zip(shape, voxel_size, strict=True)):
        c = (torch.arange(int(n), device=device, dtype=dtype) - (int(n) - 1) / 2) * float(h)
        view = [1, 1, 1]
        view[axis] = -1
        out.append(c.view(view))
    return out[0], out[1], out[2]


def smooth_noise(shape: Sequence[int], voxel_size, corr_mm: float, generator, *,
                 batch: int | None = None, device=None, normalize: bool = True) -> torch.Tensor:
    """Random smooth field with correlation length ``corr_mm`` (mm).

    White Gaussian noise on a coarse grid spanning the field of view with spacing about
    ``corr_mm``, trilinearly interpolated to the voxel grid. With ``normalize`` each volume is
    shifted and scaled to zero mean and unit standard deviation.

    Args:
        shape: (X, Y, Z). voxel_size: mm (three numbers).
        batch: if given, return (batch, X, Y, Z) independent fields; else (X, Y, Z).

    Returns:
        float32 tensor on ``device``.
    """
    shape = tuple(int(s) for s in shape)
    nb = 1 if batch is None else int(batch)
    coarse = []
    for n, h in zip(shape, voxel_size, strict=True):
        fov = n * float(h)
        coarse.append(max(2, min(n, int(math.ceil(fov / max(float(corr_mm), 1e-6))) + 1)))
    if list(coarse) == list(shape):
        out = randn(generator, nb, *shape, device=device)
    else:
        small = randn(generator, nb, 1, *coarse, device=device)
        out = F.interpolate(small, size=shape, mode="trilinear", align_corners=True)[:, 0]
    if normalize:
        flat = out.reshape(nb, -1)
        mean = flat.mean(dim=1).view(nb, 1, 1, 1)
        std = flat.std(dim=1).clamp_min(1e-6).view(nb, 1, 1, 1)
        out = (out - mean) / std
    return out if batch is not None else out[0]


def polynomial_basis(shape: Sequence[int], voxel_size, order: int = 2, *, scale_mm=None,
                     center_mm=(0.0, 0.0, 0.0), device=None) -> torch.Tensor:
    """Real polynomials up to ``order`` (<= 2) in normalised coordinates, (K, X, Y, Z).

    Coordinates are (x - center) / scale with ``scale_mm`` half the largest field-of-view
    extent by default (one scale for all axes keeps the terms harmonic, like the spherical
    harmonics of a shim), so terms are O(1) over the volume. Order 2 gives the 9 terms of a
    second-order shim (1, x, y, z, xy, xz, yz, x^2 - y^2, 2z^2 - x^2 - y^2); order 1 the
    first 4. All of them have zero Laplacian.
    """
    if order not in (0, 1, 2):
        raise ValueError(f"order must be 0, 1 or 2, got {order}")
    x, y, z = grid_coords(shape, voxel_size, device=device)
    if scale_mm is None:
        scale_mm = max(n * float(h) / 2 for n, h in zip(shape, voxel_size, strict=True))
    sx, sy, sz = (float(s) for s in torch.as_tensor(scale_mm).expand(3))
    x, y, z = ((x - center_mm[0]) / sx, (y - center_mm[1]) / sy, (z - center_mm[2]) / sz)
    full = tuple(int(s) for s in shape)
    terms = [torch.ones(full, device=device)]
    if order >= 1:
        terms += [x, y, z]
    if order >= 2:
        terms += [x * y, x * z, y * z, x * x - y * y, 2 * z * z - x * x - y * y]
    return torch.stack([t.expand(full) for t in terms])


def random_polynomial_field(shape: Sequence[int], voxel_size, amplitude: float, generator, *,
                            order: int = 2, scale_mm=None, center_mm=(0.0, 0.0, 0.0),
                            include_constant: bool = True, device=None) -> torch.Tensor:
    """Sum of the :func:`polynomial_basis` terms with coefficients uniform in +-``amplitude``,
    (X, Y, Z) (accumulated term by term, without storing the basis)."""
    n_terms = {0: 1, 1: 4, 2: 9}[order]
    coef = ((2 * torch.rand(n_terms, generator=generator, device=generator.device) - 1)
            * amplitude).tolist()
    if not include_constant:
        coef[0] = 0.0
    x, y, z = grid_coords(shape, voxel_size, device=device)
    if scale_mm is None:
        scale_mm = max(n * float(h) / 2 for n, h in zip(shape, voxel_size, strict=True))
    sx, sy, sz = (float(s) for s in torch.as_tensor(scale_mm).expand(3))
    x, y, z = ((x - center_mm[0]) / sx, (y - center_mm[1]) / sy, (z - center_mm[2]) / sz)
    out = torch.full(tuple(int(s) for s in shape), coef[0], device=device)
    if order >= 1:
        out = out + (coef[1] * x + coef[2] * y) + coef[3] * z
    if order >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out = (out + (coef[4] * x) * y + (coef[5] * x) * z + (coef[6] * y) * z
               + (coef[7] * xx - coef[7] * yy) + (2 * coef[8] * zz - coef[8] * xx - coef[8] * yy))
    return out
