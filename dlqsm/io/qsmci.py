"""QSM-CI artifact folders (the QSM-CI submission contract).

A folder holds some of ``phase.nii.gz`` (rad, 4D ``x,y,z,echo`` or 3D for one echo),
``magnitude.nii.gz`` (same shape), ``mask.nii.gz`` (3D), ``totalfield.nii.gz`` /
``localfield.nii.gz`` / ``chimap.nii.gz`` (ppm, 3D) and ``params.json``::

    {"TE": [0.004, 0.012], "B0": 3.0, "B0_dir": [0, 0, 1], "voxel_size": [1, 1, 1]}

with TE in s (a list whose largest value exceeds 1 is read as ms, with a notice), B0 in T,
B0_dir a unit vector in image (voxel) coordinates and voxel_size in mm. ``.nii`` files are
accepted as well as ``.nii.gz``.

When several starting points are present, :func:`read_into` starts from the earliest stage:
phase (whole pipeline), else the total field, else the local field.
"""

from __future__ import annotations

import json
from pathlib import Path

from dlqsm.errors import InputError
from dlqsm.io.outputs import write_json_atomic

ARTIFACTS = ("phase", "magnitude", "mask", "totalfield", "localfield", "chimap")
PARAMS = "params.json"


def artifact_path(folder, name: str) -> Path | None:
    """``folder/name.nii.gz`` or ``folder/name.nii`` if either exists, else None."""
    for ext in (".nii.gz", ".nii"):
        p = Path(folder) / f"{name}{ext}"
        if p.exists():
            return p
    return None


def is_qsmci_folder(folder) -> bool:
    """True if ``folder`` holds ``params.json`` or a phase/field artifact at its top level."""
    folder = Path(folder)
    if (folder / PARAMS).exists():
        return True
    return any(artifact_path(folder, n) for n in ("phase", "totalfield", "localfield"))


def read_params(path) -> dict:
    """Read ``params.json`` (keys TE, B0, B0_dir, voxel_size, all optional here).

    Raises:
        InputError: unreadable JSON or values of the wrong type.
    """
    p = Path(path)
    try:
        params = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read params.json ({exc}).", path=p,
                         fix="repair the JSON (keys TE, B0, B0_dir, voxel_size).") from exc
    if not isinstance(params, dict):
        raise InputError("params.json must hold a JSON object.", path=p)
    for key, n in (("B0_dir", 3), ("voxel_size", 3)):
        v = params.get(key)
        if v is not None and (not isinstance(v, list) or len(v) != n
                              or not all(isinstance(x, (int, float)) for x in v)):
            raise InputError(f"{key} must be a list of {n} numbers, got {v!r}.", path=p)
    te = params.get("TE")
    if te is not None:
        te = te if isinstance(te, list) else [te]
        if not te or not all(isinstance(x, (int, float)) for x in te):
            raise InputError(f"TE must be a number or a list of numbers (s), got {te!r}.",
                             path=p)
        params["TE"] = te
    return params


def write_params(path, *, te=None, b0=None, b0_dir=None, voxel_size=None) -> Path:
    """Write a QSM-CI ``params.json`` (TE in s, B0 in T, B0_dir voxel coordinates, mm)."""
    obj = {}
    if te is not None:
        obj["TE"] = [float(t) for t in te]
    if b0 is not None:
        obj["B0"] = float(b0)
    if b0_dir is not None:
        obj["B0_dir"] = [float(b) for b in b0_dir]
    if voxel_size is not None:
        obj["voxel_size"] = [float(v) for v in voxel_size]
    return write_json_atomic(path, obj)


def read_into(folder, parts) -> None:
    """Fill a :class:`dlqsm.io.scan.loader._Parts` from a QSM-CI artifact folder."""
    folder = Path(folder)
    found = {n: artifact_path(folder, n) for n in ARTIFACTS}
    pfile = folder / PARAMS
    params = read_params(pfile) if pfile.exists() else {}
    start = next((n for n in ("phase", "totalfield", "localfield") if found[n]), None)
    if start is None:
        raise InputError("no phase.nii.gz, totalfield.nii.gz or localfield.nii.gz here.",
                         path=folder, fix="give a QSM-CI artifact folder or explicit files.")
    ignored = [n for n in ("totalfield", "localfield") if found[n] and n != start]
    if ignored:
        parts.notices.append(f"{folder}: starting from {start}; ignoring "
                             f"{', '.join(ignored)} (pass --local-field to start there).")
    if start == "phase":
        parts.phase = [found["phase"]]
        parts.magnitude = [found["magnitude"]] if found["magnitude"] else None
        if not (found["magnitude"] or found["mask"]):
            _missing_magnitude(folder, parts)
        _param(parts, params, pfile, "TE", "te", "echo times (TE, s)")
        _param(parts, params, pfile, "B0", "b0", "the field strength (B0, T)")
    elif start == "totalfield":
        parts.total_field = found["totalfield"]
    else:
        parts.local_field = found["localfield"]
    if found["mask"]:
        parts.mask = found["mask"]
    for key, attr in (("B0_dir", "b0_dir"), ("voxel_size", "voxel_size")):
        if params.get(key) is not None:
            setattr(parts, attr, params[key])
            parts.where[attr] = pfile


def _param(parts, params, pfile, key, attr, what) -> None:
    if params.get(key) is not None:
        setattr(parts, attr, params[key])
        parts.where[attr] = pfile
    else:
        where = pfile if pfile.exists() else pfile.parent
        parts.missing[attr] = InputError(
            f"{what} missing: params.json has no {key!r}.", path=where,
            fix=f"add \"{key}\" to params.json or pass it on the command line "
            f"({'--te' if attr == 'te' else '--field-strength'}).")


def _missing_magnitude(folder: Path, parts) -> None:
    """Remember why a raw folder without magnitude and mask cannot be masked (raised by the
    loader unless --magnitude or --mask is given), naming the files QSM-CI expects."""
    known = {f"{n}{ext}" for n in ARTIFACTS for ext in (".nii.gz", ".nii")}
    others = sorted(p.name for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz"))
                    and p.name not in known)
    seen = f" (found {', '.join(others)}: QSM-CI names them magnitude.nii.gz and mask.nii.gz)" \
        if others else ""
    parts.missing["magnitude"] = InputError(
        f"no magnitude.nii.gz and no mask.nii.gz here{seen}; one of them is needed to compute "
        "the brain mask.", path=folder, fix="rename the file (magnitude.nii.gz: 4D over echoes "
        "like phase.nii.gz; mask.nii.gz: 3D), or pass --magnitude or --mask.")
