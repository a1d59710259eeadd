"""The :class:`Predictor`: susceptibility (ppm) from a local field (ppm) with a trained network.

It composes the parts of :mod:`dlqsm.inference`: what the network expects
(:class:`~dlqsm.inference.spec.ModelSpec`), the grid it sees
(:func:`~dlqsm.inference.resampling.plan_geometry`), whether the volume fits in memory
(:mod:`~dlqsm.inference.memory`) and how the network is called
(:func:`~dlqsm.inference.network.call_network`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from dlqsm.errors import InputError
from dlqsm.inference.consistency import DC_METHODS, DEFAULT_DC_ITERATIONS, data_consistency
from dlqsm.inference.memory import available_memory_bytes, bytes_per_voxel
from dlqsm.inference.network import call_network, load_network
from dlqsm.inference.resampling import GeometryPlan, masked_resample, plan_geometry
from dlqsm.inference.spec import ModelSpec, roi_triple
from dlqsm.models.base import crop_to, pad_to_multiple
from dlqsm.physics.geometry import (
    as_b0_dir,
    as_voxel_size,
    b0_dir_from_affine,
    voxel_size_from_affine,
)
from dlqsm.pipeline.detrend import fit_background_modes, subtract_trend


@dataclass
class Prediction:
    """Result of :meth:`Predictor.run`: chi (ppm, input grid, referenced) and a record."""

    chi: np.ndarray | torch.Tensor
    info: dict = field(default_factory=dict)


def _volume_3d(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 5 and t.shape[:2] == (1, 1):
        t = t[0, 0]
    if t.ndim != 3:
        raise InputError(f"the {what} must be a 3D volume (X, Y, Z); got shape {tuple(t.shape)}.",
                         fix="select one volume (e.g. combine echoes first).")
    return t


ESTIMATE_WEIGHTS = ("by-input", "auto", "trained")
"""Choices of the weight of the classical estimate a residual model refines
(``dlqsm infer --estimate-weight``, ``dlqsm evaluate --estimate-weight``)."""


def estimate_params(predictor, choice: str = "by-input", kind: str = "local_field") -> dict | None:
    """``--estimate-weight`` -> the ``estimate_params`` of :meth:`Predictor.run`.

    The per-scan weights are the classical chain's
    (:func:`dlqsm.pipeline.inversion.regularization.chain_defaults`: TV's ``alpha="auto"`` for a
    local-field input), applied to the inversion the model refines: ``by-input`` takes the
    chain's choice for this input kind, ``auto`` its local-field choice whatever the input,
    ``trained`` none. The same rule held for the model as for TV alone: the per-scan weight
    helped from a given local field on dlqsm's held-out heads and qsm-forward heads, and cost
    points from raw phase on a voxel-sharp head (docs/model_card.md).

    Args:
        predictor: a :class:`Predictor` (anything with ``.net``; its ``net.method`` names the
            classical inversion, absent for models that refine none).
        choice: one of :data:`ESTIMATE_WEIGHTS`.
        kind: the input kind, "raw", "total_field" or "local_field".

    Returns:
        The parameters replacing the trained ones (e.g. ``{"alpha": "auto"}``), or None.

    Raises:
        InputError: an unknown ``choice``.
    """
    from dlqsm.pipeline.inversion.regularization import chain_defaults

    if choice not in ESTIMATE_WEIGHTS:
        raise InputError(f"unknown estimate weight {choice!r}.",
                         fix=f"use one of {', '.join(ESTIMATE_WEIGHTS)}.")
    if choice == "trained":
        return None
    return chain_defaults(getattr(predictor.net, "method", None),
                          kind if choice == "by-input" else "local_field") or None


def estimate_weight_used(info: dict | None) -> dict | None:
    """The regularisation weight a model's classical estimate used, read from its record
    (``Prediction.info["initial_estimate_info"]``): ``{"method", "parameter"`` ("alpha" or
    "lam"), ``"value", "auto_weight"`` (the automatic weight's record, None for a fixed
    weight)``}``; None for a model without such an estimate or a method without a weight."""
    if not info:
        return None
    params = info.get("parameters") or {}
    auto = info.get("auto_weight") or None
    name = (auto or {}).get("parameter") or next((k for k in ("alpha", "lam") if k in params),
                                                  None)
    if name is None or params.get(name) is None:
        return None
    return {"method": info.get("method"), "parameter": name, "value": float(params[name]),
            "auto_weight": auto}


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
        data_consistency: "none", "l2" or "tv": a few solver iterations started from the
            network output on the scan grid so that chi obeys the measured field
            (:func:`dlqsm.inference.consistency.data_consistency`).
        dc_iters: iterations of that step. dc_params: its parameters (e.g. {"lam": 1e-3}).

    Example::

        pred = Predictor("model.ckpt")
        chi = pred.predict(local_field, mask, voxel_size=(1, 1, 2), b0_dir=(0.1, 0, 0.99))
    """

    def __init__(self, checkpoint=None, *, device="auto", tile: bool | None = None,
                 roi_size=None, overlap: float = 0.5, sw_batch_size: int = 1, amp: bool = False,
                 memory_fraction: float = 0.5, progress: bool = False,
                 data_consistency: str = "none", dc_iters: int = DEFAULT_DC_ITERATIONS,
                 dc_params: dict | None = None, _net=None, _meta=None):
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
            self.spec.roi_size = roi_triple(roi_size)
        if not 0 <= overlap < 1:
            raise InputError(f"overlap must be in [0, 1), got {overlap}.")
        self.tile, self.overlap, self.sw_batch_size = tile, float(overlap), int(sw_batch_size)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.memory_fraction, self.progress = float(memory_fraction), bool(progress)
        self.data_consistency = str(data_consistency).lower()
        if self.data_consistency not in DC_METHODS:
            raise InputError(f"unknown data-consistency method {data_consistency!r}.",
                             fix=f"use one of {', '.join(DC_METHODS)}.")
        if self.data_consistency != "none" and int(dc_iters) < 1:
            raise InputError(f"data-consistency iterations must be >= 1, got {dc_iters}.",
                             fix="pass --dc-iters 1 or more (or --data-consistency none).")
        self.dc_iters, self.dc_params = int(dc_iters), dict(dc_params or {})
        self._bpv: float | None = None

    @classmethod
    def from_module(cls, net: nn.Module, metadata: dict | None = None, **kwargs) -> Predictor:
        """A predictor around an in-memory network (``metadata`` as in a checkpoint)."""
        return cls(None, _net=net, _meta=metadata, **kwargs)

    # -- public API -------------------------------------------------------------------------

    def predict(self, local_field, mask, *, voxel_size=None, b0_dir=None, affine=None,
                weight=None):
        """chi (ppm) from ``local_field`` (ppm) and ``mask``; see :meth:`run`."""
        return self.run(local_field, mask, voxel_size=voxel_size, b0_dir=b0_dir,
                        affine=affine, weight=weight).chi

    def run(self, local_field, mask, *, voxel_size=None, b0_dir=None, affine=None,
            weight=None, estimate_params: dict | None = None,
            detrend: bool = False) -> Prediction:
        """Predict chi and return it with a record of what was done.

        Args:
            local_field: (X, Y, Z) local (tissue) field in ppm, numpy or torch.
            mask: (X, Y, Z) brain mask (non-zero inside).
            voxel_size: voxel size in mm; from ``affine`` when None.
            b0_dir: unit B0 vector in voxel coordinates; from ``affine`` when None.
            affine: (4, 4) voxel-to-world matrix, used when the two above are not given.
            weight: optional (X, Y, Z) data weight of the field (the ``weight`` of
                :func:`dlqsm.pipeline.reconstruct.reconstruct`: inverse noise, 0 where the
                field is unreliable). A model refining a classical inversion passes it to that
                inversion, and the network sees the field as 0 where the weight is 0 (those
                voxels' chi then comes from the regulariser and the correction).
            estimate_params: for a model refining a classical inversion, parameters of that
                inversion that replace the trained ones for this scan (e.g.
                ``{"alpha": "auto"}``: TV's weight chosen per scan, see
                :func:`dlqsm.pipeline.inversion.regularization`); ignored by other models.
                What the inversion used is recorded in ``info["initial_estimate_info"]`` (its
                :attr:`InversionResult.info`, as ``dlqsm reconstruct`` records
                ``stage_info.inversion``: the resolved ``parameters``, iterations and, for
                ``"auto"``, ``auto_weight`` with the chosen weight, rule, ``lam_gcv_mm2``,
                noise estimates and the GCV curve).
            detrend: subtract the linear and quadratic trends whose fields background removal
                cannot tell from background (:mod:`dlqsm.pipeline.detrend`), fitted to the
                classical inversion the model refines (to the output for other models): for a
                local field from dlqsm's own background removal (``dlqsm infer`` turns it on
                for raw and total-field input). Recorded in ``info["detrend"]``.

        Returns:
            :class:`Prediction` with ``chi`` (X, Y, Z) in ppm (numpy for numpy input, a tensor on
            the input's device for tensor input), zero outside the mask and with zero mean
            inside it; ``info`` holds the geometry plan, inference mode and timings (s).
        """
        t0 = time.perf_counter()
        field_t, mask_t = _volume_3d(local_field, "local field"), _volume_3d(mask, "mask")
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
        w = None
        if weight is not None:
            w = _volume_3d(weight, "weight").to(self.device, torch.float32)[None, None]
            if w.shape != f.shape:
                raise InputError(f"weight {tuple(w.shape[-3:])} and local field "
                                 f"{tuple(f.shape[-3:])} are on different grids.",
                                 fix="give a weight on the grid of the field.")
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
                kw = {} if w is None else {"weight": w}
                if estimate_params:
                    kw["params"] = dict(estimate_params)
                infos: list = []  # the inversion's record (resolved weight, auto_weight, ...)
                chi0 = estimate(f, m, *geo, infos=infos, **kw)
                chi0 = chi0.to(f.dtype) * m
            f_net = f if w is None else f * (w > 0)
            fm, mm = masked_resample(plan.resampler.to_model, f_net, m)
            if chi0 is not None:
                init_m = masked_resample(plan.resampler.to_model, chi0, m)[0] * mm
            t2 = time.perf_counter()
            chi_m, mode = self._network(fm, mm, plan, init_m)
            t3 = time.perf_counter()
            if chi0 is None:
                chi, covered = masked_resample(plan.resampler.to_scan, chi_m, mm, threshold=1e-3)
            else:
                corr, covered = masked_resample(plan.resampler.to_scan, (chi_m - init_m) * mm,
                                                 mm, threshold=1e-3)
                chi = chi0 + corr
                mode = dict(mode, initial_estimate="computed on the scan grid; the network's "
                                                   "correction resampled",
                            initial_estimate_params=dict(estimate_params or {}) or "as trained",
                            initial_estimate_info=infos[0] if infos else None)
            uncovered = int((m * (1 - covered)).sum())
            chi = chi * m
            chi = (chi - chi[m > 0].mean()) * m
            t4 = time.perf_counter()
            dc = {"method": "none"}
            if self.data_consistency != "none":  # on the scan grid, against the measured field
                out_dc, dc = data_consistency(chi[0, 0], f[0, 0] * m[0, 0], m[0, 0],
                                              voxel_size=vox, b0_dir=b0,
                                              method=self.data_consistency,
                                              iterations=self.dc_iters, **self.dc_params)
                chi = out_dc[None, None]
            t5 = time.perf_counter()
            trend_info = {"applied": False}
            if detrend:
                source = chi0 if chi0 is not None else chi
                trend, fit = fit_background_modes(source[0, 0], m[0, 0] > 0, voxel_size=vox,
                                                  b0_dir=b0)
                chi = subtract_trend(chi[0, 0], trend, m[0, 0] > 0)[None, None]
                trend_info = {"applied": True, "fitted_to": "initial estimate" if
                              chi0 is not None else "network output", **fit}
        t6 = time.perf_counter()
        info = {"model": self.spec.name, "checkpoint": self.checkpoint,
                "device": str(self.device), "amp": self.amp, **mode, **plan.describe(),
                "voxel_size_mm": [float(v) for v in vox], "b0_dir": [float(v) for v in b0],
                "reference": "mean inside the mask subtracted; zero outside the mask",
                "uncovered_mask_voxels": uncovered,
                "data_consistency": dc,
                "detrend": trend_info,
                "units": "ppm",
                "timings_s": {"prepare": t1 - t0, "resample": (t2 - t1) + (t4 - t3),
                              "network": t3 - t2, "data_consistency": t5 - t4,
                              "detrend": t6 - t5, "total": t6 - t0}}
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
        return as_voxel_size(voxel_size), as_b0_dir(b0_dir)  # trusted if validated already

    def memory_estimate(self, shape: Sequence[int]) -> dict:
        """Estimated bytes for whole-volume inference at ``shape`` and the budget available."""
        if self._bpv is None:
            self._bpv = bytes_per_voxel(self.net, self.spec, self.device)
        d = self.spec.pad_multiple
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
        d = self.spec.pad_multiple
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
            xp, shape = pad_to_multiple(x, self.spec.pad_multiple)
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
