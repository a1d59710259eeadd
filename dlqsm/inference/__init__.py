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

The package is split by responsibility (every name stays importable from ``dlqsm.inference``):

* :mod:`~dlqsm.inference.spec`: :class:`ModelSpec`, what a network expects (from its metadata);
* :mod:`~dlqsm.inference.resampling`: :func:`plan_geometry`, :class:`GridResampler`,
  :func:`masked_resample` (B0 rotation and voxel-size resampling);
* :mod:`~dlqsm.inference.memory`: :func:`available_memory_bytes`, :func:`bytes_per_voxel`;
* :mod:`~dlqsm.inference.network`: :func:`load_network`, :func:`call_network`;
* :mod:`~dlqsm.inference.predictor`: :class:`Predictor` and :class:`Prediction`;
* :mod:`~dlqsm.inference.fieldmap`: :func:`local_field_from_scan` (the classical stages before
  dipole inversion) and :class:`FieldMap`.
"""

from dlqsm.inference.consistency import DC_METHODS, data_consistency, field_residual
from dlqsm.inference.fieldmap import FieldMap, local_field_from_scan
from dlqsm.inference.memory import available_memory_bytes, bytes_per_voxel
from dlqsm.inference.network import (
    DEFAULT_MODEL_DIR,
    call_network,
    default_model_installed,
    load_network,
    resolve_checkpoint,
)
from dlqsm.inference.predictor import Prediction, Predictor
from dlqsm.inference.resampling import (
    GeometryPlan,
    GridResampler,
    masked_resample,
    plan_geometry,
    rotation_to_axis,
)
from dlqsm.inference.spec import DEFAULT_ROI, Z_AXIS, ModelSpec, roi_triple

__all__ = [
    "DC_METHODS",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_ROI",
    "Z_AXIS",
    "FieldMap",
    "GeometryPlan",
    "GridResampler",
    "ModelSpec",
    "Prediction",
    "Predictor",
    "available_memory_bytes",
    "bytes_per_voxel",
    "call_network",
    "data_consistency",
    "default_model_installed",
    "field_residual",
    "load_network",
    "local_field_from_scan",
    "masked_resample",
    "plan_geometry",
    "resolve_checkpoint",
    "roi_triple",
    "rotation_to_axis",
]
