"""Segmentations for the study table: find them, name their labels, put them on the scan grid.

* Finding a run's label image (:func:`find_labels`): a path template with the run's entities
  (``seg/sub-{sub}/ses-{ses}/mri/aseg.nii.gz``; ``{sub}``, ``{ses}``, ``{acq}``, ``{run}``,
  ... and ``{key}``, the whole run prefix), or a BIDS-derivatives folder holding
  ``sub-*/[ses-*/]anat/*_dseg.nii[.gz]`` whose entities agree with the run's (the session's
  folder first, then the subject's ``anat`` folder for one segmentation per subject).
* Naming labels (:func:`read_label_names`): a BIDS ``*_dseg.tsv`` (``index`` and ``name``
  columns) beside the image or given with ``--label-names``, or a FreeSurfer colour table
  (``index name r g b a`` lines); without one, the FreeSurfer aseg numbers
  (:data:`ASEG_NAMES`), which FSL FIRST shares for the structures it segments (10-13 and
  49-52 thalamus, caudate, putamen, pallidum).
* Regions (:func:`region_of`): names are matched to the deep grey nuclei of
  :data:`NUCLEI` and the CSF/ventricles by keywords, with the side read from the name
  (``Left-``, ``lh``, ``_L``, ...): FreeSurfer, FIRST, CIT168-style and dlqsm's own phantom
  names all resolve.
* Resampling (:func:`resample_labels`): nearest neighbour in world coordinates through both
  affines, so a segmentation on another grid (e.g. a 1 mm T1w FreeSurfer aseg already in the
  scan's world space) lands on the scan grid; voxels outside the label image get 0.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from dlqsm.errors import InputError
from dlqsm.io.bids import run_entities

NUCLEI = (
    "thalamus",
    "caudate",
    "putamen",
    "globus_pallidus",
    "substantia_nigra",
    "red_nucleus",
    "dentate",
)
"""Deep grey nuclei of the study table, in the order of its rows and figure."""
CSF = "csf"

ASEG_NAMES: dict[int, str] = {
    4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent",
    10: "Left-Thalamus",
    11: "Left-Caudate",
    12: "Left-Putamen",
    13: "Left-Pallidum",
    14: "3rd-Ventricle",
    15: "4th-Ventricle",
    16: "Brain-Stem",
    17: "Left-Hippocampus",
    18: "Left-Amygdala",
    24: "CSF",
    26: "Left-Accumbens-area",
    28: "Left-VentralDC",
    43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent",
    49: "Right-Thalamus",
    50: "Right-Caudate",
    51: "Right-Putamen",
    52: "Right-Pallidum",
    53: "Right-Hippocampus",
    54: "Right-Amygdala",
    58: "Right-Accumbens-area",
    60: "Right-VentralDC",
}
"""FreeSurfer aseg label numbers (FreeSurferColorLUT) of the structures the table uses; FSL
FIRST writes the same numbers for thalamus, caudate, putamen and pallidum (10-13, 49-52).
FreeSurfer before 7 called 10/49 ``Left/Right-Thalamus-Proper``: both names resolve."""

_KEYWORDS = {  # region: (token prefixes, whole tokens, substrings of the joined name)
    "thalamus": (("thal",), (), ()),
    "caudate": (("caud",), (), ()),
    "putamen": (("puta",), ("put", "pu"), ()),
    "globus_pallidus": (("pall",), ("gp", "gpe", "gpi"), ("globuspallidus",)),
    "substantia_nigra": (("nigra",), ("sn", "snc", "snr"), ("substantianigra",)),
    "red_nucleus": ((), ("rn",), ("rednucleus",)),
    "dentate": (("dentate",), ("dn",), ()),
    CSF: (("ventric",), ("vent", "csf"), ()),
}
_LEFT, _RIGHT = {"left", "l", "lh"}, {"right", "r", "rh"}
_NOT_REGIONS = {"hypointensities", "choroid", "plexus", "wm", "white", "subthalamic"}


def _tokens(name: str) -> list[str]:
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)  # LeftThalamus -> Left Thalamus
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def region_of(name: str) -> tuple[str, str] | None:
    """(region, side) of a label name, or None: ``"Left-Thalamus-Proper"`` ->
    ``("thalamus", "left")``, ``"Right-Pallidum"`` -> ``("globus_pallidus", "right")``,
    ``"red_nucleus"`` -> ``("red_nucleus", "")``, ``"3rd-Ventricle"`` -> ``("csf", "")``.
    White-matter, hypointensity, choroid-plexus and subthalamic labels are not regions."""
    toks = _tokens(name)
    if not toks or any(t in _NOT_REGIONS for t in toks):
        return None
    joined = "".join(toks)
    side = (
        "left"
        if any(t in _LEFT for t in toks)
        else "right"
        if any(t in _RIGHT for t in toks)
        else ""
    )
    for region, (prefixes, whole, parts) in _KEYWORDS.items():
        if (
            any(t.startswith(k) for t in toks for k in prefixes)
            or any(t in whole for t in toks)
            or any(k in joined for k in parts)
        ):
            return region, side
    return None


def read_label_names(path) -> dict[int, str]:
    """Label index -> name from a BIDS dseg.tsv (``index``/``name`` columns) or a FreeSurfer
    colour table (whitespace-separated ``index name ...`` lines, ``#`` comments)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"cannot read the label-name table ({exc}).", path=p) from exc
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    out: dict[int, str] = {}
    if lines and "\t" in lines[0] and "index" in lines[0].lower().split("\t"):
        rows = list(csv.DictReader(lines, delimiter="\t"))
        cols = {c.lower(): c for c in rows[0]} if rows else {}
        if "name" not in cols:
            raise InputError("a dseg.tsv needs 'index' and 'name' columns.", path=p)
        for r in rows:
            out[_int(r[cols["index"]], p)] = r[cols["name"]].strip()
    else:
        for ln in lines:
            parts = ln.split()
            if len(parts) < 2:
                raise InputError(
                    f"line {ln!r} is not 'index name ...'.",
                    path=p,
                    fix="give a BIDS dseg.tsv or a FreeSurfer colour table.",
                )
            out[_int(parts[0], p)] = parts[1]
    if not out:
        raise InputError("the label-name table is empty.", path=p)
    return out


def _int(text: str, path) -> int:
    try:
        return int(float(text))
    except ValueError:
        raise InputError(f"label index {text!r} is not a number.", path=path) from None


def regions_of_table(names: dict[int, str]) -> dict[tuple[str, str], list[int]]:
    """{(region, side): [label indices]} for the labels whose names resolve to a region."""
    out: dict[tuple[str, str], list[int]] = {}
    for index, name in sorted(names.items()):
        hit = region_of(name)
        if hit is not None:
            out.setdefault(hit, []).append(index)
    return out


def find_labels(pattern: str, key: str) -> Path:
    """The label image of run ``key`` from a path template or a BIDS-derivatives folder.

    Raises:
        InputError: no file (naming where it looked), several candidates, or a template
            placeholder the run lacks.
    """
    ent = run_entities(key)
    p = Path(pattern)
    if "{" in pattern:
        try:
            path = Path(pattern.format(key=key, **ent))
        except KeyError as exc:
            raise InputError(
                f"--labels template uses {{{exc.args[0]}}}, which run {key} does not have.",
                fix="use entities every run has (sub, ses, ...) or {key}.",
            ) from None
        if not path.exists():
            raise InputError(
                f"no label image for run {key}.", path=path, fix="check the --labels template."
            )
        return path
    if p.is_file():
        return p  # one segmentation for every run (all on the same subject/grid)
    if not p.is_dir():
        raise InputError(
            "--labels is neither a template with {sub}/{ses}/..., a file, nor a folder.",
            path=p,
            fix="give a BIDS-derivatives folder or a template.",
        )
    subject = p / f"sub-{ent['sub']}"
    # the session's own segmentation first, else a subject-level one (e.g. one T1w per subject)
    folders = ([subject / f"ses-{ent['ses']}" / "anat"] if "ses" in ent else []) + [
        subject / "anat"
    ]
    found, folder = [], folders[0]
    for folder in folders:
        for f in sorted(folder.glob("*_dseg.nii*")):
            fent = run_entities(f.name.split(".nii")[0])
            if fent.get("sub") == ent["sub"] and all(
                fent.get(k) == v for k, v in ent.items() if k in fent
            ):
                found.append(f)
        if found:
            break
    if not found:
        raise InputError(
            f"no *_dseg.nii[.gz] for run {key}.",
            path=folders[0],
            fix="write the run's segmentation there (or in the subject's anat folder) or give "
            "a --labels template.",
        )
    if len(found) > 1:
        raise InputError(
            f"{len(found)} segmentations match run {key}: {', '.join(f.name for f in found)}.",
            path=folder,
            fix="give a --labels template naming one.",
        )
    return found[0]


def names_for(label_path: Path, label_names=None) -> tuple[dict[int, str], str]:
    """(index -> name, where from): --label-names, else the sibling dseg.tsv, else aseg."""
    if label_names:
        return read_label_names(label_names), str(label_names)
    stem = label_path.name.split(".nii")[0]
    tsv = label_path.with_name(stem + ".tsv")
    if tsv.exists():
        return read_label_names(tsv), str(tsv)
    return dict(ASEG_NAMES), "FreeSurfer aseg / FSL FIRST numbers"


def resample_labels(labels: np.ndarray, label_affine, shape, affine, chunk: int = 8) -> np.ndarray:
    """Nearest-neighbour resampling of a label image onto a scan grid through world space.

    Args:
        labels: (I, J, K) integer labels with ``label_affine`` (4, 4) voxel -> world (mm).
        shape: the scan's (X, Y, Z); ``affine``: its (4, 4) voxel -> world matrix.
        chunk: scan slices along Z handled at once (bounds the memory of the coordinates).

    Returns:
        (X, Y, Z) labels of the same dtype; 0 where a scan voxel centre falls outside the
        label image. Exact (no interpolation): each scan voxel takes the label of the label
        voxel whose centre is nearest in index space (ties round up).
    """
    labels = np.asarray(labels)
    shape = tuple(int(s) for s in shape)
    la, a = np.asarray(label_affine, float), np.asarray(affine, float)
    if labels.shape == shape and np.allclose(la, a, atol=1e-6):
        return labels.copy()
    m = np.linalg.solve(la, a)  # scan voxel -> label voxel
    out = np.zeros(shape, dtype=labels.dtype)
    ii, jj = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for z0 in range(0, shape[2], chunk):
        zz = np.arange(z0, min(z0 + chunk, shape[2]))
        pts = np.stack(
            [
                np.broadcast_to(ii[..., None], (*ii.shape, len(zz))),
                np.broadcast_to(jj[..., None], (*jj.shape, len(zz))),
                np.broadcast_to(zz, (*ii.shape, len(zz))),
            ],
            axis=-1,
        ).astype(float)
        src = np.floor(pts @ m[:3, :3].T + m[:3, 3] + 0.5 + 1e-6).astype(np.int64)
        ok = np.all((src >= 0) & (src < np.array(labels.shape)), axis=-1)
        block = np.zeros(ok.shape, dtype=labels.dtype)
        block[ok] = labels[src[ok, 0], src[ok, 1], src[ok, 2]]
        out[:, :, z0 : z0 + len(zz)] = block
    return out
