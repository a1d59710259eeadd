"""Other k-space kernels: spherical mean value (SMV) and discrete Laplacian.

Used by background field removal (SHARP family), Laplacian unwrapping and LBV.
"""

from __future__ import annotations

import torch

from dlqsm.physics.fft import kspace_grid, rfft3
from dlqsm.physics.geometry import as_voxel_size, normalize_voxel_size


def sphere_mask(shape, voxel_size, radius_mm: float, *, device=None) -> torch.Tensor:
    """Boolean ball of ``radius_mm`` centred at voxel (0, 0, 0) with periodic wrap, (X, Y, Z)."""
    vox = normalize_voxel_size(voxel_size)
    coords = []
    for n, h in zip(shape, vox, strict=True):
        i = torch.arange(n, device=device, dtype=torch.float64)
        i = torch.where(i > n // 2, i - n, i)
        coords.append(i * h)
    x, y, z = torch.meshgrid(*coords, indexing="ij")
    return (x ** 2 + y ** 2 + z ** 2) <= radius_mm ** 2 + 1e-9


def smv_kernel(shape, voxel_size, radius_mm: float, *, device=None,
               dtype=torch.float32) -> torch.Tensor:
    """Half-spectrum transfer function of the normalised spherical mean (radius in mm).

    Multiplying a field's spectrum by S gives its spherical mean over a ball of ``radius_mm``;
    harmonic (background) fields are unchanged by it, so (1 - S) removes them.
    """
    ball = sphere_mask(shape, as_voxel_size(voxel_size), radius_mm, device=device)
    ball = ball.to(dtype) / ball.sum().item()
    return rfft3(ball).real


def laplacian_kernel(shape, voxel_size=(1.0, 1.0, 1.0), *, device=None,
                     dtype=torch.float32) -> torch.Tensor:
    """Half-spectrum transfer function of the 7-point discrete Laplacian (1/mm^2), periodic.

    L(k) = sum_i (2 cos(2 pi k_i h_i) - 2) / h_i^2 (non-positive, zero at k = 0).
    """
    vox = normalize_voxel_size(voxel_size)
    ks = kspace_grid(shape, vox, half=True, device=device, dtype=torch.float64)
    out = 0
    for k, h in zip(ks, vox, strict=True):
        out = out + (2 * torch.cos(2 * torch.pi * k * h) - 2) / h ** 2
    return out.to(dtype)
