"""The :class:`Scan` object and :func:`load_scan`, which finds a scan's inputs on disk.

Three modules: :mod:`~dlqsm.io.scan.data` (the :class:`Scan` and its consistency checks),
:mod:`~dlqsm.io.scan.values` (checks and conversions of echo times, field strength, phase,
magnitude, masks and field units) and :mod:`~dlqsm.io.scan.loader` (:func:`load_scan`: input
layouts, overrides, the B0 geometry rule). Every name is importable from ``dlqsm.io.scan``.

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

from dlqsm.io.scan.data import Scan
from dlqsm.io.scan.loader import B0_AGREE_DEG, B0_SOURCES, load_scan
from dlqsm.io.scan.values import (
    FIELD_LIMIT_PPM,
    FIELD_NOTICE_PPM,
    FIELD_UNITS,
    MIN_PHASE_SPAN,
    PHASE_RANGE_TOL,
    check_echo_times,
    check_field_strength,
    check_magnitude,
    check_same_grid,
    echo_times_to_seconds,
    field_to_ppm,
    mask_from_values,
    normalize_phase,
    to_echo_first,
)

__all__ = [
    "B0_AGREE_DEG", "B0_SOURCES", "FIELD_LIMIT_PPM", "FIELD_NOTICE_PPM", "FIELD_UNITS",
    "MIN_PHASE_SPAN", "PHASE_RANGE_TOL", "Scan", "check_echo_times", "check_field_strength",
    "check_magnitude", "check_same_grid", "echo_times_to_seconds", "field_to_ppm", "load_scan",
    "mask_from_values", "normalize_phase", "to_echo_first",
]
