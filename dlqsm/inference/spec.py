"""What a network expects: :class:`ModelSpec`, read from a model's metadata.

The training voxel size (or range), the B0 axis it learned, whether it takes the geometry
itself, its window and size divisor. :func:`dlqsm.inference.resampling.plan_geometry` uses it to
decide how a scan is presented to the network.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from torch import nn

from dlqsm.errors import InputError
from dlqsm.physics.geometry import normalize_b0_dir, normalize_voxel_size

DEFAULT_ROI = 96
"""Default sliding-window size (voxels per side) when the model metadata names none."""

Z_AXIS = (0.0, 0.0, 1.0)


@dataclass
class ModelSpec:
    """The geometry a network was trained for.

    Attributes:
        voxel_size: training voxel size (mm, three numbers) for networks trained at one size.
        voxel_range: (min, max) voxel sizes (mm, three numbers each) seen in training, or None;
            scans inside the range are not resampled, others are brought to the nearest size
            inside it.
        b0_axis: unit B0 vector (voxel coordinates) of the training data; +z by default.
        b0_aware: the network takes ``b0_dir`` and handles any direction itself.
        resolution_aware: the network takes ``voxel_size`` and handles any voxel size itself.
        roi_size: sliding-window size (voxels); the training patch size when known.
        pad_multiple: spatial sizes given to the network are padded to multiples of this
            (the models' ``pad_multiple``; ``size_divisor`` is its deprecated name).
        name: a human-readable model name for records.
    """

    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    voxel_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    b0_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    b0_aware: bool = False
    resolution_aware: bool = False
    roi_size: tuple[int, int, int] = (DEFAULT_ROI,) * 3
    pad_multiple: int = 16
    name: str = "network"

    @classmethod
    def from_metadata(cls, metadata: dict | None, net: nn.Module | None = None) -> ModelSpec:
        """Build a spec from model metadata and network attributes.

        Reads dlqsm's checkpoint metadata (:mod:`dlqsm.lit.metadata`): ``training_geometry``
        (``voxel_size_min/max``, ``b0_tilt_deg_max``, ``shapes``), ``input_normalization``
        (``uses_geometry`` marks a network taking B0 and voxel size; ``pad_multiple``) and
        ``network``. Hand-written metadata may instead give ``voxel_size`` (or
        ``voxel_range``), ``b0_axis``, ``b0_aware``, ``resolution_aware``, ``patch_size``,
        ``pad_multiple`` (or its older name ``size_divisor``) and ``name``, which take
        precedence. A network attribute named like a
        flag (``net.b0_aware``) wins over both.
        """
        meta = dict(metadata or {})
        geo = meta.get("training_geometry") or {}
        norm = meta.get("input_normalization")
        if not isinstance(norm, dict) and hasattr(net, "input_normalization"):
            try:
                norm = net.input_normalization()
            except NotImplementedError:
                norm = None
        norm = norm if isinstance(norm, dict) else {}
        vox, vrange = _training_voxel_size(meta, geo)
        flags = {}
        for attr in ("b0_aware", "resolution_aware"):
            flags[attr] = bool(meta.get(attr, norm.get("uses_geometry", False)))
            if net is not None and hasattr(net, attr):
                flags[attr] = bool(getattr(net, attr))
        shapes = geo.get("shapes") or []
        roi = meta.get("patch_size") or (np.max(shapes, axis=0).tolist() if shapes else
                                         DEFAULT_ROI)
        divisor = meta.get("pad_multiple") or meta.get("size_divisor") or norm.get("pad_multiple") \
            or getattr(net, "pad_multiple", None) or 16
        return cls(voxel_size=vox, voxel_range=vrange,
                   b0_axis=tuple(float(v) for v in normalize_b0_dir(meta.get("b0_axis", Z_AXIS))),
                   roi_size=roi_triple(roi), pad_multiple=max(1, int(divisor)),
                   name=str(meta.get("name") or meta.get("network") or
                            (type(net).__name__ if net is not None else "network")), **flags)

    @property
    def size_divisor(self) -> int:
        """Deprecated name of :attr:`pad_multiple`."""
        warnings.warn("ModelSpec.size_divisor is now ModelSpec.pad_multiple.", DeprecationWarning,
                      stacklevel=2)
        return self.pad_multiple

    def target_voxel_size(self, wanted) -> np.ndarray:
        """The voxel size (mm) to run at when the scan grid would give ``wanted``."""
        wanted = normalize_voxel_size(wanted)
        if self.resolution_aware:
            return wanted
        if self.voxel_range is not None:
            lo, hi = (np.asarray(v, dtype=np.float64) for v in self.voxel_range)
            return np.clip(wanted, lo, hi)
        return np.asarray(self.voxel_size, dtype=np.float64)


def _training_voxel_size(meta: dict, geo: dict):
    """(voxel_size, voxel_range or None) from explicit metadata or the training geometry.

    ``meta["voxel_range"]`` ([min, max], three numbers each) narrows where the network runs at
    the scan's own voxel size when the training range is wider than the data it learned from
    (e.g. a few shape phantoms at 2 mm beside brains at 0.8-1.2 mm)."""
    if meta.get("voxel_size") is not None:
        return tuple(float(v) for v in normalize_voxel_size(meta["voxel_size"])), None
    lo, hi = geo.get("voxel_size_min"), geo.get("voxel_size_max")
    if meta.get("voxel_range") is not None:
        pair = meta["voxel_range"]
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise ValueError(f"metadata voxel_range must be [min, max], got {pair!r}")
        lo, hi = pair
    if lo is None or hi is None:
        return (1.0, 1.0, 1.0), None
    lo, hi = normalize_voxel_size(lo), normalize_voxel_size(hi)
    mid = tuple(float(v) for v in (lo + hi) / 2)
    if np.allclose(lo, hi, rtol=1e-3):
        return mid, None
    return mid, (tuple(float(v) for v in lo), tuple(float(v) for v in hi))


def roi_triple(roi) -> tuple[int, int, int]:
    """A window size (one or three positive ints) as three ints; InputError otherwise."""
    r = np.asarray(roi, dtype=int).reshape(-1)
    r = np.repeat(r, 3) if r.size == 1 else r
    if r.shape != (3,) or np.any(r < 1):
        raise InputError(f"a window size needs one or three positive integers, got {roi!r}.")
    return tuple(int(v) for v in r)
