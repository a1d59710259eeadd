"""An unrolled, physics-informed network (proximal-gradient style, in the spirit of LPCNN/MoDL).

Each of K iterations takes a gradient step on the data term ||M (D chi - f)||^2 / 2, with D the
dipole operator of the sample's own B0 direction and voxel size (so any orientation and
resolution is accepted), followed by a small learned 3D CNN acting as the prior (proximal map):

    chi_{k+1/2} = chi_k - alpha_k * D^H M (D chi_k - f)
    chi_{k+1}   = chi_{k+1/2} + CNN_k([chi_{k+1/2}, f])

Internally both the field and chi are multiplied by ``scale`` (the dipole model is linear, so
the data term is unchanged); the output is divided by it again and is in ppm.
"""

from __future__ import annotations

import torch
from torch import nn

from dlqsm.models.base import QSMModel, apply_mask, scalar
from dlqsm.models.batched_dipole import batch_dipole, tkd


class ConvPrior(nn.Module):
    """Residual 3D CNN: x[:, :1] + conv stack(x), (B, C, X, Y, Z) -> (B, 1, X, Y, Z)."""

    def __init__(self, in_channels: int = 2, features: int = 32, layers: int = 4):
        super().__init__()
        if layers < 2:
            raise ValueError("a ConvPrior needs at least 2 layers")
        mods: list[nn.Module] = [nn.Conv3d(in_channels, features, 3, padding=1),
                                 nn.LeakyReLU(0.1, inplace=True)]
        for _ in range(layers - 2):
            mods += [nn.Conv3d(features, features, 3, padding=1), nn.LeakyReLU(0.1, inplace=True)]
        last = nn.Conv3d(features, 1, 3, padding=1)
        nn.init.zeros_(last.weight)  # start as the identity: the data steps act alone at first
        nn.init.zeros_(last.bias)
        mods.append(last)
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.net(x)


class UnrolledQSM(QSMModel):
    """K unrolled (data-gradient step, learned prior) iterations; see the module docstring.

    Args:
        iterations: K.
        features, layers: width and depth of each ConvPrior.
        share_weights: one prior for all iterations (fewer parameters) instead of K.
        step_init: initial gradient step alpha_k (learned; |D| <= 2/3 so steps < 4.5 are stable).
        init: starting point: "tkd" (thresholded k-space division), "adjoint" (D^H f) or "zero".
        tkd_threshold: truncation level for ``init="tkd"``.
        scale: internal scaling of field and chi (see the module docstring).
        padding: zero-padding (voxels per side) of the dipole operator.
    """

    def __init__(self, iterations: int = 4, features: int = 32, layers: int = 4,
                 share_weights: bool = False, step_init: float = 2.0, init: str = "tkd",
                 tkd_threshold: float = 0.19, scale: float = 10.0, padding: int = 0):
        super().__init__()
        if init not in ("tkd", "adjoint", "zero"):
            raise ValueError(f"init must be 'tkd', 'adjoint' or 'zero', got {init!r}")
        n_priors = 1 if share_weights else iterations
        self.priors = nn.ModuleList(ConvPrior(2, features, layers) for _ in range(n_priors))
        self.steps = nn.Parameter(torch.full((iterations,), float(step_init)))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.iterations = int(iterations)
        self.init = init
        self.tkd_threshold = float(tkd_threshold)
        self.padding = padding

    def _start(self, f, op, mask):
        if self.init == "tkd":
            return apply_mask(tkd(f, op, self.tkd_threshold), mask)
        if self.init == "adjoint":
            return apply_mask(op.adjoint(f), mask)
        return torch.zeros_like(f)

    def forward(self, field, mask=None, b0_dir=None, voxel_size=None):
        """(B, 1, X, Y, Z) field in ppm -> (B, 1, X, Y, Z) chi in ppm."""
        m = torch.ones_like(field) if mask is None else mask.to(field.dtype)
        f = field * m * self.scale
        op = batch_dipole(f, voxel_size, b0_dir, padding=self.padding)
        chi = self._start(f, op, m)
        for k in range(self.iterations):
            residual = m * (op.forward(chi) - f)
            chi = chi - self.steps[k] * op.adjoint(residual)
            prior = self.priors[0 if len(self.priors) == 1 else k]
            chi = prior(torch.cat([chi, f], dim=1))
        return chi * m / self.scale

    def input_normalization(self) -> dict:
        return {"scale": scalar(self.scale),
                "rule": "field_ppm and chi are multiplied by scale inside; output in ppm",
                "init": self.init, "iterations": self.iterations, "uses_geometry": True}
