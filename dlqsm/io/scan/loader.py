"""Loading a scan: :func:`load_scan` finds a scan's inputs (BIDS, QSM-CI, explicit files),
reads them and decides its B0 geometry, by the rules written in :mod:`dlqsm.io.scan`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlqsm.errors import InputError
from dlqsm.io.nifti import NiftiVolume, load_nifti, shear_deg
from dlqsm.io.scan.data import Scan
from dlqsm.io.scan.values import (
    FIELD_UNITS,
    _notice,
    _wrap,
    check_field_strength,
    check_magnitude,
    check_same_grid,
    echo_times_to_seconds,
    field_to_ppm,
    mask_from_values,
    normalize_phase,
    to_echo_first,
)
from dlqsm.physics.geometry import (
    angle_to_b0,
    as_b0_dir,
    as_voxel_size,
    b0_dir_from_affine,
)

B0_SOURCES = ("auto", "affine", "sidecar")
B0_AGREE_DEG = 1.0
"""A sidecar B0 direction further than this from the affine's is reported."""


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
                                           mask=arrays.get("mask"), te=self.te,
                                           field_strength=self.b0, path=sources[key],
                                           notices=notices)
        vox = self._checked("voxel_size", as_voxel_size)
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
                    field_strength=b0, affine=affine, b0_dir=b0_dir, voxel_size=vox,
                    mask=arrays.get("mask"), local_field=arrays.get("local_field"),
                    total_field=arrays.get("total_field"), sources=sources, notices=notices,
                    geometry=geometry, missing={k: v for k, v in self.missing.items()
                                                if k == "magnitude"})

    def _geometry(self, ref: NiftiVolume, vox):
        """(b0_dir, affine for the outputs, geometry record) by the rule of the module notes."""
        cli = self.where.get("b0_dir") == "command line"
        given = self._checked("b0_dir", as_b0_dir)
        file_b0 = None
        if self.file_b0_dir is not None:
            file_b0 = (as_b0_dir(self.file_b0_dir[0]), self.file_b0_dir[1])
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
        geometry["b0_dir_sidecar"] = None if file_b0 is None else list(file_b0[0])
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
