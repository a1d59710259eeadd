"""Masks for the field-mapping pipeline: brain mask from the magnitude, phase-quality mask,
morphology with structuring elements given in millimetres, and spatial smoothing.

All masks are boolean tensors of shape (X, Y, Z) on the device of their input. Radii and
smoothing widths are in mm and honour anisotropic voxels (``voxel_size`` in mm per axis).

Erosion, dilation and Gaussian smoothing are FFT convolutions (cost independent of the radius)
on a grid zero-padded by the radius, so the volume border counts as background and nothing wraps
around. Connected components and hole filling are inherently sequential and run on the CPU with
:mod:`scipy.ndimage` (the result is returned on the input's device).

A user mask always wins (:func:`resolve_mask`); the magnitude mask is a simple, robust default
(Otsu threshold, opening, largest component, closing, hole filling), not a skull stripper.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from dlqsm.errors import InputError
from dlqsm.physics.fft import crop3, fft3, ifft3, irfft3, kspace_grid, pad3, rfft3
from dlqsm.physics.geometry import normalize_voxel_size
from dlqsm.physics.kernels import sphere_mask

__all__ = [
    "brain_mask",
    "close_mask",
    "dilate_mask",
    "erode_mask",
    "field_step_mask",
    "fill_holes",
    "gaussian_smooth",
    "largest_component",
    "open_mask",
    "otsu_threshold",
    "phase_quality_mask",
    "require_nonempty",
    "resolve_mask",
]


def _radius_vox(radius_mm: float, voxel_size) -> tuple[int, int, int]:
    """Half-width in voxels of a ball of ``radius_mm`` along each axis."""
    vox = normalize_voxel_size(voxel_size)
    return tuple(int(math.floor(radius_mm / h + 1e-9)) for h in vox)


def _ball_count(mask: torch.Tensor, radius_mm: float, voxel_size, pad) -> torch.Tensor:
    """Number of mask voxels inside the ball around each voxel of the zero-padded grid.

    Returns a float tensor on the padded grid (shape + 2 * pad) and the ball's voxel count.
    """
    x = pad3(mask.to(torch.float32), pad)
    ball = sphere_mask(x.shape[-3:], voxel_size, radius_mm, device=mask.device)
    count = irfft3(rfft3(x) * rfft3(ball.to(torch.float32)), x.shape[-3:])
    return count, float(ball.sum())


def erode_mask(mask: torch.Tensor, radius_mm: float, voxel_size=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Erode a boolean mask (X, Y, Z) by a ball of ``radius_mm`` (mm, anisotropic voxels honoured).

    A voxel survives when every voxel within ``radius_mm`` of it (centre-to-centre distance) is
    in the mask; voxels outside the volume count as background. ``radius_mm`` smaller than every
    voxel size leaves the mask unchanged.
    """
    mask = mask.bool()
    if radius_mm <= 0 or max(_radius_vox(radius_mm, voxel_size)) == 0:
        return mask.clone()
    pad = tuple(r + 1 for r in _radius_vox(radius_mm, voxel_size))
    count, n = _ball_count(mask, radius_mm, voxel_size, pad)
    return crop3(count > n - 0.5, pad) & mask


def dilate_mask(mask: torch.Tensor, radius_mm: float, voxel_size=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Dilate a boolean mask (X, Y, Z) by a ball of ``radius_mm`` (mm); same shape as the input."""
    mask = mask.bool()
    if radius_mm <= 0 or max(_radius_vox(radius_mm, voxel_size)) == 0:
        return mask.clone()
    pad = tuple(r + 1 for r in _radius_vox(radius_mm, voxel_size))
    count, _ = _ball_count(mask, radius_mm, voxel_size, pad)
    return crop3(count > 0.5, pad) | mask


def open_mask(mask: torch.Tensor, radius_mm: float, voxel_size=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Morphological opening (erode then dilate) with a ball of ``radius_mm``: removes thin
    bridges and specks narrower than the ball."""
    return dilate_mask(erode_mask(mask, radius_mm, voxel_size), radius_mm, voxel_size) & mask.bool()


def close_mask(mask: torch.Tensor, radius_mm: float, voxel_size=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Morphological closing (dilate then erode) with a ball of ``radius_mm``: fills gaps and
    dents narrower than the ball. The volume is padded first so the border does not erode it."""
    pad = tuple(r + 1 for r in _radius_vox(radius_mm, voxel_size))
    big = pad3(mask.bool().to(torch.uint8), pad).bool()
    closed = erode_mask(dilate_mask(big, radius_mm, voxel_size), radius_mm, voxel_size)
    return crop3(closed, pad) | mask.bool()


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Largest 6-connected component of a boolean mask (X, Y, Z); empty stays empty.

    Runs :func:`scipy.ndimage.label` on the CPU.
    """
    m = mask.bool().cpu().numpy()
    labels, n = ndimage.label(m)
    if n <= 1:
        return mask.bool().clone()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return torch.from_numpy(labels == int(np.argmax(sizes))).to(mask.device)


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """Fill enclosed 3D holes of a boolean mask (X, Y, Z): background components (6-connected)
    that do not touch the volume border. One labelling pass on the CPU (:mod:`scipy.ndimage`)."""
    m = mask.bool().cpu().numpy()
    labels, n = ndimage.label(~m)
    if n == 0:
        return mask.bool().clone()
    border = np.zeros(n + 1, dtype=bool)
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0],
                 labels[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = True  # label 0 is the mask itself
    return torch.from_numpy(m | ~border[labels]).to(mask.device)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a 1D set of intensities (maximises the between-class variance).

    Intensities above the 99.9th percentile are clipped first, so a few bright vessels or
    artefacts do not squeeze the histogram. When the optimum is a plateau (an empty gap between
    the classes) the threshold is the middle of the gap.
    """
    v = values.flatten().to(torch.float64)
    if v.numel() == 0:
        raise InputError("cannot compute a threshold of an empty image.")
    hi = torch.quantile(v[:: max(1, v.numel() // 1_000_000)], 0.999)
    lo = v.min()
    if hi <= lo:
        return float(lo)
    hist = torch.histc(v.clamp(max=float(hi)), bins=bins, min=float(lo), max=float(hi))
    width = (hi - lo) / bins
    centres = lo + (torch.arange(bins, device=v.device, dtype=torch.float64) + 0.5) * width
    p = hist / hist.sum()
    w0 = torch.cumsum(p, 0)
    m0 = torch.cumsum(p * centres, 0)
    mt = m0[-1]
    between = (mt * w0 - m0) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    between = between[:-1]
    best = torch.nonzero(between >= between.max() * (1 - 1e-9)).flatten()
    k = 0.5 * float(best[0] + best[-1])  # middle of a plateau (an empty gap between classes)
    return float(lo + (k + 1) * width)


def _combined_magnitude(magnitude: torch.Tensor) -> torch.Tensor:
    """(X, Y, Z) or (E, X, Y, Z) magnitude -> (X, Y, Z) root-sum-of-squares over echoes."""
    if magnitude.dim() == 4:
        return torch.sqrt((magnitude.float() ** 2).sum(0))
    if magnitude.dim() == 3:
        return magnitude.float()
    raise InputError(f"a magnitude image must be (X, Y, Z) or (E, X, Y, Z), got shape "
                     f"{tuple(magnitude.shape)}.")


def brain_mask(magnitude: torch.Tensor, voxel_size=(1.0, 1.0, 1.0), *,
               threshold: float | None = None, threshold_scale: float = 1.0,
               opening_mm: float = 2.0, closing_mm: float = 2.0,
               fill: bool = True) -> torch.Tensor:
    """Tissue mask from a GRE magnitude image.

    Steps: root-sum-of-squares over echoes when given (E, X, Y, Z); threshold (Otsu's by
    default, times ``threshold_scale``); opening with a ball of ``opening_mm`` to cut thin
    bridges; the largest 6-connected component; closing with a ball of ``closing_mm``; 3D hole
    filling. This gives the object (head or brain, depending on what the magnitude shows), not
    a skull-stripped brain: give a brain mask from a dedicated tool when one exists.

    Args:
        magnitude: (X, Y, Z) or (E, X, Y, Z), any positive scale.
        voxel_size: (3,) mm, for the radii.
        threshold: absolute intensity threshold; Otsu's when None.

    Returns:
        bool (X, Y, Z) on the magnitude's device.

    Raises:
        InputError: when the mask comes out empty.
    """
    mag = _combined_magnitude(magnitude)
    thr = otsu_threshold(mag) * threshold_scale if threshold is None else float(threshold)
    mask = mag > thr
    if opening_mm > 0:
        opened = open_mask(mask, opening_mm, voxel_size)
        mask = opened if opened.any() else mask
    mask = largest_component(mask)
    if closing_mm > 0:
        mask = close_mask(mask, closing_mm, voxel_size)
    if fill:
        mask = fill_holes(mask)
    return require_nonempty(mask, "the brain mask computed from the magnitude",
                            fix="check the magnitude image or give a mask file.")


def phase_quality_mask(mask: torch.Tensor, *, quality: torch.Tensor | None = None,
                       residual: torch.Tensor | None = None, threshold: float | None = None,
                       fill: bool = True, largest: bool = True) -> torch.Tensor:
    """Restrict a mask (X, Y, Z) to voxels with reliable phase.

    Exactly one of:
        quality: (X, Y, Z) phase quality in [0, 1] (e.g.
            :func:`dlqsm.pipeline.unwrap.voxel_quality`, the mean edge weight of phase,
            gradient and magnitude coherence); keeps
            ``quality >= threshold`` (default 0.5).
        residual: (X, Y, Z) echo-fit phase residual in rad (``EchoFit.residual``); keeps
            ``residual <= threshold``, by default median + 5 * 1.4826 * MAD within the mask
            (robust to the bad voxels it is meant to find).

    Then optionally the largest connected component and 3D hole filling (holes count as
    enclosed unreliable spots, e.g. veins, which the inversion should still cover).

    Returns:
        bool (X, Y, Z), a subset of ``mask``.
    """
    mask = mask.bool()
    if (quality is None) == (residual is None):
        raise InputError("phase_quality_mask needs exactly one of quality= or residual=.")
    if quality is not None:
        keep = quality >= (0.5 if threshold is None else threshold)
    else:
        if threshold is None:
            r = residual[mask].float()
            med = r.median()
            threshold = float(med + 5 * 1.4826 * (r - med).abs().median())
        keep = residual <= threshold
    out = keep & mask
    if largest:
        out = largest_component(out)
    if fill:
        out = fill_holes(out) & mask
    return require_nonempty(out, "the phase-quality mask",
                            fix="lower the quality threshold or check the phase data.")


def field_step_mask(field: torch.Tensor, mask: torch.Tensor, max_step: float, *,
                    dilate: bool = True) -> torch.Tensor:
    """Voxels of ``mask`` whose field jumps to a 6-neighbour by more than ``max_step``.

    A field map is unreliable where it changes fast between voxels: next to air and bone the
    phase of the later echoes aliases between neighbours (and in a real scan the magnitude
    dephases), so spatial unwrapping can settle on the wrong multiple of 2 pi, and the field
    there is at best partly modelled by any background removal. The returned voxels (with
    their 6-neighbours if ``dilate``, since a jump involves both sides) should be given zero
    weight in the data terms while staying in the output mask (chi there comes from the
    regulariser; QSM-CI scores dropped voxels as 0).

    Args:
        field: (X, Y, Z) field (ppm, or any unit of ``max_step``).
        mask: (X, Y, Z) bool; only pairs of neighbours both inside it are compared.
        max_step: largest trusted difference between 6-neighbours (same unit as ``field``).
        dilate: also flag the 6-neighbours (inside ``mask``) of flagged voxels.

    Returns:
        bool (X, Y, Z), a subset of ``mask`` (the unreliable voxels).
    """
    m = mask.bool()
    f = torch.where(m, field.float(), torch.zeros((), device=field.device))
    bad = torch.zeros_like(m)
    for dim in range(3):
        n = f.shape[dim]
        a, b = f.narrow(dim, 0, n - 1), f.narrow(dim, 1, n - 1)
        both = m.narrow(dim, 0, n - 1) & m.narrow(dim, 1, n - 1)
        jump = both & ((a - b).abs() > max_step)
        bad.narrow(dim, 0, n - 1).logical_or_(jump)
        bad.narrow(dim, 1, n - 1).logical_or_(jump)
    if dilate:
        grown = bad.clone()
        for dim in range(3):
            n = bad.shape[dim]
            grown.narrow(dim, 0, n - 1).logical_or_(bad.narrow(dim, 1, n - 1))
            grown.narrow(dim, 1, n - 1).logical_or_(bad.narrow(dim, 0, n - 1))
        bad = grown
    return bad & m


def require_nonempty(mask: torch.Tensor, what: str = "the mask", *, path=None,
                     fix: str | None = None) -> torch.Tensor:
    """Return ``mask`` unchanged, or raise :class:`InputError` naming it when it is empty."""
    if not bool(mask.any()):
        raise InputError(f"{what} is empty (no voxel selected).", path=path,
                         fix=fix or "give a mask with at least one non-zero voxel.")
    return mask


def resolve_mask(user_mask, magnitude: torch.Tensor | None = None, voxel_size=(1.0, 1.0, 1.0),
                 *, shape=None, path=None, **brain_mask_kwargs) -> torch.Tensor:
    """The mask a pipeline should use: the user's when given (it always wins), else
    :func:`brain_mask` of ``magnitude``.

    Args:
        user_mask: None, or an array/tensor (X, Y, Z); voxels > 0.5 are inside (binary masks and
            probability maps both work).
        magnitude: (X, Y, Z) or (E, X, Y, Z), used only without a user mask.
        shape: expected spatial shape; defaults to the magnitude's.
        path: the mask's file, named in errors.

    Raises:
        InputError: a user mask of the wrong shape, an empty mask, or neither input given.
    """
    if user_mask is not None:
        m = torch.as_tensor(user_mask)
        if m.dim() == 4 and m.shape[-1] == 1:
            m = m[..., 0]
        ref = tuple(shape) if shape is not None else (
            tuple(magnitude.shape[-3:]) if magnitude is not None else None)
        if m.dim() != 3 or (ref is not None and tuple(m.shape) != ref):
            raise InputError(f"the mask has shape {tuple(m.shape)} but the data are {ref}.",
                             path=path, fix="give a mask on the same voxel grid as the phase.")
        device = magnitude.device if magnitude is not None else m.device
        m = (m.to(device).float() > 0.5)
        return require_nonempty(m, "the given mask", path=path)
    if magnitude is None:
        raise InputError("no mask and no magnitude image to compute one from.",
                         fix="give a mask file or the magnitude images.")
    return brain_mask(magnitude, voxel_size, **brain_mask_kwargs)


def gaussian_smooth(x: torch.Tensor, sigma_mm: float, voxel_size=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Gaussian smoothing over the last three dimensions (sigma in mm, per-axis voxel sizes).

    Works on real or complex tensors (..., X, Y, Z); zero-padded by 3 sigma so nothing wraps.
    For phase maps smooth ``magnitude * exp(1j * phase)`` and take the angle.
    """
    if sigma_mm <= 0:
        return x
    vox = normalize_voxel_size(voxel_size)
    pad = tuple(int(math.ceil(3 * sigma_mm / h)) for h in vox)
    xp = pad3(x, pad)
    shape = xp.shape[-3:]
    real = not x.is_complex()
    ks = kspace_grid(shape, vox, half=real, device=x.device, dtype=torch.float32)
    g = torch.exp(-2 * math.pi ** 2 * sigma_mm ** 2 * sum(k ** 2 for k in ks))
    out = irfft3(rfft3(xp) * g, shape) if real else ifft3(fft3(xp) * g)
    return crop3(out, pad)
