"""Geometry of learned inference: a rotated, rescaled grid and trilinear resampling.

:func:`plan_geometry` chooses the grid a network sees for a scan (B0 along the network's axis,
the training voxel size); :class:`GridResampler` moves volumes between that grid and the scan
grid; :func:`masked_resample` does it inside a mask without pulling zeros in at the edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dlqsm.inference.spec import ModelSpec
from dlqsm.physics.geometry import (
    as_b0_dir,
    as_voxel_size,
    normalize_b0_dir,
    normalize_voxel_size,
    rotation_matrix,
)


def rotation_to_axis(b0_dir, axis=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Smallest rotation R (3x3) with ``R @ (+-b0_dir) = axis``.

    B0 and -B0 give the same dipole field, so the sign of ``b0_dir`` that is closer to ``axis``
    is used and the rotation angle is at most 90 degrees.
    """
    b = normalize_b0_dir(b0_dir)
    a = normalize_b0_dir(axis)
    if b @ a < 0:
        b = -b
    v = np.cross(b, a)
    s, c = np.linalg.norm(v), float(b @ a)
    if s < 1e-12:
        return np.eye(3)
    return rotation_matrix(v, math.atan2(s, c))


class GridResampler:
    """Trilinear resampling between a scan grid and a rotated grid of another voxel size.

    Physical coordinates (mm) are centred on each grid: a scan voxel at index i sits at
    ``p = v_s * (i - (S - 1) / 2)``; the model grid holds ``q = R p`` at
    ``q = v_m * (j - (M - 1) / 2)``. The model grid is the bounding box of the rotated scan, so
    every scan voxel has a model-grid neighbourhood. ``to_model`` and ``to_scan`` work on
    (B, C, ...) tensors on any device.

    Args:
        scan_shape: (X, Y, Z) of the scan.
        scan_voxel: scan voxel size (mm).
        model_voxel: voxel size (mm) of the target grid.
        rotation: 3x3 rotation R from scan axes to model axes (identity for none).
    """

    def __init__(self, scan_shape, scan_voxel, model_voxel, rotation=None):
        self.scan_shape = tuple(int(s) for s in scan_shape)
        self.scan_voxel = normalize_voxel_size(scan_voxel)
        self.model_voxel = normalize_voxel_size(model_voxel)
        self.rotation = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        half = (np.asarray(self.scan_shape) - 1) / 2 * self.scan_voxel
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        extent = np.abs(corners * half @ self.rotation.T).max(axis=0)
        self.model_shape = tuple(int(v) for v in np.ceil(2 * extent / self.model_voxel - 1e-6) + 1)

    @property
    def is_identity(self) -> bool:
        """True when no resampling is needed (no rotation, same voxel size)."""
        return bool(np.allclose(self.rotation, np.eye(3), atol=1e-7)
                    and np.allclose(self.scan_voxel, self.model_voxel, rtol=1e-4))

    def _sample(self, x, src_shape, src_voxel, dst_shape, dst_voxel, matrix, chunk=2 ** 22):
        """Sample ``x`` (on src grid) at the dst grid points mapped by ``matrix`` (dst->src mm)."""
        dev, dt = x.device, torch.float32
        src_c = (torch.tensor(src_shape, device=dev, dtype=dt) - 1) / 2
        dst_c = (torch.tensor(dst_shape, device=dev, dtype=dt) - 1) / 2
        m = torch.as_tensor(matrix, device=dev, dtype=dt)
        sv = torch.as_tensor(src_voxel, device=dev, dtype=dt)
        dv = torch.as_tensor(dst_voxel, device=dev, dtype=dt)
        denom = torch.clamp(src_c, min=0.5)
        X, Y, Z = dst_shape
        ys = torch.arange(Y, device=dev, dtype=dt)
        zs = torch.arange(Z, device=dev, dtype=dt)
        step = max(1, chunk // max(1, Y * Z))
        out = []
        for x0 in range(0, X, step):
            xs = torch.arange(x0, min(X, x0 + step), device=dev, dtype=dt)
            j = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1)
            p = ((j - dst_c) * dv) @ m.T  # source mm
            n = (p / sv) / denom  # normalised, align_corners=True
            grid = n.flip(-1).unsqueeze(0).expand(x.shape[0], -1, -1, -1, -1)
            out.append(F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=True))
        return torch.cat(out, dim=2)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *scan_shape) -> (B, C, *model_shape), trilinear."""
        if self.is_identity:
            return x
        return self._sample(x, self.scan_shape, self.scan_voxel, self.model_shape,
                            self.model_voxel, self.rotation.T)

    def to_scan(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, *model_shape) -> (B, C, *scan_shape), trilinear."""
        if self.is_identity:
            return y
        return self._sample(y, self.model_shape, self.model_voxel, self.scan_shape,
                            self.scan_voxel, self.rotation)


@dataclass
class GeometryPlan:
    """How one scan is presented to the network (see :func:`plan_geometry`)."""

    resampler: GridResampler
    net_b0_dir: tuple[float, float, float]
    net_voxel_size: tuple[float, float, float]
    rotation_deg: float

    def describe(self) -> dict:
        return {"resampled": not self.resampler.is_identity,
                "rotation_deg": round(self.rotation_deg, 4),
                "network_grid_shape": list(self.resampler.model_shape),
                "network_voxel_size_mm": list(self.net_voxel_size),
                "network_b0_dir": list(self.net_b0_dir)}


def plan_geometry(spec: ModelSpec, shape, voxel_size, b0_dir) -> GeometryPlan:
    """Choose the grid the network sees for a scan of ``shape``/``voxel_size``/``b0_dir``.

    B0-aware networks see the scan's B0 vector (no rotation); others see B0 along
    ``spec.b0_axis`` after rotation. The grid keeps the scan's voxel size (an isotropic one at
    the finest scan spacing when rotated) if the network is resolution-aware or was trained
    over a range of voxel sizes that contains it; otherwise it takes the training voxel size
    (:meth:`ModelSpec.target_voxel_size`).
    """
    vox = as_voxel_size(voxel_size)  # a Scan's validated values are not checked again
    b0 = as_b0_dir(b0_dir)
    rot = np.eye(3) if spec.b0_aware else rotation_to_axis(b0, spec.b0_axis)
    rotated = not np.allclose(rot, np.eye(3), atol=1e-7)
    model_vox = as_voxel_size(spec.target_voxel_size(np.full(3, min(vox)) if rotated else vox))
    net_b0 = b0 if spec.b0_aware else np.asarray(spec.b0_axis)
    angle = math.degrees(math.acos(float(np.clip((np.trace(rot) - 1) / 2, -1, 1))))
    return GeometryPlan(GridResampler(shape, vox, model_vox, rot),
                        tuple(float(v) for v in net_b0), tuple(float(v) for v in model_vox),
                        angle)


def masked_resample(resample, x: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5):
    """Resample ``x`` inside ``mask`` without pulling zeros in at the mask edge.

    Normalised interpolation: resample(x * mask) / resample(mask), kept where the resampled
    mask exceeds ``threshold`` (0.5 defines the mask on the network's grid; a small threshold
    on the way back fills every scan voxel that has any network-grid neighbour in the mask).
    Returns (x, mask) on the new grid, both (B, 1, ...), zero outside.
    """
    both = resample(torch.cat([x * mask, mask], dim=1))
    w = both[:, 1:]
    new_mask = (w > threshold).float()
    return both[:, :1] / w.clamp(min=1e-6) * new_mask, new_mask
