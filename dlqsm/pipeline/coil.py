"""Combination of uncombined multi-coil, multi-echo GRE data.

Every coil c sees ``S_cn = M_cn exp(i (theta_c + 2 pi f TE_n))``: its own phase offset
theta_c (receive phase, smooth in space) on top of the common field phase. Summing coils
without removing theta_c cancels signal and leaves phase singularities, so the offsets are
estimated and removed first (the MCPC-3D-S / ASPIRE family, Eckstein et al. 2017, 2018):

* The Hermitian inner product of echoes 1 and 2 summed over coils,
  ``H = sum_c S_c2 conj(S_c1)``, has phase ``2 pi f (TE2 - TE1)``, free of every offset.
* ``theta_c = angle(S_c1 exp(-i r angle_unwrapped(H)))`` with ``r = TE1 / (TE2 - TE1)``.
  ASPIRE: when r is an integer (TE2 = 2 TE1 gives r = 1) ``exp(-i r angle(H))`` needs no
  unwrapping. MCPC-3D-S: otherwise angle(H) is unwrapped spatially first
  (:func:`dlqsm.pipeline.unwrap.unwrap_region_growing`).
* The offsets are smoothed (magnitude-weighted complex Gaussian, sigma in mm) to reduce noise,
  removed from every echo, and the coils summed with magnitude weights:
  ``phase_n = angle(sum_c M_cn S_cn exp(-i theta_c))``. The smoothing trades noise for a small
  bias where the coil phase curves and the coil magnitude changes within the kernel (of order
  sigma^2 |grad log M| |grad theta|: ~0.005 rad at 2 mm for head-sized coil profiles).

Memory: coils are processed one at a time, so beyond the input only a few (E, X, Y, Z)
volumes are held.

The magnitude is the root sum of squares over coils. The combined phase has (nearly) no offset
left, so the echo fit may be run with ``fit_offset=False`` on it.

Shapes: complex data (C, E, X, Y, Z) (or magnitude and phase of that shape, phase in rad);
echo times (E,) in s; outputs (E, X, Y, Z) and offsets (C, X, Y, Z) in rad.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlqsm.errors import InputError
from dlqsm.pipeline.masking import gaussian_smooth, otsu_threshold
from dlqsm.pipeline.unwrap import unwrap_region_growing

__all__ = ["CoilCombination", "coil_phase_offsets", "combine_coils", "sos_magnitude"]


@dataclass
class CoilCombination:
    """Result of :func:`combine_coils`.

    Attributes:
        magnitude: (E, X, Y, Z) root sum of squares over coils.
        phase: (E, X, Y, Z) combined phase in rad, wrapped to (-pi, pi].
        offsets: (C, X, Y, Z) coil phase offsets removed (rad); zeros for ``method="none"``.
        method: "aspire", "mcpc3ds" or "none".
    """

    magnitude: torch.Tensor
    phase: torch.Tensor
    offsets: torch.Tensor
    method: str


def _as_complex(data, magnitude, phase) -> torch.Tensor:
    if data is None:
        if magnitude is None or phase is None:
            raise InputError("give complex coil data, or both magnitude and phase.")
        if magnitude.shape != phase.shape:
            raise InputError(f"coil magnitude {tuple(magnitude.shape)} and phase "
                             f"{tuple(phase.shape)} differ in shape.")
        data = torch.polar(magnitude.float(), phase.float())
    if not data.is_complex():
        raise InputError("coil data must be complex (or given as magnitude and phase).")
    if data.dim() != 5:
        raise InputError(f"coil data must be (C, E, X, Y, Z), got {tuple(data.shape)}.",
                         fix="add a coil axis of length 1 for combined data.")
    return data.to(torch.complex64)


def sos_magnitude(data: torch.Tensor) -> torch.Tensor:
    """Root sum of squares over coils: complex (C, E, X, Y, Z) -> (E, X, Y, Z)."""
    out = torch.zeros(data.shape[1:], dtype=data.real.dtype, device=data.device)
    for c in range(data.shape[0]):
        mag = data[c].abs()
        out.addcmul_(mag, mag)
    return out.sqrt_()


def _choose_method(method: str, te: torch.Tensor) -> str:
    if method not in ("auto", "aspire", "mcpc3ds", "none"):
        raise InputError(f"unknown coil combination method {method!r}.",
                         fix="use 'auto', 'aspire', 'mcpc3ds' or 'none'.")
    if method == "none":
        return method
    if te.numel() < 2:
        raise InputError("coil phase offsets need at least two echoes.",
                         fix="use method='none' (no offset correction) for single-echo data.")
    r = float(te[0] / (te[1] - te[0]))
    integer = abs(r - round(r)) < 1e-3 and round(r) >= 1
    if method == "aspire" and not integer:
        raise InputError(f"ASPIRE needs TE1 / (TE2 - TE1) to be an integer (e.g. TE2 = 2 TE1), "
                         f"got {r:.3f}.", fix="use method='mcpc3ds' or 'auto'.")
    if method == "auto":
        return "aspire" if integer else "mcpc3ds"
    return method


def coil_phase_offsets(data: torch.Tensor, te, *, method: str = "auto",
                       voxel_size=(1.0, 1.0, 1.0), smoothing_mm: float = 2.0,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Phase offset of every coil (rad), (C, X, Y, Z), from complex data (C, E, X, Y, Z).

    ``method``: "aspire" (TE1 / (TE2 - TE1) an integer), "mcpc3ds" (any TEs; unwraps the
    Hermitian-product phase inside ``mask``, by default where its magnitude exceeds half its
    Otsu threshold; outside, the offsets come from the wrapped phase) or "auto".
    ``smoothing_mm``: sigma of the magnitude-weighted complex Gaussian applied to each offset
    (0: none).
    """
    te = torch.as_tensor(te, dtype=torch.float64).flatten()
    method = _choose_method(method, te)
    if method == "none":
        return torch.zeros(data.shape[:1] + data.shape[2:], device=data.device)
    h = sum(data[c, 1] * data[c, 0].conj() for c in range(data.shape[0]))
    r = float(te[0] / (te[1] - te[0]))
    if method == "aspire":
        ref = torch.polar(torch.ones_like(h.real), -round(r) * torch.angle(h))
    else:
        hmag = h.abs()
        if mask is None:  # signal region: skip unwrapping the noise of the air
            mask = hmag > 0.5 * otsu_threshold(hmag)
        dphi = unwrap_region_growing(torch.angle(h), hmag, mask)
        ref = torch.polar(torch.ones_like(dphi), -r * dphi)
    offsets = torch.empty(data.shape[:1] + data.shape[2:], device=data.device)
    for c in range(data.shape[0]):  # one coil at a time: memory of one volume, not C
        z = data[c, 0] * ref  # |S_c1| exp(i theta_c)
        if smoothing_mm > 0:
            z = gaussian_smooth(z, smoothing_mm, voxel_size)
        offsets[c] = torch.angle(z)
    return offsets


def combine_coils(data: torch.Tensor | None = None, te=None, *,
                  magnitude: torch.Tensor | None = None, phase: torch.Tensor | None = None,
                  method: str = "auto", voxel_size=(1.0, 1.0, 1.0), smoothing_mm: float = 2.0,
                  mask: torch.Tensor | None = None) -> CoilCombination:
    """Combine coils: offsets removed, magnitude-weighted phase, sum-of-squares magnitude.

    Args:
        data: complex (C, E, X, Y, Z); or give ``magnitude`` and ``phase`` (rad) of that shape.
        te: (E,) echo times in s (needed unless ``method="none"``).
        method: "auto" (ASPIRE when TE1 / (TE2 - TE1) is an integer, else MCPC-3D-S),
            "aspire", "mcpc3ds", or "none" (no offset correction: only for coils that share
            a phase, e.g. already-combined data with C = 1).
        voxel_size: (3,) mm, for ``smoothing_mm`` (sigma of the offset smoothing, 0: none).
        mask: optional bool (X, Y, Z) region for the MCPC-3D-S unwrapping (default: where
            the Hermitian product's magnitude exceeds half its Otsu threshold).

    Returns:
        :class:`CoilCombination` with (E, X, Y, Z) magnitude and phase, (C, X, Y, Z) offsets.
    """
    data = _as_complex(data, magnitude, phase)
    if te is None:
        if method != "none":
            raise InputError("coil combination needs the echo times.", fix="pass te= (s).")
        te_t = torch.zeros(data.shape[1], dtype=torch.float64)
    else:
        te_t = torch.as_tensor(te, dtype=torch.float64).flatten()
        if te_t.numel() != data.shape[1]:
            raise InputError(f"{te_t.numel()} echo times for {data.shape[1]} echoes.")
    chosen = _choose_method(method, te_t) if te is not None else "none"
    offsets = coil_phase_offsets(data, te_t, method=chosen, voxel_size=voxel_size,
                                 smoothing_mm=smoothing_mm, mask=mask)
    combined = torch.zeros(data.shape[1:], dtype=data.dtype, device=data.device)
    sos = torch.zeros(data.shape[1:], dtype=offsets.dtype, device=data.device)
    for c in range(data.shape[0]):  # sum_c |S_c| S_c exp(-i theta_c), one coil at a time
        mag = data[c].abs()
        sos.addcmul_(mag, mag)
        combined += data[c] * torch.polar(torch.ones_like(offsets[c]), -offsets[c]) * mag
    return CoilCombination(sos.sqrt_(), torch.angle(combined), offsets, chosen)
