"""FFT helpers over the last three (spatial) dimensions, k-space grids and padding.

All functions work on CPU and CUDA tensors and keep the device of their input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

DIMS = (-3, -2, -1)


def rfft3(x: torch.Tensor) -> torch.Tensor:
    """Real 3D FFT over the last three dimensions (half spectrum on the last one)."""
    return torch.fft.rfftn(x, dim=DIMS)


def irfft3(k: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`rfft3` for a spatial ``shape`` (X, Y, Z)."""
    return torch.fft.irfftn(k, s=tuple(shape), dim=DIMS)


def fft3(x: torch.Tensor) -> torch.Tensor:
    """Complex 3D FFT over the last three dimensions."""
    return torch.fft.fftn(x, dim=DIMS)


def ifft3(k: torch.Tensor) -> torch.Tensor:
    """Complex inverse 3D FFT over the last three dimensions."""
    return torch.fft.ifftn(k, dim=DIMS)


def kspace_grid(shape: Sequence[int], voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *,
                half: bool = True, device=None, dtype=torch.float32):
    """Spatial frequencies (cycles/mm) of a grid, as three broadcastable tensors.

    Args:
        shape: spatial shape (X, Y, Z).
        voxel_size: voxel size in mm along each axis.
        half: if True the last axis holds the ``rfft`` half spectrum (Z//2 + 1 values).

    Returns:
        (kx, ky, kz) of shapes (X,1,1), (1,Y,1), (1,1,Zk).
    """
    nx, ny, nz = (int(s) for s in shape)
    dx, dy, dz = (float(v) for v in voxel_size)
    kx = torch.fft.fftfreq(nx, d=dx, device=device, dtype=dtype).view(-1, 1, 1)
    ky = torch.fft.fftfreq(ny, d=dy, device=device, dtype=dtype).view(1, -1, 1)
    fz = torch.fft.rfftfreq if half else torch.fft.fftfreq
    kz = fz(nz, d=dz, device=device, dtype=dtype).view(1, 1, -1)
    return kx, ky, kz


def as_triple(padding) -> tuple[int, int, int]:
    """Padding given as an int or three ints -> three non-negative ints."""
    if isinstance(padding, int):
        padding = (padding,) * 3
    p = tuple(int(v) for v in padding)
    if len(p) != 3 or min(p) < 0:
        raise ValueError(f"padding must be a non-negative int or three of them, got {padding!r}")
    return p


def pad3(x: torch.Tensor, padding) -> torch.Tensor:
    """Zero-pad the last three dimensions symmetrically by ``padding`` voxels each side."""
    px, py, pz = as_triple(padding)
    if px == py == pz == 0:
        return x
    return F.pad(x, (pz, pz, py, py, px, px))


def crop3(x: torch.Tensor, padding) -> torch.Tensor:
    """Adjoint of :func:`pad3`: remove ``padding`` voxels each side of the last three dims."""
    px, py, pz = as_triple(padding)
    X, Y, Z = x.shape[-3:]
    return x[..., px:X - px, py:Y - py, pz:Z - pz]


def fft_friendly(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1
