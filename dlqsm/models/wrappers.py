"""Wrappers that turn a plain 3D image-to-image network into a QSM model.

* :class:`NormalizedNet` -- fixed input/output scaling, masking and padding to a multiple of the
  network's down-sampling factor around any 1-in/1-out backbone (MONAI ``UNet``,
  ``BasicUNet``, ...). Plain U-Nets ignore the B0 direction and voxel size.
* :class:`TKDResidualNet` -- a physics initialisation (thresholded k-space division, built per
  sample from the B0 direction and voxel size) plus a learned correction: the backbone sees
  (field, TKD) and predicts chi - TKD.

Normalisation (stored as buffers, so it travels with the weights): the network sees
``field_ppm * field_scale`` and its output is multiplied by ``chi_scale`` to give ppm. The
defaults (10 and 0.1) bring typical brain local fields (~0.01-0.1 ppm) and susceptibilities
(~0.05-0.3 ppm) to order one. Use the same values at inference: they are read from the model.
"""

from __future__ import annotations

import torch
from torch import nn

from dlqsm.models.base import QSMModel, apply_mask, crop_to, pad_to_multiple, scalar
from dlqsm.models.batched_dipole import batch_dipole, tkd


class NormalizedNet(QSMModel):
    """chi = chi_scale * backbone(field_scale * field) (* mask), in ppm.

    Args:
        backbone: nn.Module mapping (B, 1, X, Y, Z) -> (B, 1, X, Y, Z).
        field_scale: factor applied to the input field (ppm) before the backbone.
        chi_scale: factor applied to the backbone output to give ppm.
        pad_multiple: inputs are zero-padded to a multiple of this (2**levels of the U-Net) and
            the output is cropped back, so any volume shape is accepted.
        mask_output: multiply the prediction by the mask when one is given.
    """

    def __init__(self, backbone: nn.Module, field_scale: float = 10.0, chi_scale: float = 0.1,
                 pad_multiple: int = 8, mask_output: bool = True):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("field_scale", torch.tensor(float(field_scale)))
        self.register_buffer("chi_scale", torch.tensor(float(chi_scale)))
        self.pad_multiple = int(pad_multiple)
        self.mask_output = bool(mask_output)

    def forward(self, field, mask=None, b0_dir=None, voxel_size=None):
        """(B, 1, X, Y, Z) field in ppm -> (B, 1, X, Y, Z) chi in ppm; geometry is ignored."""
        x = apply_mask(field, mask) * self.field_scale
        x, shape = pad_to_multiple(x, self.pad_multiple)
        chi = crop_to(self.backbone(x), shape) * self.chi_scale
        return apply_mask(chi, mask) if self.mask_output else chi

    def input_normalization(self) -> dict:
        return {"field_scale": scalar(self.field_scale), "chi_scale": scalar(self.chi_scale),
                "rule": "net_input = field_ppm * field_scale; chi_ppm = net_output * chi_scale",
                "pad_multiple": self.pad_multiple, "uses_geometry": False}


class TKDResidualNet(QSMModel):
    """chi = TKD(field) + chi_scale * backbone([field * field_scale, TKD(field) / chi_scale]).

    The TKD initialisation uses the dipole kernel of each sample's B0 direction and voxel
    size, so the model accepts any orientation and resolution.

    Args:
        backbone: nn.Module mapping (B, 2, X, Y, Z) -> (B, 1, X, Y, Z).
        threshold: TKD truncation level of |D|.
        field_scale, chi_scale, pad_multiple, mask_output: as in :class:`NormalizedNet`.
        padding: zero-padding (voxels per side) of the dipole operator.
    """

    def __init__(self, backbone: nn.Module, threshold: float = 0.19, field_scale: float = 10.0,
                 chi_scale: float = 0.1, pad_multiple: int = 8, mask_output: bool = True,
                 padding: int = 0):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("field_scale", torch.tensor(float(field_scale)))
        self.register_buffer("chi_scale", torch.tensor(float(chi_scale)))
        self.threshold = float(threshold)
        self.pad_multiple = int(pad_multiple)
        self.mask_output = bool(mask_output)
        self.padding = padding

    def forward(self, field, mask=None, b0_dir=None, voxel_size=None):
        """(B, 1, X, Y, Z) field in ppm -> (B, 1, X, Y, Z) chi in ppm."""
        field = apply_mask(field, mask)
        op = batch_dipole(field, voxel_size, b0_dir, padding=self.padding)
        chi0 = apply_mask(tkd(field, op, self.threshold), mask)
        x = torch.cat([field * self.field_scale, chi0 / self.chi_scale], dim=1)
        x, shape = pad_to_multiple(x, self.pad_multiple)
        chi = chi0 + crop_to(self.backbone(x), shape) * self.chi_scale
        return apply_mask(chi, mask) if self.mask_output else chi

    def input_normalization(self) -> dict:
        return {"field_scale": scalar(self.field_scale), "chi_scale": scalar(self.chi_scale),
                "rule": "net_input = [field_ppm * field_scale, tkd_ppm / chi_scale]; "
                        "chi_ppm = tkd_ppm + net_output * chi_scale",
                "tkd_threshold": self.threshold, "pad_multiple": self.pad_multiple,
                "uses_geometry": True}
