"""Physics for networks: the dipole operator built per batch from each sample's geometry.

A training batch holds volumes ``(B, 1, X, Y, Z)`` with one B0 direction ``(B, 3)`` and one voxel
size ``(B, 3)`` per sample. :func:`batch_dipole` builds :class:`dlqsm.physics.DipoleOperator`
objects for the batch: one operator with a batched kernel ``(B, 1, X, Y, Zk)`` when all samples
share a voxel size (the common case), else one operator per group of equal voxel sizes.
"""

from __future__ import annotations

import torch

from dlqsm.physics.dipole import DipoleOperator, tkd_filter
from dlqsm.pipeline.batched import DEFAULT_B0, DEFAULT_VOXEL, per_sample

__all__ = ["DEFAULT_B0", "DEFAULT_VOXEL", "BatchDipole", "batch_dipole", "per_sample", "tkd",
           "tkd_filter"]


def _fft_dtype(x: torch.Tensor) -> torch.Tensor:
    """Upcast float16/bfloat16 (mixed-precision training) to float32 for the FFTs."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class BatchDipole:
    """Dipole convolution of a batch ``(B, C, X, Y, Z)`` with per-sample B0 and voxel size.

    Args:
        shape: spatial shape (X, Y, Z).
        voxel_size: mm, (3,) or (B, 3); None means 1 mm isotropic.
        b0_dir: unit B0 vectors in voxel coordinates, (3,) or (B, 3); None means (0, 0, 1).
        batch: B.
        padding: zero-padding in voxels each side (see :class:`DipoleOperator`).
        device, dtype: where the kernels live.

    The operator is linear and self-adjoint; ``forward(chi)`` gives the field in the units of
    ``chi`` (ppm in, ppm out).
    """

    def __init__(self, shape, voxel_size, b0_dir, batch: int, *, padding=0, device=None,
                 dtype=torch.float32):
        vox = per_sample(voxel_size, batch, DEFAULT_VOXEL, device)
        b0 = per_sample(b0_dir, batch, DEFAULT_B0, device)
        self.batch = batch
        self.groups: list[tuple[torch.Tensor, DipoleOperator]] = []
        unique = torch.unique(vox, dim=0)
        for v in unique:
            idx = torch.nonzero(torch.all(vox == v, dim=1)).flatten()
            op = DipoleOperator(shape, v.tolist(), b0[idx].to(device=device, dtype=dtype),
                                padding=padding, device=device, dtype=dtype)
            self.groups.append((idx.to(device), op))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """D x for x of shape (B, C, X, Y, Z) (float32 result; half inputs are upcast)."""
        x = _fft_dtype(x)
        if x.shape[0] != self.batch:
            raise ValueError(f"batch size {x.shape[0]} != operator batch {self.batch}")
        if len(self.groups) == 1:
            return self.groups[0][1].forward(x)
        out = torch.empty_like(x)
        for idx, op in self.groups:
            out[idx] = op.forward(x[idx])
        return out

    __call__ = forward

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """D^H y (= D y: the dipole operator is self-adjoint)."""
        return self.forward(y)

    def apply_kspace(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Apply the k-space filter ``fn(kernel)`` (a function of each group's kernel) to x."""
        x = _fft_dtype(x)
        if len(self.groups) == 1:
            op = self.groups[0][1]
            return op.apply_kspace(x, fn(op.kernel))
        out = torch.empty_like(x)
        for idx, op in self.groups:
            out[idx] = op.apply_kspace(x[idx], fn(op.kernel))
        return out


def batch_dipole(field: torch.Tensor, voxel_size=None, b0_dir=None, *, padding=0) -> BatchDipole:
    """The :class:`BatchDipole` matching a batch ``field`` (B, C, X, Y, Z) on its device."""
    return BatchDipole(field.shape[-3:], voxel_size, b0_dir, field.shape[0], padding=padding,
                       device=field.device, dtype=torch.float32)


def tkd(field: torch.Tensor, op: BatchDipole, threshold: float = 0.19) -> torch.Tensor:
    """Thresholded k-space division chi = F^-1[F(field) * TKD(D)] (ppm in, ppm out)."""
    return op.apply_kspace(field, lambda k: tkd_filter(k, threshold))
