"""The common interface of dlqsm networks and small shape helpers.

Every network maps a local field to a susceptibility map::

    chi = net(field, mask=None, b0_dir=None, voxel_size=None)

with ``field`` (B, 1, X, Y, Z) in ppm, ``mask`` (B, 1, X, Y, Z) (1 inside the brain),
``b0_dir`` (B, 3) unit vectors in voxel coordinates, ``voxel_size`` (B, 3) in mm, and ``chi``
(B, 1, X, Y, Z) in ppm. Networks that do not use the geometry ignore it. The scaling between
ppm and the network's internal units is part of the model (stored as buffers) and described by
:meth:`QSMModel.input_normalization`, which ends up in the exported ``metadata.json``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QSMModel(nn.Module):
    """Base class of dlqsm networks (see the module docstring for the call convention)."""

    def forward(self, field: torch.Tensor, mask: torch.Tensor | None = None,
                b0_dir: torch.Tensor | None = None,
                voxel_size: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def input_normalization(self) -> dict:
        """How ppm inputs are scaled for the network and outputs scaled back (for metadata)."""
        raise NotImplementedError  # pragma: no cover


def scalar(t: torch.Tensor) -> float:
    """A stored float32 scale as a short Python float (0.1, not 0.10000000149)."""
    return float(f"{float(t):.7g}")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Zero-pad the last three dims at their end up to a multiple of ``multiple``.

    Returns the padded tensor and the original spatial shape (for :func:`crop_to`).
    """
    shape = tuple(x.shape[-3:])
    if multiple <= 1:
        return x, shape
    extra = [(-s) % multiple for s in shape]
    if not any(extra):
        return x, shape
    return F.pad(x, (0, extra[2], 0, extra[1], 0, extra[0])), shape


def crop_to(x: torch.Tensor, shape) -> torch.Tensor:
    """Keep the first ``shape`` voxels of the last three dims (inverse of pad_to_multiple)."""
    return x[..., :shape[0], :shape[1], :shape[2]]


def apply_mask(chi: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """chi * mask when a mask is given (susceptibility is only defined inside it)."""
    return chi if mask is None else chi * mask.to(chi.dtype)
