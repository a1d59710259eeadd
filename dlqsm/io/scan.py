"""The :class:`Scan` object and :func:`load_scan`, which finds a scan's inputs on disk.

A scan is either *raw* (multi-echo GRE magnitude and phase, optionally per coil), a *total field*
(ppm, e.g. a QSM-CI ``totalfield`` artifact) or a *local field* (ppm, background already removed).
:func:`load_scan` accepts

- a BIDS dataset or subject folder (``*_echo-N_part-{mag,phase}_MEGRE.nii[.gz]`` with JSON
  sidecars giving ``EchoTime`` in s and ``MagneticFieldStrength`` in T), see :mod:`dlqsm.io.bids`;
- a QSM-CI artifact folder (``phase.nii.gz`` + ``magnitude.nii.gz`` 4D over echoes, or
  ``totalfield.nii.gz`` / ``localfield.nii.gz``; ``mask.nii.gz``; ``params.json``), see
  :mod:`dlqsm.io.qsmci`;
- explicit files (``phase=``, ``magnitude=``, ``te=``, ``field_strength=``, ``mask=``,
  ``local_field=`` / ``total_field=``).

Conventions decided here (also written in the messages users see):

- Echo times are seconds. A list whose largest value exceeds 1 is read as milliseconds (no GRE
  echo lasts a second) and converted, with a notice.
- Phase in radians. Integer-valued phase spanning more than 2*pi (e.g. -4096..4095 or 0..4095
  from DICOM) is rescaled from its nominal power-of-two range to [-pi, pi) with a notice.
  Non-integer phase spanning much more than 2*pi (degrees) or far less than it (scaled, e.g.
  +-0.0037) is refused unless ``rescale_phase=True`` (``--rescale-phase``), which maps its
  [min, max] linearly onto [-pi, pi). ``rescale_phase=False`` takes the phase as radians as is.
- ``phase_sign=-1`` flips the phase sign (vendors whose phase rotates the other way, e.g. GE).
- Fields are ppm. ``field_unit=None`` checks that: a local field whose 99th percentile of |value|
  inside the mask exceeds :data:`FIELD_LIMIT_PPM` (1 ppm; local fields of the brain stay within a
  few tenths) or a total field beyond 10 ppm is refused with a hint; ``"hz"`` (needs the field
  strength) and ``"rad"`` (needs one echo time and the field strength) convert to ppm;
  ``"ppm"`` takes the values as given, unchecked.
- One starting point: phase, a total field or a local field given together explicitly are
  refused (a folder's own start is replaced by an explicit field, with a notice).
- Masks: voxels above 0.5 are brain; a mask whose values never exceed 0.5 (e.g. all 0.5) is
  taken as its non-zero voxels, with a notice.
- B0 direction (the geometry rule): an explicit ``b0_dir`` wins; otherwise a ``B0_dir`` from the
  input's own metadata (QSM-CI ``params.json``, a BIDS sidecar) wins over the affine
  (``b0_source="auto"``); ``b0_source="affine"`` / ``"sidecar"`` force one. A sheared
  (non-orthonormal) affine, or a sidecar direction more than :data:`B0_AGREE_DEG` from the
  affine's, gives a notice naming both; both are kept in :attr:`Scan.geometry` for the record.
- A singular affine (zero or degenerate axes) needs ``b0_dir`` and ``voxel_size``; the outputs
  then carry ``diag(voxel_size)`` with the input's translation. When only some files have a
  singular affine, the error names those files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlqsm.errors import InputError
from dlqsm.io.nifti import NiftiVolume, load_nifti, shear_deg
from dlqsm.physics.geometry import (
    angle_to_b0,
    b0_dir_from_affine,
    normalize_b0_dir,
    normalize_voxel_size,
    voxel_size_from_affine,
)
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
B0_SOURCES = ("auto", "affine", "sidecar")
B0_AGREE_DEG = 1.0
"""A sidecar B0 direction further than this from the affine's is reported."""


def _shape(a) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


@dataclass
class Scan:
    """One scan's data and acquisition parameters, in dlqsm's units.

    Attributes:
        phase: wrapped phase in rad, (E, X, Y, Z), or (C, E, X, Y, Z) for uncombined coils;
            numpy or torch. None for field inputs.
        magnitude: same shape as ``phase`` (arbitrary units); optional. Field inputs may carry
            one too, (E, X, Y, Z), for magnitude-weighted inversions (MEDI).
        te: echo times in s, (E,), strictly increasing.
        b0_tesla: field strength in T.
        affine: (4, 4) voxel-to-world (RAS+) matrix of every volume; defaults to
            ``diag(voxel_size)`` when not given.
        b0_dir: unit B0 vector in voxel coordinates (3,); from the affine (world +z) unless given.
        voxel_size: mm (3,); from the affine unless given.
        mask: boolean (X, Y, Z) brain mask; optional for raw input (computed then).
        local_field / total_field: (X, Y, Z) fields in ppm for field inputs.
        sources: input file paths by role (for records).
        notices: what was assumed or converted on loading, for the user and the record.
        missing: InputErrors for optional parts the input folder lacks (raised by
            :meth:`check_maskable` when they turn out to be needed).
        geometry: how the B0 direction was decided: ``b0_dir_source``, ``b0_dir_affine`` and
            ``b0_dir_sidecar`` (with its file), their angle ``b0_disagreement_deg``, the
            affine's ``affine_shear_deg`` and, for a singular input affine, ``input_affine``.
    """

    phase: object | None = None
    magnitude: object | None = None
    te: np.ndarray | None = None
    b0_tesla: float | None = None
    affine: np.ndarray | None = None
    b0_dir: np.ndarray | None = None
    voxel_size: np.ndarray | None = None
    mask: object | None = None
    local_field: object | None = None
    total_field: object | None = None
    sources: dict = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    geometry: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.voxel_size is not None:
            self.voxel_size = normalize_voxel_size(self.voxel_size)
        if self.affine is None:
            vox = self.voxel_size if self.voxel_size is not None else np.ones(3)
            self.affine = np.diag([*vox, 1.0])
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise InputError(f"the affine must be a finite 4x4 matrix, got shape "
                             f"{self.affine.shape}.", path=self.sources.get("affine"))
        if self.voxel_size is None:
            self.voxel_size = voxel_size_from_affine(self.affine)
            if np.any(self.voxel_size <= 0):
                raise InputError("the affine gives a zero voxel size.",
                                 path=self.sources.get("affine"),
                                 fix="repair the NIfTI header or pass --voxel-size.")
        if self.b0_dir is None:
            self.b0_dir = b0_dir_from_affine(self.affine)
        else:
            self.b0_dir = normalize_b0_dir(self.b0_dir)
        if self.te is not None:
            self.te = np.asarray(self.te, dtype=np.float64).reshape(-1)
        self._validate()

    # ----------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"raw"`` (phase given), ``"total_field"`` or ``"local_field"``."""
        if self.phase is not None:
            return "raw"
        if self.total_field is not None:
            return "total_field"
        return "local_field"

    def check_maskable(self) -> None:
        """Raise unless a brain mask is given or can be computed (raw phase needs magnitude
        images or a mask); the error names the files the input's layout expects."""
        if self.phase is None or self.magnitude is not None or self.mask is not None:
            return
        src = self.sources.get("phase")
        raise self.missing.get("magnitude") or InputError(
            "raw phase without magnitude images or a mask: one of them is needed to compute "
            "the brain mask.", path=src[0] if isinstance(src, list) else src,
            fix="pass --magnitude (BIDS: add the *_part-mag_MEGRE files) or --mask.")

    @property
    def has_coils(self) -> bool:
        """True when phase/magnitude carry a coil axis (C, E, X, Y, Z)."""
        return self.phase is not None and len(self.phase.shape) == 5

    @property
    def n_echoes(self) -> int:
        """Number of echoes E (0 for field inputs)."""
        return 0 if self.phase is None else int(self.phase.shape[-4])

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (X, Y, Z)."""
        for a in (self.phase, self.total_field, self.local_field, self.mask):
            if a is not None:
                return _shape(a)[-3:]
        raise InputError("the scan holds no image.")

    def _validate(self) -> None:
        present = [a for a in (self.phase, self.total_field, self.local_field) if a is not None]
        if not present:
            raise InputError("a scan needs phase (raw input), a total field or a local field.",
                             fix="give phase + magnitude files, or --local-field with --mask.")
        sp = self.shape
        src = self.sources
        if self.phase is not None:
            if len(self.phase.shape) not in (4, 5):
                raise InputError(f"phase must be (E, X, Y, Z) or (C, E, X, Y, Z), got "
                                 f"{_shape(self.phase)}.", path=src.get("phase"))
            if self.magnitude is not None and _shape(self.magnitude) != _shape(self.phase):
                raise InputError(
                    f"magnitude has shape {_shape(self.magnitude)} but phase has "
                    f"{_shape(self.phase)} (echo counts or grids differ).",
                    path=src.get("magnitude"), fix="give the magnitude of the same echoes.")
            if self.te is None or self.b0_tesla is None:
                raise InputError("raw phase needs echo times and the field strength.",
                                 path=src.get("phase"), fix="pass --te ... and --field-strength.")
            if self.te.size != self.n_echoes:
                raise InputError(
                    f"{self.te.size} echo times given for {self.n_echoes} phase echoes.",
                    path=src.get("te", src.get("phase")),
                    fix="give one echo time per echo, in seconds.")
            check_echo_times(self.te, path=src.get("te"))
            check_field_strength(self.b0_tesla, path=src.get("b0"))
        if self.phase is None and self.magnitude is not None and (
                len(self.magnitude.shape) not in (4, 5) or _shape(self.magnitude)[-3:] != sp):
            raise InputError(f"magnitude has shape {_shape(self.magnitude)}; expected "
                             f"(E, X, Y, Z) on the grid {sp}.", path=src.get("magnitude"))
        for name in ("total_field", "local_field", "mask"):
            a = getattr(self, name)
            if a is None:
                continue
            if len(a.shape) != 3:
                raise InputError(f"{name.replace('_', ' ')} must be 3D, got {_shape(a)}.",
                                 path=src.get(name), fix="give a single 3D volume.")
            if _shape(a) != sp:
                raise InputError(f"{name.replace('_', ' ')} has shape {_shape(a)} but the "
                                 f"scan's grid is {sp}.", path=src.get(name),
                                 fix="give images on the same voxel grid.")
        if self.phase is None and self.mask is None:
            raise InputError("a field input needs a brain mask.", path=src.get("local_field",
                             src.get("total_field")), fix="pass --mask MASK.nii.gz.")
        if self.mask is not None and not bool((self.mask != 0).any()):
            raise InputError("the mask is empty (no voxel above 0).", path=src.get("mask"),
                             fix="give a mask with the brain voxels set to 1.")


# -------------------------------------------------------------------------------------------
# Checks and conversions shared by the loaders.

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


def check_field_strength(b0_tesla, *, path=None) -> float:
    """Validate the field strength: a positive number of tesla up to 25."""
    where = path if path is not None else "field strength"
    try:
        b = float(b0_tesla)
    except (TypeError, ValueError):
        raise InputError(f"the field strength must be a number (T), got {b0_tesla!r}.",
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
                 b0_tesla=None, path=None, notices=None) -> np.ndarray:
    """A field image in ``unit`` -> ppm, checked for plausibility when ``unit`` is None.

    Args:
        data: (X, Y, Z) field values.
        unit: None (ppm, checked), ``"ppm"`` (as given), ``"hz"`` or ``"rad"``.
        kind: ``"local_field"`` or ``"total_field"`` (sets the plausibility limit).
        mask: (X, Y, Z) bool; the check looks inside it (everywhere if None).
        te: echo time in s (one value) for ``"rad"``. b0_tesla: field strength for hz/rad.

    Raises:
        InputError: a missing TE/B0 for a conversion, or implausible ppm values (with a hint).
    """
    what = kind.replace("_", " ")
    if unit not in (None, *FIELD_UNITS):
        raise InputError(f"unknown field unit {unit!r}.",
                         fix=f"use one of {', '.join(FIELD_UNITS)}.")
    if unit in ("hz", "rad") and b0_tesla is None:
        raise InputError(f"a {what} in {unit} needs the field strength to become ppm.",
                         path=path, fix="pass --field-strength (T).")
    if unit == "hz":
        b0 = check_field_strength(b0_tesla)
        _notice(notices, path, f"{what} converted from Hz to ppm at {b0:g} T.")
        return (hz_to_ppm(np.asarray(data, np.float64), b0)).astype(np.float32)
    if unit == "rad":
        t = None if te is None else np.asarray(te, np.float64).reshape(-1)
        if t is None or t.size != 1:
            raise InputError(f"a {what} in rad needs exactly one echo time (the phase's TE).",
                             path=path, fix="pass --te T (s) with --field-strength.")
        b0 = check_field_strength(b0_tesla)
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


def _b0_choice(affine_b0, file_b0, where, b0_source, affine_path, shear, notices):
    """(b0_dir or None for the affine's, source, disagreement in degrees) by the geometry rule."""
    if b0_source not in B0_SOURCES:
        raise InputError(f"unknown B0 source {b0_source!r}.",
                         fix=f"use one of {', '.join(B0_SOURCES)}.")
    diff = None
    if affine_b0 is not None and file_b0 is not None:
        diff = float(np.degrees(np.arccos(np.clip(abs(float(affine_b0 @ file_b0)), 0, 1))))
    if b0_source == "sidecar" and file_b0 is None:
        raise InputError("--b0-source sidecar, but no B0_dir in params.json or the sidecars.",
                         path=affine_path, fix="add B0_dir, or use --b0-source affine.")
    if b0_source == "affine" and affine_b0 is None:
        raise InputError("--b0-source affine, but the affine is singular.", path=affine_path,
                         fix="repair the header or use the sidecar's B0_dir (--b0-source auto).")
    use_file = file_b0 is not None and b0_source != "affine"
    if shear is not None and shear > 0:
        _notice(notices, affine_path, f"the affine is sheared (voxel axes {shear:.2f} deg from "
                "orthogonal, e.g. resampled by a tool that scaled only its diagonal): the B0 "
                f"direction {_fmt(affine_b0)} it gives is unreliable"
                + (f"; using B0_dir {_fmt(file_b0)} from {where} instead (--b0-source)."
                   if use_file else "; give --b0-dir or a B0_dir in params.json/the sidecar."))
    if diff is not None and diff > B0_AGREE_DEG:
        chosen = f"using {where}'s" if use_file else "using the affine's"
        notices.append(f"B0 direction disagrees by {diff:.1f} deg: {_fmt(file_b0)} from {where} "
                       f"vs {_fmt(affine_b0)} from the affine of {affine_path}; {chosen} "
                       "(choose with --b0-source affine|sidecar, or give --b0-dir).")
    if use_file:
        return file_b0, "sidecar", diff
    return None, "affine", diff


def _fmt(v) -> str:
    return "[" + ", ".join(f"{float(x):.4f}" for x in v) + "]"


# -------------------------------------------------------------------------------------------
# Loading.

def load_scan(input=None, *, phase=None, magnitude=None, te=None, field_strength=None,
              mask=None, local_field=None, total_field=None, b0_dir=None, voxel_size=None,
              phase_sign: int = +1, coil_axis: int | None = None,
              rescale_phase: bool | None = None, subject: str | None = None,
              select: str | None = None, field_unit: str | None = None,
              b0_source: str = "auto") -> Scan:
    """Find and load a scan, auto-detecting the input layout.

    Args:
        input: a BIDS dataset / subject folder or a QSM-CI artifact folder (or None for
            explicit files only). Explicit arguments override what the folder provides.
        phase, magnitude: NIfTI files (4D over echoes, or 3D for one echo), or lists of 3D
            per-echo files in echo order.
        te: echo times (s; a list above 1 is read as ms). field_strength: B0 in T.
        mask: brain mask NIfTI (wins over any computed mask).
        local_field / total_field: field NIfTI in ppm (skips the stages before it).
        b0_dir: B0 unit vector in voxel coordinates (overrides the affine's).
        voxel_size: mm (overrides the affine's).
        phase_sign: +1, or -1 to flip the phase (e.g. GE data).
        coil_axis: which NIfTI axis (3 or 4) holds uncombined coils.
        rescale_phase: see :func:`normalize_phase`.
        subject, select: pick one run in a BIDS dataset (``select`` is a substring of the file
            names, e.g. ``"run-2"`` or ``"ses-02"``).
        field_unit: unit of a given field (None: ppm, checked; "ppm", "hz", "rad"; see the
            module notes).
        b0_source: "auto", "affine" or "sidecar" (see the geometry rule in the module notes).

    Returns:
        :class:`Scan` with phase in rad (E, X, Y, Z) or (C, E, X, Y, Z), fields in ppm.

    Raises:
        InputError: naming the offending file and the fix.
    """
    if phase_sign not in (1, -1):
        raise InputError(f"phase sign must be +1 or -1, got {phase_sign!r}.")
    given = [flag for flag, v in (("--phase", phase), ("--total-field", total_field),
                                  ("--local-field", local_field)) if v is not None]
    if len(given) > 1:
        raise InputError(f"{' and '.join(given)} given together: each is a different starting "
                         "point of the pipeline.", fix=f"give only one of {', '.join(given)}.")
    if b0_dir is not None and b0_source != "auto":
        raise InputError(f"--b0-dir and --b0-source {b0_source} given together.",
                         fix="give --b0-dir (it wins) or --b0-source, not both.")
    if (subject is not None or select is not None) and input is None:
        raise InputError("--subject/--select pick a run inside INPUT, but no INPUT folder is "
                         "given.", fix="give the BIDS folder as INPUT, or drop them.")
    if field_unit is not None and field_unit not in FIELD_UNITS:
        raise InputError(f"unknown field unit {field_unit!r}.",
                         fix=f"use one of {', '.join(FIELD_UNITS)}.")
    parts = _Parts(field_unit=field_unit, b0_source=b0_source)
    if input is not None:
        _read_folder(Path(input), parts, subject=subject, select=select)
    parts.override(phase=phase, magnitude=magnitude, te=te, b0=field_strength, mask=mask,
                   local_field=local_field, total_field=total_field, b0_dir=b0_dir,
                   voxel_size=voxel_size)
    return parts.build(phase_sign=phase_sign, coil_axis=coil_axis, rescale_phase=rescale_phase)


@dataclass
class _Parts:
    """What a folder or the command line provides, before loading the images."""

    phase: list | None = None
    magnitude: list | None = None
    te: object = None
    b0: object = None
    mask: object = None
    local_field: object = None
    total_field: object = None
    b0_dir: object = None
    voxel_size: object = None
    where: dict = field(default_factory=dict)
    missing: dict = field(default_factory=dict)
    notices: list = field(default_factory=list)
    field_unit: str | None = None
    b0_source: str = "auto"
    file_b0_dir: tuple | None = None  # (B0_dir, file) from params.json or a sidecar

    def override(self, **kw) -> None:
        for key, value in kw.items():
            if value is None:
                continue
            if key in ("phase", "magnitude"):
                value = [value] if isinstance(value, (str, Path)) else list(value)
            if key == "local_field":
                self.phase = self.total_field = None
            if key == "total_field":
                self.phase = self.local_field = None
            old = getattr(self, key)
            if key == "b0_dir" and old is not None and self.file_b0_dir is None:
                self.file_b0_dir = (old, self.where.get("b0_dir"))
            if old is not None and key in ("te", "b0", "b0_dir", "voxel_size"):
                if not np.allclose(np.asarray(old, float), np.asarray(value, float)):
                    self.notices.append(f"{key} {np.asarray(value).tolist()} given on the "
                                        f"command line overrides {np.asarray(old).tolist()} "
                                        f"from {self.where.get(key, 'the input folder')}.")
            setattr(self, key, value)
            self.where[key] = "command line" if key not in ("phase", "magnitude", "mask",
                                                             "local_field", "total_field") \
                else None

    def build(self, *, phase_sign, coil_axis, rescale_phase) -> Scan:
        notices = self.notices
        if self.phase is None and self.local_field is None and self.total_field is None:
            raise InputError("no input images found.",
                             fix="give a BIDS or QSM-CI folder, --phase/--magnitude with --te "
                             "and --field-strength, or --local-field with --mask.")
        if self.phase is not None and (self.local_field is not None
                                       or self.total_field is not None):
            notices.append("both phase and a field were given: the field is used and the "
                           "phase ignored.")
            self.phase = None
        sources: dict = {}
        ref = None
        arrays: dict = {}
        if self.phase is not None:
            ref, arrays["phase"], arrays["magnitude"] = self._load_echoes(
                coil_axis, rescale_phase, phase_sign, sources)
        for key in ("total_field", "local_field"):
            if getattr(self, key) is not None:
                vol = self._load(getattr(self, key), key.replace("_", " "))
                ref = self._same_grid(ref, vol, key.replace("_", " "))
                arrays[key] = vol.data
                sources[key] = str(vol.path)
        if self.phase is None and self.magnitude is not None:
            arrays["magnitude"], ref = self._load_magnitude(ref, coil_axis, sources)
        if self.mask is not None:
            vol = self._load(self.mask, "mask")
            ref = self._same_grid(ref, vol, "mask")
            arrays["mask"] = mask_from_values(vol.data, path=vol.path, notices=notices)
            sources["mask"] = str(vol.path)
        te = b0 = None
        if self.phase is not None:
            if self.te is None:
                raise self.missing.get("te") or InputError(
                    "echo times are missing.", path=_first(sources.get("phase")),
                    fix="pass --te with one time per echo (s).")
            if self.b0 is None:
                raise self.missing.get("b0") or InputError(
                    "the field strength is missing.", path=_first(sources.get("phase")),
                    fix="pass --field-strength in tesla.")
            te = echo_times_to_seconds(self.te, notices=notices, path=self.where.get("te"))
            b0 = check_field_strength(self.b0, path=self.where.get("b0"))
            sources["te"] = str(self.where.get("te") or "command line")
            sources["b0"] = str(self.where.get("b0") or "command line")
        if self.field_unit is not None and not ("total_field" in arrays
                                                or "local_field" in arrays):
            raise InputError("--field-unit applies to a total or local field, but the input "
                             "starts from phase.", path=_first(sources.get("phase")),
                             fix="drop --field-unit (phase is read in radians).")
        for key in ("total_field", "local_field"):
            if key in arrays:
                arrays[key] = field_to_ppm(arrays[key], self.field_unit, kind=key,
                                           mask=arrays.get("mask"), te=self.te, b0_tesla=self.b0,
                                           path=sources[key], notices=notices)
        vox = self._checked("voxel_size", normalize_voxel_size)
        sources["affine"] = str(ref.path)
        for key in ("b0_dir", "voxel_size"):
            if getattr(self, key) is not None:
                sources[key] = str(self.where.get(key) or "command line")
        b0_dir, affine, geometry = self._geometry(ref, vox)
        if geometry["b0_dir_source"] != "affine":
            sources["b0_dir"] = geometry["b0_dir_source_file"]
        if phase_sign == -1:
            notices.append("phase sign flipped (phase_sign=-1).")
        return Scan(phase=arrays.get("phase"), magnitude=arrays.get("magnitude"), te=te,
                    b0_tesla=b0, affine=affine, b0_dir=b0_dir, voxel_size=vox,
                    mask=arrays.get("mask"), local_field=arrays.get("local_field"),
                    total_field=arrays.get("total_field"), sources=sources, notices=notices,
                    geometry=geometry, missing={k: v for k, v in self.missing.items()
                                                if k == "magnitude"})

    def _geometry(self, ref: NiftiVolume, vox):
        """(b0_dir, affine for the outputs, geometry record) by the rule of the module notes."""
        cli = self.where.get("b0_dir") == "command line"
        given = self._checked("b0_dir", normalize_b0_dir)
        file_b0 = None
        if self.file_b0_dir is not None:
            file_b0 = (normalize_b0_dir(self.file_b0_dir[0]), self.file_b0_dir[1])
        elif given is not None and not cli:
            file_b0 = (given, self.where.get("b0_dir"))
        problem = ref.affine_problem
        affine = ref.affine
        geometry: dict = {"affine_shear_deg": None if problem == "singular"
                          else round(shear_deg(ref.affine), 4)}
        if problem == "singular":
            if vox is None or given is None:
                raise InputError("the NIfTI affine is singular (a zero voxel size or degenerate "
                                 "axes).", path=ref.path, fix="repair the header (qform/sform) "
                                 "or pass --b0-dir and --voxel-size.")
            affine = np.diag([*vox, 1.0])
            affine[:3, 3] = ref.affine[:3, 3]
            geometry["input_affine"] = ref.affine.tolist()
            self.notices.append(f"{ref.path}: the affine is singular; the outputs carry "
                                f"diag({', '.join(f'{v:g}' for v in vox)}) mm instead.")
            affine_b0 = None
        else:
            affine_b0 = b0_dir_from_affine(ref.affine)
        geometry["b0_dir_affine"] = None if affine_b0 is None else affine_b0.tolist()
        geometry["b0_dir_sidecar"] = None if file_b0 is None else file_b0[0].tolist()
        geometry["b0_dir_sidecar_file"] = None if file_b0 is None else str(file_b0[1])
        if cli:
            b0_dir, source, where = given, "command line", "command line"
        else:
            shear = geometry["affine_shear_deg"] if problem == "sheared" else None
            b0_dir, source, diff = _b0_choice(
                affine_b0, None if file_b0 is None else file_b0[0],
                None if file_b0 is None else file_b0[1], self.b0_source, ref.path, shear,
                self.notices)
            geometry["b0_disagreement_deg"] = None if diff is None else round(diff, 3)
            where = None if file_b0 is None or source == "affine" else str(file_b0[1])
            if b0_dir is None:
                b0_dir = affine_b0
        geometry["b0_dir_source"] = source
        geometry["b0_dir_source_file"] = where
        if cli and affine_b0 is not None:
            geometry["b0_disagreement_deg"] = round(angle_to_b0(given, affine_b0), 3)
        return b0_dir, affine, geometry

    def _load(self, path, what: str) -> NiftiVolume:
        vol = load_nifti(path, ndim=3, what=what)
        self.notices.extend(vol.notices)
        return vol

    def _geometry_given(self) -> bool:
        """Whether B0 direction and voxel size come from flags/metadata (not only affines)."""
        return self.b0_dir is not None and self.voxel_size is not None

    def _same_grid(self, ref: NiftiVolume | None, vol: NiftiVolume, what: str) -> NiftiVolume:
        """Check ``vol`` against ``ref``; returns the volume whose affine the scan keeps."""
        if ref is None:
            return vol
        bad_ref, bad_vol = (v.affine_problem == "singular" for v in (ref, vol))
        if not (bad_ref or bad_vol):
            try:
                check_same_grid(ref, vol, what=what)
            except InputError as exc:
                notes = [n for v in (ref, vol) for n in v.notices]
                if not notes:
                    raise
                raise InputError(f"{exc} (Note: {'; '.join(notes)}.)") from None
            return ref
        if bad_ref != bad_vol and not self._geometry_given():
            bad, good = (ref, vol) if bad_ref else (vol, ref)
            raise InputError(f"the NIfTI affine is singular (zero or degenerate voxel axes), "
                             f"while {good.path} has a valid one.", path=bad.path,
                             fix="repair this file's header (e.g. copy the other file's "
                             "geometry) or pass --b0-dir and --voxel-size.")
        if tuple(ref.data.shape[:3]) != tuple(vol.data.shape[:3]):
            raise InputError(f"{what} has grid {tuple(vol.data.shape[:3])} but {ref.path} has "
                             f"{tuple(ref.data.shape[:3])}.", path=vol.path,
                             fix="give images on the same voxel grid.")
        return vol if bad_ref and not bad_vol else ref

    def _checked(self, key, fn):
        value = getattr(self, key)
        if value is None:
            return None
        try:
            return fn(value)
        except InputError as exc:
            raise InputError(str(exc), path=self.where.get(key)) from None

    def _load_echoes(self, coil_axis, rescale_phase, phase_sign, sources):
        notices = self.notices
        pvols = [load_nifti(p, ndim=(3, 4, 5), what="phase") for p in self.phase]
        ref = pvols[0]
        for v in pvols:
            notices.extend(v.notices)
        for v in pvols[1:]:
            ref = self._same_grid(ref, v, "phase")
        phase = _stack(pvols, coil_axis, notices)
        label = str(ref.path) if len(pvols) == 1 else f"{ref.path} (+{len(pvols) - 1} echoes)"
        phase = normalize_phase(phase, rescale=rescale_phase, path=label, notices=notices)
        if phase_sign == -1:
            phase = _wrap(-phase)
        sources["phase"] = [str(v.path) for v in pvols] if len(pvols) > 1 else str(ref.path)
        mag = None
        if self.magnitude is not None:
            mag, ref = self._load_magnitude(ref, coil_axis, sources)
            if mag.shape != phase.shape:
                raise InputError(
                    f"magnitude has {mag.shape[-4]} echoes {mag.shape} but phase has "
                    f"{phase.shape[-4]} {phase.shape}.", path=_first(sources["magnitude"]),
                    fix="give the magnitude and phase of the same echoes.")
        return ref, phase, mag

    def _load_magnitude(self, ref, coil_axis, sources):
        """(magnitude array, the volume whose affine the scan keeps)."""
        mvols = [load_nifti(p, ndim=(3, 4, 5), what="magnitude") for p in self.magnitude]
        for v in mvols:
            self.notices.extend(v.notices)
            ref = self._same_grid(ref, v, "magnitude")
        mag = _stack(mvols, coil_axis, None)
        sources["magnitude"] = ([str(v.path) for v in mvols] if len(mvols) > 1
                                else str(mvols[0].path))
        return check_magnitude(mag, path=mvols[0].path, notices=self.notices), ref


def _stack(vols, coil_axis, notices) -> np.ndarray:
    if len(vols) == 1:
        return to_echo_first(vols[0].data, coil_axis=coil_axis, path=vols[0].path,
                             notices=notices)
    for v in vols:
        if v.data.ndim != 3:
            raise InputError(f"per-echo files must be 3D, got {v.data.ndim}D {v.data.shape}.",
                             path=v.path, fix="give one 4D file or one 3D file per echo.")
    return np.stack([v.data for v in vols])


def _first(x):
    return x[0] if isinstance(x, list) else x


def _read_folder(folder: Path, parts: _Parts, *, subject, select) -> None:
    from dlqsm.io import bids, qsmci

    if not folder.exists():
        raise InputError("input folder does not exist.", path=folder, fix="check the path.")
    if not folder.is_dir():
        raise InputError("INPUT must be a folder (BIDS or QSM-CI).", path=folder,
                         fix="give image files with --phase/--magnitude or --local-field.")
    if qsmci.is_qsmci_folder(folder):
        qsmci.read_into(folder, parts)
    elif bids.find_megre_files(folder):
        bids.read_into(folder, parts, subject=subject, select=select)
    else:
        raise InputError(
            "no recognised input: neither QSM-CI artifacts (phase.nii.gz + params.json, "
            "localfield.nii.gz, ...) nor BIDS *_echo-N_part-{mag,phase}_MEGRE.nii[.gz] files.",
            path=folder, fix="point to a BIDS dataset/subject folder or a QSM-CI folder, or "
            "give explicit files (--phase, --magnitude, --te, --field-strength).")
