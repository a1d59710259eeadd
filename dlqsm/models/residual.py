"""A learned correction of a classical dipole inversion (the default dlqsm model's design).

:class:`InversionResidualNet` computes a classical reconstruction ``chi0`` of the local field
with :func:`dlqsm.pipeline.inversion.invert` (TV-ADMM by default, the project's strongest fast
classical method) and adds a correction predicted by a 3D backbone from ``(field, chi0)``::

    chi = chi0 + gain * chi_scale * backbone([field * field_scale, chi0 / chi_scale])

``gain`` is a learned scalar that starts at ``residual_gain`` (0 by default, as in ReZero,
Bachlechner et al. 2020), so an untrained model returns the classical estimate itself and
training only ever moves away from it where that lowers the loss.

The classical step runs on the *whole* volume (its result depends on the whole field), without
gradients; the backbone is fully convolutional, so it is trained on random patches of whole-head
``chi0`` maps computed once (:class:`dlqsm.simulation.wrappers.WithInitialEstimate`, written to
disk by ``dlqsm simulate simulation=head_cases``) and applied to whole volumes or sliding
windows of the same ``chi0`` (:class:`dlqsm.inference.Predictor` computes it once through
:meth:`InversionResidualNet.initial_estimate`).

The classical step uses each sample's B0 direction and voxel size, so the model accepts any
geometry; the backbone has only seen the training geometry (B0 along z, 1 mm), so
:class:`~dlqsm.inference.Predictor` still resamples other scans into that frame.
"""

from __future__ import annotations

import torch
from torch import nn

from dlqsm.models.base import QSMModel, apply_mask, crop_to, pad_to_multiple, scalar
from dlqsm.pipeline.batched import INIT_KEY, classical_estimate

__all__ = ["INIT_KEY", "InversionResidualNet", "classical_estimate"]


class InversionResidualNet(QSMModel):
    """chi = chi0 + gain * chi_scale * backbone([field * field_scale, chi0 / chi_scale]) (ppm).

    Args:
        backbone: nn.Module mapping (B, 2, X, Y, Z) -> (B, 1, X, Y, Z).
        method: classical inversion of :func:`dlqsm.pipeline.inversion.invert` giving chi0.
        params: its parameters (defaults of the method when empty).
        field_scale, chi_scale, pad_multiple, mask_output: as in
            :class:`dlqsm.models.NormalizedNet`.
        residual_gain: initial value of the learned gain of the correction (0: start from
            the classical estimate).

    ``forward(field, mask, b0_dir, voxel_size, chi_init=None)``: pass ``chi_init`` (ppm) when
    chi0 was computed beforehand (training patches, sliding windows); it must come from the
    same method and parameters on the whole volume.

    The classical step uses the geometry, but the backbone has only seen its training geometry,
    so the model reports ``b0_aware = resolution_aware = False`` and
    :class:`dlqsm.inference.Predictor` resamples scans into that frame.
    """

    b0_aware = False
    resolution_aware = False

    def __init__(self, backbone: nn.Module, method: str = "tv", params: dict | None = None,
                 field_scale: float = 10.0, chi_scale: float = 0.1, pad_multiple: int = 8,
                 mask_output: bool = True, residual_gain: float = 0.0):
        super().__init__()
        from dlqsm.pipeline.inversion import method_defaults

        self.backbone = backbone
        self.method = str(method)
        self.params = dict(params or {})
        unknown = sorted(set(self.params) - set(method_defaults(self.method)))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for method {self.method!r}")
        self.register_buffer("field_scale", torch.tensor(float(field_scale)))
        self.register_buffer("chi_scale", torch.tensor(float(chi_scale)))
        self.pad_multiple = int(pad_multiple)
        self.mask_output = bool(mask_output)
        self.gain = nn.Parameter(torch.tensor(float(residual_gain)))

    def initial_estimate(self, field, mask=None, b0_dir=None, voxel_size=None,
                         weight=None, params: dict | None = None,
                         infos: list | None = None) -> torch.Tensor:
        """chi0 of a whole batch (B, 1, X, Y, Z), ppm (no gradients); ``weight``: optional data
        weight of the inversion, (B, 1, X, Y, Z); ``params``: inversion parameters that replace
        the trained ones for this call (e.g. ``{"alpha": "auto"}``); ``infos``: a list that
        receives each sample's inversion record (see
        :func:`dlqsm.pipeline.batched.classical_estimate`)."""
        return classical_estimate(apply_mask(field, mask), mask, b0_dir, voxel_size,
                                  method=self.method, params={**self.params, **(params or {})},
                                  weight=weight, infos=infos)

    def forward(self, field, mask=None, b0_dir=None, voxel_size=None, chi_init=None):
        """(B, 1, X, Y, Z) field in ppm -> (B, 1, X, Y, Z) chi in ppm."""
        field = apply_mask(field, mask)
        if chi_init is None:
            chi_init = self.initial_estimate(field, mask, b0_dir, voxel_size)
        chi0 = apply_mask(chi_init.to(field.dtype), mask)
        x = torch.cat([field * self.field_scale, chi0 / self.chi_scale], dim=1)
        x, shape = pad_to_multiple(x, self.pad_multiple)
        chi = chi0 + crop_to(self.backbone(x), shape).to(chi0.dtype) * (self.gain *
                                                                         self.chi_scale)
        return apply_mask(chi, mask) if self.mask_output else chi

    def input_normalization(self) -> dict:
        return {"field_scale": scalar(self.field_scale), "chi_scale": scalar(self.chi_scale),
                "rule": "net_input = [field_ppm * field_scale, chi0_ppm / chi_scale]; "
                        "chi_ppm = chi0_ppm + gain * net_output * chi_scale",
                "gain": scalar(self.gain.detach()),
                "initial_estimate": {"method": self.method, "params": self.params},
                "pad_multiple": self.pad_multiple, "uses_geometry": False}


def __getattr__(name: str):
    """Deprecated: ``WithInitialEstimate`` moved to :mod:`dlqsm.simulation.wrappers`."""
    if name == "WithInitialEstimate":
        import warnings

        from dlqsm.simulation.wrappers import WithInitialEstimate

        warnings.warn("dlqsm.models.residual.WithInitialEstimate moved to "
                      "dlqsm.simulation.wrappers.WithInitialEstimate.", DeprecationWarning,
                      stacklevel=2)
        return WithInitialEstimate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
