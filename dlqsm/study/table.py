"""The study table: susceptibility of the deep grey nuclei per run, for a whole cohort.

For every run in a dlqsm derivatives folder (``*_Chimap.nii.gz`` with its
``*_desc-brain_mask.nii.gz``) and a segmentation the user gives (:mod:`dlqsm.study.labels`),
one row per nucleus and side (left, right and both together, ``bilateral``) with the voxel
count, volume, mean, median and standard deviation (ddof=1) of chi inside the label and the
brain mask, and the same mean and median relative to a reference region:

* ``brain`` (default): the mean inside the brain mask (dlqsm's maps are already referenced to
  it, so this is ~0 unless the mask was changed);
* ``csf``: the mean over the labels named CSF/ventricles (refused when none are labelled).

Both reference values are in every row (``ref_brain_ppm``, ``ref_csf_ppm``). The columns of
the dataset's ``participants.tsv`` are joined on ``participant_id``. One CSV for the cohort
(``study/chi_regions.csv``) and a figure of each nucleus across runs (``study/chi_regions.png``,
coloured by the participants' ``group`` column when there is one).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

from dlqsm.errors import InputError, OutputExistsError
from dlqsm.io.atomic import atomic_path, write_text_atomic
from dlqsm.io.bids import run_entities
from dlqsm.io.nifti import load_nifti
from dlqsm.study import derivatives
from dlqsm.study.labels import (
    CSF,
    NUCLEI,
    find_labels,
    names_for,
    regions_of_table,
    resample_labels,
)

COLUMNS = [
    "participant_id",
    "session_id",
    "run",
    "region",
    "side",
    "voxels",
    "volume_mm3",
    "mean_ppm",
    "median_ppm",
    "sd_ppm",
    "reference",
    "ref_brain_ppm",
    "ref_csf_ppm",
    "mean_rel_ppm",
    "median_rel_ppm",
    "labels_file",
    "label_names",
]
REFERENCES = ("brain", "csf")
SIDES = ("left", "right", "bilateral")


def region_stats(
    chi: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray,
    regions: dict[tuple[str, str], list[int]],
    voxel_volume_mm3: float,
    reference: str = "brain",
) -> list[dict]:
    """Per nucleus and side: voxels, volume, mean/median/SD of chi, and relative values.

    Args:
        chi: (X, Y, Z) ppm. mask: (X, Y, Z) bool brain mask (statistics use label AND mask).
        labels: (X, Y, Z) integer labels on the same grid.
        regions: {(region, side): label indices}, see
            :func:`dlqsm.study.labels.regions_of_table`.
        voxel_volume_mm3: volume of one voxel.
        reference: ``"brain"`` or ``"csf"``: what ``mean_rel_ppm``/``median_rel_ppm`` subtract.

    Returns:
        One dict per (nucleus, side) present, in :data:`NUCLEI` order, sides left, right,
        bilateral (a nucleus labelled without sides has only the bilateral row).

    Raises:
        InputError: ``reference="csf"`` without CSF/ventricle labels in the mask.
    """
    chi = np.asarray(chi, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    ref_brain = float(chi[mask].mean()) if mask.any() else math.nan
    csf_ids = [i for (r, _), ids in regions.items() if r == CSF for i in ids]
    csf = np.isin(labels, csf_ids) & mask if csf_ids else np.zeros_like(mask)
    ref_csf = float(chi[csf].mean()) if csf.any() else math.nan
    if reference not in REFERENCES:
        raise InputError(f"reference must be one of {REFERENCES}, got {reference!r}.")
    if reference == "csf" and not csf.any():
        raise InputError(
            "the reference 'csf' needs labels named CSF or ventricles inside the "
            "brain mask; the segmentation has none.",
            fix="use --reference brain or a segmentation with ventricles.",
        )
    ref = ref_brain if reference == "brain" else ref_csf
    rows = []
    for nucleus in NUCLEI:
        by_side = {side: ids for (r, side), ids in regions.items() if r == nucleus}
        if not by_side:
            continue
        sets = {s: by_side[s] for s in ("left", "right") if s in by_side}
        sets["bilateral"] = [i for ids in by_side.values() for i in ids]
        for side, ids in sets.items():
            sel = np.isin(labels, ids) & mask
            vals = chi[sel]
            n = int(vals.size)
            mean = float(vals.mean()) if n else math.nan
            median = float(np.median(vals)) if n else math.nan
            rows.append(
                {
                    "region": nucleus,
                    "side": side,
                    "voxels": n,
                    "volume_mm3": n * voxel_volume_mm3,
                    "mean_ppm": mean,
                    "median_ppm": median,
                    "sd_ppm": float(vals.std(ddof=1)) if n > 1 else math.nan,
                    "reference": reference,
                    "ref_brain_ppm": ref_brain,
                    "ref_csf_ppm": ref_csf,
                    "mean_rel_ppm": mean - ref,
                    "median_rel_ppm": median - ref,
                }
            )
    return rows


def find_chimaps(deriv) -> dict[str, Path]:
    """{run key: Chimap file} of a dlqsm derivatives folder (complete runs only)."""
    out = {}
    for p in sorted(Path(deriv).glob("sub-*/**/anat/*_Chimap.nii*")):
        if any(part.startswith(".") for part in p.relative_to(deriv).parts):
            continue
        key = p.name.split(f"_{derivatives.CHIMAP}.nii")[0]
        if derivatives.chimap_paths(deriv, key)[1].exists():
            out[key] = p
    return out


def run_rows(
    deriv, key: str, chimap: Path, *, labels: str, label_names=None, reference: str = "brain"
) -> list[dict]:
    """The table rows of one run (its segmentation found, named and resampled)."""
    chi = load_nifti(chimap, ndim=3, what="susceptibility map")
    mask_path = chimap.with_name(derivatives.derivative_name(key, "mask.nii.gz"))
    mask = (
        (load_nifti(mask_path, ndim=3, what="mask").data > 0.5)
        if mask_path.exists()
        else chi.data != 0
    )
    label_path = find_labels(labels, key)
    seg = load_nifti(label_path, ndim=3, dtype=None, what="segmentation")
    data = np.asarray(seg.data)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.allclose(data, np.round(data)):
            raise InputError(
                "the segmentation holds non-integer values.",
                path=label_path,
                fix="give a label image (integers), not a probability map.",
            )
        data = np.round(data).astype(np.int32)
    on_grid = resample_labels(data, seg.affine, chi.shape, chi.affine)
    names, names_from = names_for(label_path, label_names)
    regions = regions_of_table(names)
    if not any(r in NUCLEI for r, _ in regions):
        raise InputError(
            f"no deep grey nucleus among the label names ({names_from}).",
            path=label_path,
            fix="give --label-names with names such as "
            "Left-Thalamus, Left-Caudate, Left-Putamen, Left-Pallidum.",
        )
    vol = float(np.prod(chi.voxel_size))
    rows = region_stats(chi.data, mask, on_grid, regions, vol, reference)
    ent = run_entities(key)
    for r in rows:
        r.update(
            participant_id=f"sub-{ent['sub']}",
            session_id=f"ses-{ent['ses']}" if "ses" in ent else "",
            run=key,
            labels_file=str(label_path),
            label_names=names_from,
        )
    return rows


def read_participants(path) -> tuple[list[str], dict[str, dict]]:
    """(extra column names, {participant_id: row}) of a BIDS participants.tsv (n/a -> "")."""
    p = Path(path)
    with open(p, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and "participant_id" not in rows[0]:
        raise InputError("participants.tsv has no participant_id column.", path=p)
    cols = [c for c in (rows[0] if rows else {}) if c != "participant_id"]
    table = {}
    for r in rows:
        pid = r["participant_id"].strip()
        pid = pid if pid.startswith("sub-") else f"sub-{pid}"
        table[pid] = {
            c: ("" if (r.get(c) or "").strip() == "n/a" else (r.get(c) or "").strip()) for c in cols
        }
    return cols, table


def raw_dataset_of(deriv) -> Path | None:
    """The raw dataset a dlqsm derivatives folder was made from (DatasetLinks ``raw``)."""
    try:
        desc = json.loads((Path(deriv) / "dataset_description.json").read_text())
        uri = desc.get("DatasetLinks", {}).get("raw")
    except (OSError, ValueError, AttributeError):
        return None
    if not uri or not uri.startswith("file:"):
        return None
    return Path(unquote(urlparse(uri).path))


def write_study(
    deriv,
    *,
    labels: str,
    label_names=None,
    participants=None,
    out=None,
    reference: str = "brain",
    force: bool = False,
    quiet: bool = False,
) -> dict:
    """Write the cohort CSV and figure for every complete run of a derivatives folder.

    Args:
        deriv: a dlqsm derivatives folder (``dlqsm reconstruct/infer BIDS -o DERIV``).
        labels: a path template or a BIDS-derivatives folder of segmentations (see
            :func:`dlqsm.study.labels.find_labels`).
        label_names: label-name table for every segmentation (else each one's dseg.tsv,
            else FreeSurfer aseg numbers).
        participants: participants.tsv to join (default: the raw dataset's, when found).
        out: output folder (default ``DERIV/study``).
        reference: ``"brain"`` or ``"csf"``.
        force: overwrite an existing table and figure.

    Returns:
        {"csv": path, "figure": path, "rows": [...], "failed": {run: error}}.

    Raises:
        InputError: no complete runs, or no run could be measured.
        OutputExistsError: the table exists and ``force`` is False.
    """
    deriv = Path(deriv)
    out = Path(out) if out is not None else deriv / "study"
    csv_path, png_path = out / "chi_regions.csv", out / "chi_regions.png"
    existing = [p for p in (csv_path, png_path) if p.exists()]
    if existing and not force:
        raise OutputExistsError(
            f"{existing[0]} exists. Fix: choose another output folder or pass --force."
        )
    runs = find_chimaps(deriv)
    if not runs:
        raise InputError(
            "no *_Chimap.nii.gz runs found.",
            path=deriv,
            fix="give the folder dlqsm reconstruct/infer wrote in dataset mode.",
        )
    rows, failed = [], {}
    for key, chimap in runs.items():
        try:
            rows += run_rows(
                deriv, key, chimap, labels=labels, label_names=label_names, reference=reference
            )
        except InputError as exc:
            failed[key] = str(exc)
            print(f"dlqsm study: {key}: {exc}", file=sys.stderr)
    if not rows:
        raise InputError(
            f"no run could be measured ({len(failed)} failed: {next(iter(failed.values()))}).",
            path=deriv,
        )
    if participants is None:
        raw = raw_dataset_of(deriv)
        participants = raw / "participants.tsv" if raw is not None else None
    extra: list[str] = []
    if participants is not None and Path(participants).exists():
        extra, table = read_participants(participants)
        for r in rows:
            r.update(table.get(r["participant_id"], dict.fromkeys(extra, "")))
    _write_csv(csv_path, rows, COLUMNS + extra)
    plot_study(png_path, rows, group="group" if "group" in extra else None)
    if not quiet:
        print(
            f"dlqsm study: {len(runs) - len(failed)} runs, {len(rows)} rows -> {csv_path}, "
            f"{png_path}" + (f"; {len(failed)} runs failed" if failed else ""),
            file=sys.stderr,
        )
    return {"csv": csv_path, "figure": png_path, "rows": rows, "failed": failed}


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.9g}"
    return str(v)


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c, "")) for c in columns])
    write_text_atomic(path, buf.getvalue())


def read_study(path) -> list[dict]:
    """The study CSV as a list of dicts of strings (for scripts and tests)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_study(path: Path, rows: list[dict], *, group: str | None = None) -> Path:
    """Per-nucleus chi (bilateral, relative to the reference) of every run as points, PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    both = [r for r in rows if r["side"] == "bilateral" and not math.isnan(r["mean_rel_ppm"])]
    nuclei = [n for n in NUCLEI if any(r["region"] == n for r in both)]
    groups = sorted({r.get(group, "") for r in both}) if group else [""]
    fig, ax = plt.subplots(figsize=(1.3 * max(len(nuclei), 3) + 1.5, 4.0), dpi=120)
    rng = np.random.default_rng(0)
    width = 0.7 / max(len(groups), 1)
    for gi, g in enumerate(groups):
        xs, ys = [], []
        for ni, n in enumerate(nuclei):
            vals = [
                r["mean_rel_ppm"]
                for r in both
                if r["region"] == n and (not group or r.get(group, "") == g)
            ]
            x0 = ni + (gi - (len(groups) - 1) / 2) * width
            xs += list(x0 + rng.uniform(-0.3, 0.3, len(vals)) * width)
            ys += vals
            if vals:
                ax.hlines(np.median(vals), x0 - width / 2, x0 + width / 2, color="k", lw=1.5)
        ax.scatter(xs, ys, s=18, alpha=0.8, label=(g or "(none)") if group else None)
    ax.set_xticks(range(len(nuclei)), [n.replace("_", " ") for n in nuclei], rotation=20)
    ref = both[0]["reference"] if both else "brain"
    ax.set_ylabel(f"chi (ppm, relative to {'whole brain' if ref == 'brain' else 'CSF'})")
    ax.axhline(0.0, color="0.7", lw=0.8)
    ax.set_title(
        f"Deep grey matter susceptibility, {len({r['run'] for r in both})} runs "
        "(points: runs; bars: medians)",
        fontsize=9,
    )
    if group:
        ax.legend(title=group, fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
