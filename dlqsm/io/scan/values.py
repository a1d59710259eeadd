"""Checks and conversions of the values a scan is loaded from, in dlqsm's units.

Echo times (s, ms detected), field strength (T), phase (rad: integer and non-radian ranges),
magnitude (non-negative), masks (threshold 0.5), field units (ppm, Hz, rad -> ppm), image grids
and the echo/coil axis order. The rules are written in :mod:`dlqsm.io.scan`; the loader
(:mod:`dlqsm.io.scan.loader`) and the :class:`~dlqsm.io.scan.data.Scan` use them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from dlqsm.errors import InputError
from dlqsm.io.nifti import NiftiVolume
from dlqsm.physics.units import hz_to_ppm, phase_to_ppm, wrap_phase

PHASE_RANGE_TOL = 0.05
"""Slack (rad) allowed beyond a 2*pi span before phase is declared "not radians"."""
MIN_PHASE_SPAN = 0.2
"""A phase spanning less than this (rad) over the whole volume is declared "not radians"."""
FIELD_UNITS = ("ppm", "hz", "rad")
FIELD_LIMIT_PPM = {"local_field": 1.0, "total_field": 10.0}
"""Largest plausible 99th percentile of |field| (ppm) inside the mask, per kind of field."""
FIELD_NOTICE_PPM = {"local_field": 0.3, "total_field": 5.0}
"""Above this 99th percentile a field is accepted with a notice (in vivo local fields of the
2016 challenge subject: 0.04 ppm)."""


def check_echo_times(te, *, path=None) -> np.ndarray:
    """Validate echo times in s: finite, positive, strictly increasing (no duplicates).

    Raises:
        InputError: naming ``path`` (a sidecar, params.json or the command line).
    """
    t = np.asarray(te, dtype=np.float64).reshape(-1)
    where = path if path is not None else "echo times"
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise InputError(f"echo times must be positive finite numbers in s, got {t.tolist()}.",
                         path=where)
    d = np.diff(t)
    if np.any(d == 0):
        raise InputError(f"duplicate echo times {t.tolist()}.", path=where,
                         fix="give each echo once, with its own echo time.")
    if np.any(d < 0):
        raise InputError(f"echo times are not increasing: {t.tolist()}.", path=where,
                         fix="order the echoes (and their files) by echo time.")
    return t


def echo_times_to_seconds(te, *, notices: list[str] | None = None, path=None) -> np.ndarray:
    """Echo times as given -> seconds. Values above 1 are read as ms (with a notice)."""
    t = np.asarray(te, dtype=np.float64).reshape(-1)
    if t.size and np.all(np.isfinite(t)) and t.max() > 1.0:
        if notices is not None:
            where = f"{path}: " if path is not None else ""
            notices.append(f"{where}echo times {t.tolist()} read as milliseconds (a GRE echo time "
                           "above 1 s is implausible); converted to seconds.")
        t = t / 1000.0
    return t


def check_field_strength(field_strength, *, path=None) -> float:
    """Validate the field strength: a positive number of tesla up to 25."""
    where = path if path is not None else "field strength"
    try:
        b = float(field_strength)
    except (TypeError, ValueError):
        raise InputError(f"the field strength must be a number (T), got {field_strength!r}.",
                         path=where) from None
    if not math.isfinite(b) or b <= 0 or b > 25:
        raise InputError(f"the field strength must be in tesla (0 < B0 <= 25), got {b}.",
                         path=where, fix="give e.g. --field-strength 3.")
    return b


def normalize_phase(data: np.ndarray, *, rescale: bool | None = None, path=None,
                    notices: list[str] | None = None) -> np.ndarray:
    """Phase as stored -> radians in [-pi, pi) (float32); see the module notes for the rules.

    Args:
        data: phase array of any shape (all echoes together, so one scaling serves them all).
        rescale: None checks the range (integers rescaled, other non-radian ranges refused);
            True also maps a non-radian float range [min, max] linearly onto [-pi, pi);
            False takes the values as radians unchecked.
        path: the file, for messages.
        notices: list that receives a line describing any conversion.

    Raises:
        InputError: a non-integer phase that is clearly not radians, without ``rescale=True``.
    """
    x = np.asarray(data, dtype=np.float32)
    if rescale is False or x.size == 0:
        return x
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo
    integer = bool(np.all(x == np.round(x)))
    if integer and span > 2 * math.pi + PHASE_RANGE_TOL:
        return _rescale_integer_phase(x, lo, hi, path, notices)
    radians = (lo >= -math.pi - PHASE_RANGE_TOL and hi <= 2 * math.pi + PHASE_RANGE_TOL
               and span <= 2 * math.pi + PHASE_RANGE_TOL and span >= MIN_PHASE_SPAN)
    if radians:
        return _wrap(x)
    if not rescale:
        raise InputError(
            f"phase values span [{lo:.4g}, {hi:.4g}], which is not radians (a wrapped phase "
            "image spans about 2*pi; noise outside the head covers the whole circle).",
            path=path, fix="pass --rescale-phase (rescale_phase=True) to map the range linearly "
            "onto [-pi, pi), or convert the phase to radians yourself.")
    out = (x - lo) / max(span, 1e-30) * (2 * math.pi) - math.pi
    _notice(notices, path, f"phase range [{lo:.4g}, {hi:.4g}] rescaled linearly to [-pi, pi) "
            "(--rescale-phase).")
    return _wrap(out)


def _rescale_integer_phase(x, lo, hi, path, notices) -> np.ndarray:
    if lo >= 0:
        n = 2.0 ** math.ceil(math.log2(hi + 1))
        out = x / n * (2 * math.pi) - math.pi
        rng = f"[0, {n:.0f})"
    else:
        n = 2.0 ** math.ceil(math.log2(max(-lo, hi + 1)))
        out = x / n * math.pi
        rng = f"[-{n:.0f}, {n:.0f})"
    _notice(notices, path, f"phase stored as integers ({lo:.0f}..{hi:.0f}); rescaled from {rng} "
            "to [-pi, pi) radians.")
    return _wrap(out)


def _wrap(x: np.ndarray) -> np.ndarray:
    """Wrap to [-pi, pi) (values already there are unchanged)."""
    if x.min() >= -math.pi and x.max() < math.pi:
        return x.astype(np.float32, copy=False)
    return wrap_phase(x).astype(np.float32)


def _notice(notices, path, text) -> None:
    if notices is not None:
        notices.append(f"{path}: {text}" if path is not None else text)


def check_magnitude(mag: np.ndarray, *, path=None, notices=None) -> np.ndarray:
    """Magnitude must be non-negative: a few negative voxels (interpolation) are clipped to 0
    with a notice; many mean a swapped or real-valued image (InputError)."""
    neg = mag < 0
    if not neg.any():
        return mag
    frac = float(neg.mean())
    if frac > 0.01:
        raise InputError(f"magnitude is negative in {100 * frac:.1f}% of voxels (is it a phase "
                         "or real-part image?).", path=path,
                         fix="give the magnitude image (and the phase as --phase).")
    _notice(notices, path, f"{int(neg.sum())} negative magnitude voxels clipped to 0.")
    return np.maximum(mag, 0)


def check_same_grid(ref: NiftiVolume, other: NiftiVolume, *, what: str = "image") -> None:
    """Raise InputError (naming ``other``'s file) unless both share spatial shape and affine."""
    if tuple(ref.data.shape[:3]) != tuple(other.data.shape[:3]):
        raise InputError(f"{what} has grid {tuple(other.data.shape[:3])} but {ref.path} has "
                         f"{tuple(ref.data.shape[:3])}.", path=other.path,
                         fix="give images on the same voxel grid (resample or pick the right "
                         "file).")
    if not np.allclose(ref.affine, other.affine, rtol=1e-4, atol=1e-3):
        raise InputError(f"{what} has a different affine (orientation/position) than "
                         f"{ref.path}.", path=other.path,
                         fix="give images from the same acquisition, or resample them onto "
                         "one grid.")


def to_echo_first(data: np.ndarray, *, coil_axis: int | None = None, path=None,
                  notices=None) -> np.ndarray:
    """NIfTI array -> (E, X, Y, Z), or (C, E, X, Y, Z) when a coil axis is present.

    Args:
        data: (X, Y, Z) single echo, (X, Y, Z, E), or 5D (X, Y, Z, E, C) -- the 5th NIfTI
            dimension is read as coils unless ``coil_axis`` (3 or 4) says otherwise. A 4D array
            with ``coil_axis=3`` is (X, Y, Z, C) of one echo.
    """
    if data.ndim == 3:
        if coil_axis is not None:
            raise InputError("coil_axis given but the image is 3D.", path=path)
        return data[None]
    if data.ndim == 4:
        if coil_axis is None:
            return np.moveaxis(data, 3, 0)
        if coil_axis != 3:
            raise InputError(f"coil axis {coil_axis} does not exist in a 4D image.", path=path,
                             fix="use --coil-axis 3 (X, Y, Z, C) or give 5D data.")
        return np.moveaxis(data, 3, 0)[:, None]
    if data.ndim == 5:
        if coil_axis is None:
            coil_axis = 4
            _notice(notices, path, "5D image read as (X, Y, Z, echo, coil); pass --coil-axis 3 "
                    "if the coils come first.")
        if coil_axis not in (3, 4):
            raise InputError(f"coil axis must be 3 or 4 for a 5D image, got {coil_axis}.",
                             path=path)
        echo_axis = 7 - coil_axis
        return np.transpose(data, (coil_axis, echo_axis, 0, 1, 2))
    raise InputError(f"expected a 3D, 4D or 5D image, got {data.ndim}D {data.shape}.", path=path)


def mask_from_values(data: np.ndarray, *, path=None, notices=None) -> np.ndarray:
    """Boolean brain mask from a mask image: voxels above 0.5 (binary, 0/255 and probability
    masks); a mask whose values never exceed 0.5 (e.g. all 0.5) is its non-zero voxels, with a
    notice. Raises InputError (naming ``path``) for a mask without any positive voxel."""
    data = np.asarray(data)
    top = float(data.max()) if data.size else 0.0
    if top > 0.5:
        return data > 0.5
    if top <= 0:
        raise InputError("the mask is empty (no voxel above 0).", path=path,
                         fix="give a mask with the brain voxels set to 1.")
    _notice(notices, path, f"mask values are at most {top:g}: every voxel above 0 is taken as "
            "brain.")
    return data > 0


def field_to_ppm(data: np.ndarray, unit: str | None, *, kind: str, mask=None, te=None,
                 field_strength=None, path=None, notices=None,
                 b0_tesla=None) -> np.ndarray:
    """A field image in ``unit`` -> ppm, checked for plausibility when ``unit`` is None.

    Args:
        data: (X, Y, Z) field values.
        unit: None (ppm, checked), ``"ppm"`` (as given), ``"hz"`` or ``"rad"``.
        kind: ``"local_field"`` or ``"total_field"`` (sets the plausibility limit).
        mask: (X, Y, Z) bool; the check looks inside it (everywhere if None).
        te: echo time in s (one value) for ``"rad"``. field_strength: B0 (T) for hz/rad
            (``b0_tesla``: its deprecated name).

    Raises:
        InputError: a missing TE/B0 for a conversion, or implausible ppm values (with a hint).
    """
    what = kind.replace("_", " ")
    if unit not in (None, *FIELD_UNITS):
        raise InputError(f"unknown field unit {unit!r}.",
                         fix=f"use one of {', '.join(FIELD_UNITS)}.")
    if b0_tesla is not None:
        warnings.warn("field_to_ppm(b0_tesla=...) is now field_to_ppm(field_strength=...).",
                      DeprecationWarning, stacklevel=2)
        field_strength = b0_tesla if field_strength is None else field_strength
    if unit in ("hz", "rad") and field_strength is None:
        raise InputError(f"a {what} in {unit} needs the field strength to become ppm.",
                         path=path, fix="pass --field-strength (T).")
    if unit == "hz":
        b0 = check_field_strength(field_strength)
        _notice(notices, path, f"{what} converted from Hz to ppm at {b0:g} T.")
        return (hz_to_ppm(np.asarray(data, np.float64), b0)).astype(np.float32)
    if unit == "rad":
        t = None if te is None else np.asarray(te, np.float64).reshape(-1)
        if t is None or t.size != 1:
            raise InputError(f"a {what} in rad needs exactly one echo time (the phase's TE).",
                             path=path, fix="pass --te T (s) with --field-strength.")
        b0 = check_field_strength(field_strength)
        te_s = float(check_echo_times(echo_times_to_seconds(t, notices=notices))[0])
        _notice(notices, path, f"{what} converted from rad to ppm (TE {te_s:g} s, {b0:g} T).")
        return (phase_to_ppm(np.asarray(data, np.float64), te_s, b0)).astype(np.float32)
    if unit == "ppm":
        return data
    inside = np.abs(data[mask] if mask is not None and mask.any() else data)
    p99 = float(np.percentile(inside, 99)) if inside.size else 0.0
    limit = FIELD_LIMIT_PPM[kind]
    if p99 > limit:
        raise InputError(
            f"{what} values reach {p99:.3g} (99th percentile of |value| inside the mask), "
            f"implausible for ppm (a {what} of the brain stays below {limit:g} ppm).", path=path,
            fix="pass --field-unit hz (with --field-strength) or --field-unit rad (with --te and "
            "--field-strength) to convert, or --field-unit ppm to use the values as they are.")
    if p99 > FIELD_NOTICE_PPM[kind]:
        _notice(notices, path, f"{what} values reach {p99:.3g} ppm (99th percentile of |value| "
                "inside the mask), large for ppm: if the file is in rad or Hz, pass --field-unit.")
    return data
