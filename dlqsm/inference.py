"""Learned dipole inversion of new scans: the :class:`Predictor`.

A :class:`Predictor` wraps a trained network (a checkpoint loaded with
:func:`dlqsm.models.load_model`, the default model shipped in ``dlqsm/assets/default_model/``,
or any ``nn.Module``) and turns a local field (ppm) and a brain mask into a susceptibility map
(ppm) on the scan's own grid, whatever the scan's B0 direction and voxel size:

* **B0 direction.** A network that takes the B0 vector (``b0_aware``) receives it. Any other
  network learned one B0 axis (its ``b0_axis``, +z of the voxel grid by default): the volume is
  resampled with trilinear interpolation onto a grid rotated so that B0 lies along that axis,
  the network runs there, and its output is resampled back. B0 and -B0 give the same field, so
  the smaller of the two rotations is used.
* **Voxel size.** The same resampling brings the volume to the network's training voxel size
  (from its metadata); a ``resolution_aware`` network receives the voxel size instead.
* **Memory.** The whole volume is processed at once when the memory estimate fits the device;
  otherwise MONAI's ``sliding_window_inference`` (Gaussian blending of overlapping windows) is
  used. ``tile=True`` / ``tile=False`` force either.

Output convention: chi in ppm on the input grid, zero outside the mask, referenced to the mean
inside the mask (the mean over the mask is subtracted).
"""

from __future__ import annotations

import inspect
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlqsm.errors import InputError
from dlqsm.models.base import crop_to, pad_to_multiple
from dlqsm.physics.geometry import (
    b0_dir_from_affine,
    normalize_b0_dir,
    normalize_voxel_size,
    rotation_matrix,
    voxel_size_from_affine,
)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default_model"
"""Where the default model is shipped (a folder understood by :func:`dlqsm.models.load_model`)."""

DEFAULT_ROI = 96
"""Default sliding-window size (voxels per side) when the model metadata names none."""

Z_AXIS = (0.0, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# What a network expects (read from its metadata)
# --------------------------------------------------------------------------------------------

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
        size_divisor: spatial sizes given to the network are padded to multiples of this.
        name: a human-readable model name for records.
    """

    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    voxel_range: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    b0_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    b0_aware: bool = False
    resolution_aware: bool = False
    roi_size: tuple[int, int, int] = (DEFAULT_ROI,) * 3
    size_divisor: int = 16
    name: str = "network"

    @classmethod
    def from_metadata(cls, metadata: dict | None, net: nn.Module | None = None) -> ModelSpec:
        """Build a spec from model metadata and network attributes.

        Reads dlqsm's checkpoint metadata (:mod:`dlqsm.lit.metadata`): ``training_geometry``
        (``voxel_size_min/max``, ``b0_tilt_deg_max``, ``shapes``), ``input_normalization``
        (``uses_geometry`` marks a network taking B0 and voxel size; ``pad_multiple``) and
        ``network``. Hand-written metadata may instead give ``voxel_size``, ``b0_axis``,
        ``b0_aware``, ``resolution_aware``, ``patch_size``, ``size_divisor`` and ``name``, which
        take precedence. A network attribute named like a flag (``net.b0_aware``) wins over both.
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
        divisor = meta.get("size_divisor") or norm.get("pad_multiple") \
            or getattr(net, "pad_multiple", None) or 16
        return cls(voxel_size=vox, voxel_range=vrange,
                   b0_axis=tuple(float(v) for v in normalize_b0_dir(meta.get("b0_axis", Z_AXIS))),
                   roi_size=_roi_triple(roi), size_divisor=max(1, int(divisor)),
                   name=str(meta.get("name") or meta.get("network") or
                            (type(net).__name__ if net is not None else "network")), **flags)

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
    """(voxel_size, voxel_range or None) from explicit metadata or the training geometry."""
    if meta.get("voxel_size") is not None:
        return tuple(float(v) for v in normalize_voxel_size(meta["voxel_size"])), None
    lo, hi = geo.get("voxel_size_min"), geo.get("voxel_size_max")
    if lo is None or hi is None:
        return (1.0, 1.0, 1.0), None
    lo, hi = normalize_voxel_size(lo), normalize_voxel_size(hi)
    mid = tuple(float(v) for v in (lo + hi) / 2)
    if np.allclose(lo, hi, rtol=1e-3):
        return mid, None
    return mid, (tuple(float(v) for v in lo), tuple(float(v) for v in hi))


def _roi_triple(roi) -> tuple[int, int, int]:
    r = np.asarray(roi, dtype=int).reshape(-1)
    r = np.repeat(r, 3) if r.size == 1 else r
    if r.shape != (3,) or np.any(r < 1):
        raise InputError(f"a window size needs one or three positive integers, got {roi!r}.")
    return tuple(int(v) for v in r)


# --------------------------------------------------------------------------------------------
# Geometry: a rotated, rescaled grid and trilinear resampling between it and the scan grid
# --------------------------------------------------------------------------------------------

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
    vox = normalize_voxel_size(voxel_size)
    b0 = normalize_b0_dir(b0_dir)
    rot = np.eye(3) if spec.b0_aware else rotation_to_axis(b0, spec.b0_axis)
    rotated = not np.allclose(rot, np.eye(3), atol=1e-7)
    model_vox = spec.target_voxel_size(np.full(3, vox.min()) if rotated else vox)
    net_b0 = b0 if spec.b0_aware else np.asarray(spec.b0_axis)
    angle = math.degrees(math.acos(float(np.clip((np.trace(rot) - 1) / 2, -1, 1))))
    return GeometryPlan(GridResampler(shape, vox, model_vox, rot),
                        tuple(float(v) for v in net_b0), tuple(float(v) for v in model_vox),
                        angle)


# --------------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------------

def available_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device``: CUDA free memory, or available system RAM for the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2 ** 30


def bytes_per_voxel(net: nn.Module, spec: ModelSpec, device, *, probe: int | None = None) -> float:
    """Estimated peak memory of one forward pass, per input voxel (bytes).

    The network runs once on a small probe cube (``probe`` voxels a side, rounded up to the
    size divisor). On CUDA the peak allocated memory of that pass is measured (plus 25 %). On
    the CPU, forward hooks sum the sizes of every tensor the leaf modules return; without
    autograd most are freed early, so the sum is a conservative (high) estimate.
    """
    device = torch.device(device)
    side = probe or max(64 if device.type == "cuda" else 32, 2 * spec.size_divisor)
    side = int(math.ceil(side / spec.size_divisor) * spec.size_divisor)
    x = torch.zeros(1, 1, side, side, side, device=device)
    args = (x, torch.ones_like(x), torch.tensor([[0.0, 0.0, 1.0]], device=device),
            torch.tensor([list(spec.voxel_size)], device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.no_grad():
            call_network(net, *args)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        return 1.25 * max(peak, 1) / side ** 3 + 16.0
    total = [0]

    def hook(_mod, _inp, out):
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            call_network(net, *args)
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 1) / side ** 3 + 16.0  # + input, mask, output, resampled copies


# --------------------------------------------------------------------------------------------
# Calling the network
# --------------------------------------------------------------------------------------------

def _accepted_kwargs(net: nn.Module) -> set[str]:
    try:
        params = inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return {"mask", "b0_dir", "voxel_size"}
    return {k for k in ("mask", "b0_dir", "voxel_size") if k in params}


def call_network(net: nn.Module, field: torch.Tensor, mask: torch.Tensor, b0_dir: torch.Tensor,
                 voxel_size: torch.Tensor, chi_init: torch.Tensor | None = None) -> torch.Tensor:
    """``net(field, mask=, b0_dir=, voxel_size=)`` passing only the keywords ``net`` accepts.

    Args:
        field: (B, 1, X, Y, Z) local field, ppm.
        mask: (B, 1, X, Y, Z) float mask.
        b0_dir: (1, 3) or (B, 3) unit vector(s) in the voxel coordinates of this grid.
        voxel_size: (1, 3) or (B, 3) voxel size of this grid, mm.
        chi_init: (B, 1, X, Y, Z) classical estimate (ppm) for networks that refine one
            (:class:`dlqsm.models.InversionResidualNet`), computed on the whole volume.

    Returns:
        (B, 1, X, Y, Z) susceptibility, ppm.
    """
    n = field.shape[0]
    kwargs = {"mask": mask, "b0_dir": b0_dir.expand(n, 3), "voxel_size": voxel_size.expand(n, 3)}
    accepted = _accepted_kwargs(net)
    if chi_init is not None:
        kwargs["chi_init"] = chi_init
        accepted = accepted | {"chi_init"}
    out = net(field, **{k: v for k, v in kwargs.items() if k in accepted})
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = out.get("chi", next(iter(out.values())))
    return out


# --------------------------------------------------------------------------------------------
# Loading models
# --------------------------------------------------------------------------------------------

def default_model_installed() -> bool:
    """Whether the shipped default model (:data:`DEFAULT_MODEL_DIR`) is present."""
    return (DEFAULT_MODEL_DIR / "model.pt").is_file()


def resolve_checkpoint(checkpoint=None) -> Path:
    """The checkpoint to load: ``checkpoint`` if given, else the shipped default model.

    Raises:
        InputError: the given file does not exist, or no checkpoint was given and no default
            model is installed.
    """
    if checkpoint is not None:
        p = Path(checkpoint)
        if not p.exists():
            raise InputError("checkpoint does not exist.", path=p,
                             fix="pass a trained model: a Lightning .ckpt from `dlqsm train` "
                                 "or an exported model folder.")
        return p
    d = DEFAULT_MODEL_DIR
    if default_model_installed():
        return d
    raise InputError(
        f"no checkpoint given and no default model is installed (expected {d}).",
        fix="pass --checkpoint PATH (a .ckpt written by `dlqsm train`, e.g. "
            "logs/train/runs/<date>/checkpoints/last.ckpt, or an exported model folder).")


def load_network(checkpoint=None) -> tuple[nn.Module, dict, Path]:
    """Load (net, metadata, path) with :func:`dlqsm.models.load_model` (default model if None)."""
    from dlqsm.models import load_model

    path = resolve_checkpoint(checkpoint)
    net, metadata = load_model(path)
    return net, dict(metadata or {}), path


# --------------------------------------------------------------------------------------------
# The predictor
# --------------------------------------------------------------------------------------------

@dataclass
class Prediction:
    """Result of :meth:`Predictor.run`: chi (ppm, input grid, referenced) and a record."""

    chi: np.ndarray | torch.Tensor
    info: dict = field(default_factory=dict)


def _masked_resample(resample, x: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5):
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


def _as_volume(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 5 and t.shape[:2] == (1, 1):
        t = t[0, 0]
    if t.ndim != 3:
        raise InputError(f"the {what} must be a 3D volume (X, Y, Z); got shape {tuple(t.shape)}.",
                         fix="select one volume (e.g. combine echoes first).")
    return t


class Predictor:
    """Susceptibility (ppm) from a local field (ppm) with a trained network.

    Args:
        checkpoint: model checkpoint or exported model folder; None for the default model
            shipped in ``dlqsm/assets/default_model/``.
        device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        tile: None to choose whole-volume or sliding-window inference from a memory estimate;
            True to force sliding windows; False to force whole-volume.
        roi_size: sliding-window size (voxels; one or three ints), default the model's.
        overlap: fractional overlap of neighbouring windows.
        sw_batch_size: windows per network call.
        amp: float16 autocast on CUDA (ignored on the CPU).
        memory_fraction: fraction of the free device memory the estimate may use.
        progress: show a progress bar over windows.

    Example::

        pred = Predictor("model.ckpt")
        chi = pred.predict(local_field, mask, voxel_size=(1, 1, 2), b0_dir=(0.1, 0, 0.99))
    """

    def __init__(self, checkpoint=None, *, device="auto", tile: bool | None = None,
                 roi_size=None, overlap: float = 0.5, sw_batch_size: int = 1, amp: bool = False,
                 memory_fraction: float = 0.5, progress: bool = False, _net=None, _meta=None):
        if _net is None:
            net, meta, path = load_network(checkpoint)
        else:
            net, meta, path = _net, dict(_meta or {}), checkpoint
        from dlqsm.pipeline.reconstruct import resolve_device

        self.device = resolve_device(device)
        self.net = net.to(self.device).eval()
        self.metadata = meta
        self.checkpoint = None if path is None else str(path)
        self.spec = ModelSpec.from_metadata(meta, net)
        if roi_size is not None:
            self.spec.roi_size = _roi_triple(roi_size)
        if not 0 <= overlap < 1:
            raise InputError(f"overlap must be in [0, 1), got {overlap}.")
        self.tile, self.overlap, self.sw_batch_size = tile, float(overlap), int(sw_batch_size)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.memory_fraction, self.progress = float(memory_fraction), bool(progress)
        self._bpv: float | None = None

    @classmethod
    def from_module(cls, net: nn.Module, metadata: dict | None = None, **kwargs) -> Predictor:
        """A predictor around an in-memory network (``metadata`` as in a checkpoint)."""
        return cls(None, _net=net, _meta=metadata, **kwargs)

    # -- public API -------------------------------------------------------------------------

    def predict(self, local_field, mask, *, voxel_size=None, b0_dir=None, affine=None):
        """chi (ppm) from ``local_field`` (ppm) and ``mask``; see :meth:`run`."""
        return self.run(local_field, mask, voxel_size=voxel_size, b0_dir=b0_dir,
                        affine=affine).chi

    def run(self, local_field, mask, *, voxel_size=None, b0_dir=None, affine=None) -> Prediction:
        """Predict chi and return it with a record of what was done.

        Args:
            local_field: (X, Y, Z) local (tissue) field in ppm, numpy or torch.
            mask: (X, Y, Z) brain mask (non-zero inside).
            voxel_size: voxel size in mm; from ``affine`` when None.
            b0_dir: unit B0 vector in voxel coordinates; from ``affine`` when None.
            affine: (4, 4) voxel-to-world matrix, used when the two above are not given.

        Returns:
            :class:`Prediction` with ``chi`` (X, Y, Z) in ppm (numpy for numpy input, a tensor on
            the input's device for tensor input), zero outside the mask and with zero mean
            inside it; ``info`` holds the geometry plan, inference mode and timings (s).
        """
        t0 = time.perf_counter()
        field_t, mask_t = _as_volume(local_field, "local field"), _as_volume(mask, "mask")
        if field_t.shape != mask_t.shape:
            raise InputError(f"local field {tuple(field_t.shape)} and mask "
                             f"{tuple(mask_t.shape)} are on different grids.",
                             fix="give a mask on the grid of the field.")
        vox, b0 = self._geometry_inputs(voxel_size, b0_dir, affine)
        if not torch.isfinite(field_t).all():
            raise InputError("the local field contains NaN/inf values.",
                             fix="set them to 0 and exclude them from the mask.")
        out_device = field_t.device
        f = field_t.to(self.device, torch.float32)[None, None]
        m = (mask_t.to(self.device) != 0).float()[None, None]
        if m.sum() == 0:
            raise InputError("the mask is empty.", fix="give a brain mask with non-zero voxels.")
        plan = plan_geometry(self.spec, f.shape[-3:], vox, b0)
        t1 = time.perf_counter()
        estimate = getattr(self.net, "initial_estimate", None)
        with torch.no_grad():
            chi0 = init_m = None
            if estimate is not None:
                # a network refining a classical inversion: the inversion runs once, on the scan's
                # own grid and geometry; only the learned correction is resampled
                geo = [torch.as_tensor(np.asarray(v, dtype=np.float32)).reshape(1, 3)
                       for v in (b0, vox)]
                chi0 = estimate(f, m, *geo).to(f.dtype) * m
            fm, mm = _masked_resample(plan.resampler.to_model, f, m)
            if chi0 is not None:
                init_m = _masked_resample(plan.resampler.to_model, chi0, m)[0] * mm
            t2 = time.perf_counter()
            chi_m, mode = self._network(fm, mm, plan, init_m)
            t3 = time.perf_counter()
            if chi0 is None:
                chi, covered = _masked_resample(plan.resampler.to_scan, chi_m, mm, threshold=1e-3)
            else:
                corr, covered = _masked_resample(plan.resampler.to_scan, (chi_m - init_m) * mm,
                                                 mm, threshold=1e-3)
                chi = chi0 + corr
                mode = dict(mode, initial_estimate="computed on the scan grid; the network's "
                                                   "correction resampled")
            uncovered = int((m * (1 - covered)).sum())
            chi = chi * m
            chi = (chi - chi[m > 0].mean()) * m
        t4 = time.perf_counter()
        info = {"model": self.spec.name, "checkpoint": self.checkpoint,
                "device": str(self.device), "amp": self.amp, **mode, **plan.describe(),
                "voxel_size_mm": [float(v) for v in vox], "b0_dir": [float(v) for v in b0],
                "reference": "mean inside the mask subtracted; zero outside the mask",
                "uncovered_mask_voxels": uncovered,
                "units": "ppm",
                "timings_s": {"prepare": t1 - t0, "resample": (t2 - t1) + (t4 - t3),
                              "network": t3 - t2, "total": t4 - t0}}
        out = chi[0, 0]
        if isinstance(local_field, torch.Tensor):
            return Prediction(out.to(out_device), info)
        return Prediction(out.cpu().numpy(), info)

    # -- internals ----------------------------------------------------------------------------

    @staticmethod
    def _geometry_inputs(voxel_size, b0_dir, affine):
        if affine is not None:
            affine = np.asarray(affine, dtype=np.float64)
        if voxel_size is None:
            if affine is None:
                raise InputError("the voxel size is unknown.",
                                 fix="pass voxel_size (mm) or the NIfTI affine.")
            voxel_size = voxel_size_from_affine(affine)
        if b0_dir is None:
            if affine is None:
                raise InputError("the B0 direction is unknown.",
                                 fix="pass b0_dir (voxel coordinates) or the NIfTI affine.")
            b0_dir = b0_dir_from_affine(affine)
        return normalize_voxel_size(voxel_size), normalize_b0_dir(b0_dir)

    def memory_estimate(self, shape: Sequence[int]) -> dict:
        """Estimated bytes for whole-volume inference at ``shape`` and the budget available."""
        if self._bpv is None:
            self._bpv = bytes_per_voxel(self.net, self.spec, self.device)
        d = self.spec.size_divisor
        vox = float(np.prod([math.ceil(s / d) * d for s in shape]))
        budget = self.memory_fraction * available_memory_bytes(self.device)
        return {"bytes_per_voxel": self._bpv, "whole_volume_bytes": self._bpv * vox,
                "budget_bytes": budget}

    def _choose_tiling(self, shape) -> tuple[bool, dict]:
        if self.tile is not None:
            return bool(self.tile), {"tiling_reason": "forced"}
        est = self.memory_estimate(shape)
        tiled = est["whole_volume_bytes"] > est["budget_bytes"]
        return tiled, {"tiling_reason": "memory estimate",
                       "estimated_whole_volume_gib": est["whole_volume_bytes"] / 2 ** 30,
                       "memory_budget_gib": est["budget_bytes"] / 2 ** 30}

    def _window_size(self, shape) -> tuple[int, int, int]:
        """The sliding-window size: the spec's, shrunk to fit memory, a multiple of the divisor."""
        d = self.spec.size_divisor
        roi = [max(d, int(math.ceil(r / d) * d)) for r in self.spec.roi_size]
        if self.tile is None and self._bpv is not None:
            budget = self.memory_fraction * available_memory_bytes(self.device)
            while np.prod(roi) * self._bpv * self.sw_batch_size > budget and max(roi) > 2 * d:
                i = int(np.argmax(roi))
                roi[i] -= d
        # never larger than the (padded) volume
        return tuple(min(r, int(math.ceil(s / d) * d)) for r, s in zip(roi, shape, strict=True))

    def _network(self, field: torch.Tensor, mask: torch.Tensor, plan: GeometryPlan,
                 init: torch.Tensor | None = None):
        b0 = torch.tensor([plan.net_b0_dir], device=self.device, dtype=torch.float32)
        vox = torch.tensor([plan.net_voxel_size], device=self.device, dtype=torch.float32)
        tiled, why = self._choose_tiling(field.shape[-3:])

        # a network refining a classical inversion gets it (computed once on the whole scan by
        # run()) like an input channel, also in windows
        parts = [field, mask] if init is None else [field, mask, init.to(field.dtype)]

        def predictor(x):
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                y = call_network(self.net, x[:, :1], x[:, 1:2], b0, vox,
                                 chi_init=x[:, 2:3] if x.shape[1] > 2 else None)
            return y.float()

        x = torch.cat(parts, dim=1)
        if not tiled:
            xp, shape = pad_to_multiple(x, self.spec.size_divisor)
            return crop_to(predictor(xp), shape), {"mode": "whole-volume", **why}
        from monai.inferers import sliding_window_inference

        roi = self._window_size(x.shape[-3:])
        y = sliding_window_inference(x, roi, self.sw_batch_size, predictor, overlap=self.overlap,
                                     mode="gaussian", progress=self.progress)
        return y, {"mode": "sliding-window", "roi_size": list(roi), "overlap": self.overlap, **why}

    def describe(self) -> dict:
        """Model information for records: checkpoint, spec and metadata."""
        return {"checkpoint": self.checkpoint, "spec": asdict(self.spec),
                "metadata": self.metadata}


# --------------------------------------------------------------------------------------------
# From a scan on disk to the network's input
# --------------------------------------------------------------------------------------------

@dataclass
class FieldMap:
    """A local field (ppm) and its mask on the scan grid, with how they were obtained."""

    local_field: torch.Tensor
    mask: torch.Tensor
    total_field: torch.Tensor | None = None
    timings: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    notices: list = field(default_factory=list)


def local_field_from_scan(scan, *, unwrap: str = "romeo", echo_fit: str = "wls",
                          bfr: str | None = None, mask_erosion_mm: float = 0.0, device="cpu",
                          progress: bool = False, stage_params: dict | None = None) -> FieldMap:
    """Run the classical stages that come before dipole inversion on a scan.

    Raw scans go through masking, unwrapping, echo fitting and background removal, total-field
    scans through background removal only, and local-field scans are returned as given (their
    mask is required). Calls :func:`dlqsm.pipeline.reconstruct.reconstruct` with
    ``method=None``, so the stages are exactly those of ``dlqsm reconstruct``.

    Args:
        scan: a :class:`dlqsm.io.scan.Scan`.
        unwrap, echo_fit, bfr, mask_erosion_mm, stage_params: as for
            :func:`dlqsm.pipeline.reconstruct.reconstruct` (no ``inversion`` parameters).
        device: where the stages run.
        progress: one line per stage on stderr.

    Returns:
        :class:`FieldMap` with (X, Y, Z) tensors on ``device``.
    """
    from dlqsm.pipeline import reconstruct as rec

    if scan.kind == "local_field":
        if scan.mask is None:
            raise InputError("a local-field input needs a brain mask.",
                             path=scan.sources.get("local_field"), fix="pass --mask MASK.")
        dev = rec.resolve_device(device)
        lf = torch.as_tensor(np.asarray(scan.local_field), dtype=torch.float32, device=dev)
        mask = torch.as_tensor(np.asarray(scan.mask), device=dev).bool()
        return FieldMap(lf, mask, notices=list(scan.notices))
    res = rec.reconstruct(scan, unwrap=unwrap, echo_fit=echo_fit, bfr=bfr or rec.DEFAULT_BFR,
                          method=None, mask_erosion_mm=mask_erosion_mm, device=device,
                          progress=progress, stage_params=stage_params)
    timings = dict(res.timings)
    timings["field_total"] = timings.pop("total")
    return FieldMap(res.local_field, res.mask.bool(), res.total_field, timings, res.parameters,
                    res.info, list(scan.notices) + list(res.notices))
