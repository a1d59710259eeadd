"""The :class:`Scan`: one scan's images and acquisition parameters, checked for consistency.

Built by :func:`dlqsm.io.scan.load_scan` (or directly, e.g. from simulated data).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np

from dlqsm.errors import InputError
from dlqsm.io.scan.values import check_echo_times, check_field_strength
from dlqsm.physics.geometry import Geometry, as_voxel_size


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
        field_strength: B0 in T (``b0_tesla`` is its deprecated name, keyword and attribute).
        affine: (4, 4) voxel-to-world (RAS+) matrix of every volume; defaults to
            ``diag(voxel_size)`` when not given.
        b0_dir: unit B0 vector in voxel coordinates (3,); from the affine (world +z) unless given.
        voxel_size: mm (3,); from the affine unless given.
        grid: the validated :class:`~dlqsm.physics.geometry.Geometry` (shape, voxel size, B0
            direction, affine), built once here; ``affine``, ``voxel_size`` and ``b0_dir`` are
            read-only arrays of the same values. The stages below take ``grid`` and trust it.
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
    field_strength: float | None = None
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
    grid: Geometry = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        affine = self.affine
        if affine is None:
            vox = (1.0, 1.0, 1.0)
            if self.voxel_size is not None:
                vox = self.voxel_size = as_voxel_size(self.voxel_size)
            affine = np.diag([*vox, 1.0])
        if self.te is not None:
            self.te = np.asarray(self.te, dtype=np.float64).reshape(-1)
        self._validate()
        # the one check of the geometry; below it, everything trusts ``grid``
        self.grid = Geometry.from_affine(self.shape, affine, voxel_size=self.voxel_size,
                                         b0_dir=self.b0_dir, path=self.sources.get("affine"))
        self.affine = self.grid.affine
        self.voxel_size = _read_only(self.grid.voxel_size)
        self.b0_dir = _read_only(self.grid.b0_dir)

    @property
    def b0_tesla(self) -> float | None:
        """Deprecated name of :attr:`field_strength` (T)."""
        warnings.warn("Scan.b0_tesla is now Scan.field_strength.", DeprecationWarning,
                      stacklevel=2)
        return self.field_strength

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
            if self.te is None or self.field_strength is None:
                raise InputError("raw phase needs echo times and the field strength.",
                                 path=src.get("phase"), fix="pass --te ... and --field-strength.")
            if self.te.size != self.n_echoes:
                raise InputError(
                    f"{self.te.size} echo times given for {self.n_echoes} phase echoes.",
                    path=src.get("te", src.get("phase")),
                    fix="give one echo time per echo, in seconds.")
            check_echo_times(self.te, path=src.get("te"))
            check_field_strength(self.field_strength, path=src.get("b0"))
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


def _read_only(values) -> np.ndarray:
    a = np.array(values, dtype=np.float64)
    a.setflags(write=False)
    return a


def _accept_b0_tesla(init):
    """Wrap the dataclass ``__init__`` so that the old keyword ``b0_tesla`` still works."""

    @functools.wraps(init)
    def __init__(self, *args, b0_tesla=None, **kwargs):
        if b0_tesla is not None:
            warnings.warn("Scan(b0_tesla=...) is now Scan(field_strength=...).",
                          DeprecationWarning, stacklevel=2)
            if kwargs.get("field_strength") is not None:
                raise TypeError("give field_strength or b0_tesla (deprecated), not both")
            kwargs["field_strength"] = b0_tesla
        init(self, *args, **kwargs)

    return __init__


Scan.__init__ = _accept_b0_tesla(Scan.__init__)
