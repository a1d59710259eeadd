"""What a trained model carries with it: units, geometry seen in training, normalisation, config.

:func:`build_metadata` assembles the dict stored in every checkpoint (under
``checkpoint["dlqsm"]["metadata"]``) and written as ``metadata.json`` beside the checkpoints.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dlqsm.io.outputs import software_versions

FORMAT = "dlqsm-model/1"
UNITS = {"input": "local field (background removed), ppm of B0; 0 outside the mask",
         "output": "susceptibility, ppm (relative: reference it, e.g. to the mask mean)",
         "voxel_size": "mm", "b0_dir": "unit vector"}
B0_CONVENTION = ("B0 direction is a unit vector in voxel coordinates (NIfTI voxel order, derived "
                 "from the affine with dlqsm.physics.geometry.b0_dir_from_affine); tensors are "
                 "(B, C, X, Y, Z) in file voxel order.")


class GeometryTracker:
    """Range of voxel sizes (mm), B0 tilt (degrees from the third voxel axis) and shapes seen."""

    def __init__(self):
        self.state = {"voxel_size_min": None, "voxel_size_max": None, "b0_tilt_deg_min": None,
                      "b0_tilt_deg_max": None, "shapes": []}

    def update(self, batch: dict) -> None:
        """Record a batch's "voxel_size" (B, 3), "b0_dir" (B, 3) and volume shape."""
        s = self.state
        if "voxel_size" in batch:
            v = torch.as_tensor(batch["voxel_size"]).reshape(-1, 3).double().cpu().numpy()
            lo, hi = v.min(0), v.max(0)
            s["voxel_size_min"] = lo.tolist() if s["voxel_size_min"] is None \
                else np.minimum(s["voxel_size_min"], lo).tolist()
            s["voxel_size_max"] = hi.tolist() if s["voxel_size_max"] is None \
                else np.maximum(s["voxel_size_max"], hi).tolist()
        if "b0_dir" in batch:
            b = torch.as_tensor(batch["b0_dir"]).reshape(-1, 3).double().cpu().numpy()
            cos = np.abs(b[:, 2]) / np.linalg.norm(b, axis=1)
            tilt = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
            s["b0_tilt_deg_min"] = float(min(tilt.min(), s["b0_tilt_deg_min"] or np.inf))
            s["b0_tilt_deg_max"] = float(max(tilt.max(), s["b0_tilt_deg_max"] or 0.0))
        shape = list(batch["field"].shape[-3:]) if "field" in batch else None
        if shape is not None and shape not in s["shapes"] and len(s["shapes"]) < 20:
            s["shapes"].append(shape)


def _scalar_metrics(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, int | float):
            out[k] = float(v)
    return out


def build_metadata(net, trainer, *, config=None, net_config=None, geometry=None,
                   git=None) -> dict:
    """The metadata of a network at the current point of training (JSON-serialisable)."""
    ckpt_cb = getattr(trainer, "checkpoint_callback", None) if trainer is not None else None
    best = None
    if ckpt_cb is not None and getattr(ckpt_cb, "best_model_score", None) is not None:
        best = {"path": ckpt_cb.best_model_path, "monitor": ckpt_cb.monitor,
                "score": float(ckpt_cb.best_model_score)}
    norm = net.input_normalization() if hasattr(net, "input_normalization") else None
    return {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "units": UNITS,
        "b0_convention": B0_CONVENTION,
        "training_geometry": geometry or {},
        "input_normalization": norm,
        "network": type(net).__name__,
        "n_parameters": int(sum(p.numel() for p in net.parameters())),
        "net_config": net_config,
        "config": config,
        "git": git or {},
        "software": {k: str(v) for k, v in software_versions().items()},
        "epoch": int(trainer.current_epoch) if trainer is not None else None,
        "global_step": int(trainer.global_step) if trainer is not None else None,
        "metrics": _scalar_metrics(dict(trainer.callback_metrics)) if trainer is not None else {},
        "best": best,
    }
