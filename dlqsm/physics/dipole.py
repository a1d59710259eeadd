"""The dipole kernel and the dipole convolution operator.

D(k) = 1/3 - (k . b)^2 / |k|^2 with D(0) = 0, where k is the spatial frequency in cycles/mm
(anisotropic voxels honoured) and b the unit B0 direction in voxel coordinates. The field
(ppm) of a susceptibility map chi (ppm) is F^-1[D F chi] (Lorentz sphere correction included:
the field inside a uniformly magnetised sphere is zero). One operator, :class:`DipoleOperator`,
serves the simulator, the classical inversions and the physics losses of the networks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dlqsm.physics.fft import as_triple, crop3, irfft3, kspace_grid, pad3, rfft3
from dlqsm.physics.geometry import B0Dir, as_voxel_size, normalize_b0_dir, normalize_voxel_size
from dlqsm.physics.operators import LinearOperator


def _b0_tensor(b0_dir, device, dtype) -> torch.Tensor:
    if isinstance(b0_dir, torch.Tensor):
        b = b0_dir.to(device=device, dtype=dtype)
        if b.ndim == 1:
            b = b.view(1, 3)
        norm = torch.linalg.norm(b, dim=-1, keepdim=True)
        if torch.any(norm == 0):
            raise ValueError("B0 direction must be non-zero")
        return b / norm
    if isinstance(b0_dir, B0Dir):  # validated already: not checked again
        return torch.tensor([b0_dir], device=device, dtype=dtype)
    b = np.asarray(b0_dir, dtype=np.float64)
    if b.ndim == 1:
        b = normalize_b0_dir(b)[None]
    else:
        b = np.stack([normalize_b0_dir(v) for v in b])
    return torch.as_tensor(b, device=device, dtype=dtype)


def _without_nyquist(k: torch.Tensor, n: int) -> torch.Tensor:
    """A frequency axis (broadcastable view) with its Nyquist sample set to 0 for even n."""
    if n % 2:
        return k
    k = k.clone()
    k.view(-1)[n // 2] = 0.0  # index n//2 is the Nyquist sample of fftfreq and rfftfreq
    return k


def dipole_kernel(shape: Sequence[int], voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), *,
                  half: bool = True, device=None, dtype=torch.float32) -> torch.Tensor:
    """Dipole kernel D(k) on the FFT grid of ``shape``.

    Args:
        shape: spatial shape (X, Y, Z) of the (padded) grid.
        voxel_size: voxel size in mm, three numbers.
        b0_dir: unit B0 vector in voxel coordinates, shape (3,), or (B, 3) for one kernel per
            batch element (numpy or torch; normalised here).
        half: return the ``rfft`` half spectrum (last axis Z//2 + 1) if True.

    Returns:
        (X, Y, Zk) real tensor for a single direction, (B, 1, X, Y, Zk) for a batch of them.

    On the Nyquist plane of an even-sized axis, where +1/2 and -1/2 cycles/voxel are the same
    sample, D is the average over the two aliases, so that D(k) = D(-k) holds exactly on the
    grid for every B0 direction (the operator stays real and the half spectrum equals the full
    one). Without this, oblique B0 directions gave an asymmetric kernel there.
    """
    vox = normalize_voxel_size(voxel_size)
    if device is None and isinstance(b0_dir, torch.Tensor):
        device = b0_dir.device
    ks = kspace_grid(shape, vox, half=half, device=device, dtype=dtype)
    b = _b0_tensor(b0_dir, device, dtype)  # (B, 3)
    bs = [b[:, i].view(-1, 1, 1, 1) for i in range(3)]
    k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
    k2[0, 0, 0] = 1.0
    # (k.b)^2 averaged over the aliases +-1/2 of a Nyquist sample (even axes): the cross terms
    # with a Nyquist component vanish. The sampled kernel is then exactly even (D[i] == D[-i]),
    # its image-space kernel is real, and the half and full spectra agree.
    kt = [_without_nyquist(k, int(n)) for k, n in zip(ks, shape, strict=True)]
    kb2 = (kt[0] * bs[0] + kt[1] * bs[1] + kt[2] * bs[2]) ** 2
    kb2 = kb2 + sum((k ** 2 - t ** 2) * bi ** 2 for k, t, bi in zip(ks, kt, bs, strict=True))
    d = 1.0 / 3.0 - kb2 / k2
    d[:, 0, 0, 0] = 0.0
    if not isinstance(b0_dir, torch.Tensor) and np.asarray(b0_dir).ndim == 1:
        return d[0]
    if isinstance(b0_dir, torch.Tensor) and b0_dir.ndim == 1:
        return d[0]
    return d.unsqueeze(1)


def tkd_filter(kernel: torch.Tensor, threshold: float = 0.19) -> torch.Tensor:
    """Truncated k-space division filter: 1/D where |D| > t, else sign(D)/t (0 at D = 0).

    Args:
        kernel: dipole kernel D(k) (any shape).
        threshold: truncation level t (0 < t <= 2/3); smaller values amplify noise more.
    """
    sign = torch.where(kernel >= 0, 1.0, -1.0).to(kernel.dtype)
    safe = torch.where(kernel.abs() > threshold, kernel, sign * threshold)
    inv = 1.0 / safe
    return torch.where(kernel == 0, torch.zeros_like(inv), inv)


class DipoleOperator(LinearOperator):
    """chi (ppm) -> field (ppm): zero-pad, multiply by D(k) in k-space, crop.

    The operator is real and self-adjoint (D is real and even), so ``adjoint == forward``.
    Inputs have shape (..., X, Y, Z); with a batch of B0 directions (B, 3) the input must be
    (B, C, X, Y, Z) (or (1, C, X, Y, Z): one object seen at B orientations). Works on
    whichever device the kernel lives on (``.to(device)``).

    Args:
        shape: spatial shape (X, Y, Z) of the unpadded volume.
        voxel_size: mm.
        b0_dir: unit B0 vector(s) in voxel coordinates, (3,) or (B, 3).
        padding: zero-padding in voxels on each side (int or three ints); avoids the periodic
            wrap-around of the FFT convolution at the cost of a larger FFT.
    """

    def __init__(self, shape, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), *,
                 padding=0, device=None, dtype=torch.float32):
        self.shape = tuple(int(s) for s in shape)
        self.voxel_size = as_voxel_size(voxel_size)
        self.padding = as_triple(padding)
        self.padded_shape = tuple(s + 2 * p for s, p in zip(self.shape, self.padding, strict=True))
        self.kernel = dipole_kernel(self.padded_shape, self.voxel_size, b0_dir, half=True,
                                    device=device, dtype=dtype)
        self.b0_dir = b0_dir

    @property
    def device(self) -> torch.device:
        return self.kernel.device

    def to(self, device) -> DipoleOperator:
        """Move the kernel to ``device`` (in place) and return self."""
        self.kernel = self.kernel.to(device)
        return self

    def _check(self, x: torch.Tensor):
        if tuple(x.shape[-3:]) != self.shape:
            raise ValueError(f"expected spatial shape {self.shape}, got {tuple(x.shape[-3:])}")
        n = self.kernel.shape[0] if self.kernel.ndim == 5 else None
        if n is not None and (x.ndim != 5 or x.shape[0] not in (1, n)):
            # a (C, X, Y, Z) input would broadcast against (B, 1, ...) kernels without error
            raise ValueError(f"{n} B0 directions need input (B={n} or 1, C, X, Y, Z), "
                             f"got {tuple(x.shape)}")

    def apply_kspace(self, x: torch.Tensor, kfilter: torch.Tensor) -> torch.Tensor:
        """Pad x, multiply its half spectrum by ``kfilter`` (padded grid), transform back, crop."""
        self._check(x)
        xp = pad3(x, self.padding)
        y = irfft3(rfft3(xp) * kfilter, self.padded_shape)
        return crop3(y, self.padding)

    def forward(self, chi: torch.Tensor) -> torch.Tensor:
        return self.apply_kspace(chi, self.kernel)

    def adjoint(self, field: torch.Tensor) -> torch.Tensor:
        return self.apply_kspace(field, self.kernel)
