"""A BIDS-derivatives tree for dlqsm's per-run outputs.

Layout (BIDS 1.9 derivatives; quantitative-MRI suffix ``Chimap`` for susceptibility in ppm)::

    OUT/dataset_description.json        DatasetType "derivative", GeneratedBy dlqsm
    OUT/README  OUT/.bidsignore
    OUT/sub-01/ses-1/anat/sub-01_ses-1_Chimap.nii.gz       chi, ppm (whole-brain referenced)
    OUT/sub-01/ses-1/anat/sub-01_ses-1_Chimap.json         method, parameters, geometry, timings
    OUT/sub-01/ses-1/anat/sub-01_ses-1_desc-brain_mask.nii.gz (+ .json)
    OUT/sub-01/ses-1/anat/sub-01_ses-1_localfield.nii.gz      (+ .json, ppm; non-standard)
    OUT/sub-01/ses-1/anat/sub-01_ses-1_totalfield.nii.gz      (+ .json, ppm; non-standard)
    OUT/logs/dlqsm-reconstruct_<time>_runs.tsv              one row per run of one invocation

Every entity of the input run other than ``echo`` and ``part`` is kept (``acq``, ``rec``,
``run``, ...), so a run's outputs are found by the same entities as its raw images. The brain
mask uses the derivatives ``desc-brain_mask`` form. BIDS defines no suffix for a field map in
ppm, so the local and total fields carry descriptive suffixes and are listed, with the files a
BIDS validator 1.x does not know (it checks raw-data names only), in ``.bidsignore``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dlqsm.errors import InputError
from dlqsm.io.atomic import write_text_atomic
from dlqsm.io.bids import run_entities
from dlqsm.io.outputs import write_json_atomic

BIDS_VERSION = "1.9.0"
CHIMAP = "Chimap"
"""BIDS suffix of a quantitative susceptibility map (ppm)."""

# single-run output name -> derivative name after the run prefix
NAMES = {
    "chimap.nii.gz": "Chimap.nii.gz",
    "record.json": "Chimap.json",
    "chimap.png": "Chimap.png",
    "mask.nii.gz": "desc-brain_mask.nii.gz",
    "localfield.nii.gz": "localfield.nii.gz",
    "totalfield.nii.gz": "totalfield.nii.gz",
}
SIDECARS = {
    "desc-brain_mask.nii.gz": {
        "Type": "Brain",
        "Description": "brain mask the susceptibility map is computed in",
    },
    "localfield.nii.gz": {
        "Units": "ppm",
        "Description": "local field (background removed), ppm of B0, zero outside the brain mask",
    },
    "totalfield.nii.gz": {
        "Units": "ppm",
        "Description": "total field from the multi-echo fit (unwrapped), ppm of B0",
    },
}
BIDSIGNORE = """\
# Files outside BIDS' raw-data naming (bids-validator 1.x knows raw names only):
# derivatives-only entities (desc-brain_mask), fields in ppm (no BIDS suffix), previews, logs.
*_desc-*
*_localfield.*
*_totalfield.*
*.png
logs/
study/
"""


def run_prefix(key: str) -> str:
    """The derivative file prefix of a run key (entities other than echo/part, in order)."""
    ent = run_entities(key)
    if "sub" not in ent:
        raise InputError(
            f"run {key!r} has no sub- entity: it cannot be placed in a BIDS derivatives tree.",
            fix="name the files sub-<label>_..._MEGRE.",
        )
    return key


def run_folder(out, key: str) -> Path:
    """``OUT/sub-01[/ses-1]/anat`` for a run key."""
    ent = run_entities(run_prefix(key))
    folder = Path(out) / f"sub-{ent['sub']}"
    if "ses" in ent:
        folder = folder / f"ses-{ent['ses']}"
    return folder / "anat"


def derivative_name(key: str, name: str) -> str:
    """Derivative file name of a single-run output ``name`` (``chimap.nii.gz`` ->
    ``sub-01_ses-1_Chimap.nii.gz``); other files keep their name after the run prefix."""
    return f"{run_prefix(key)}_{NAMES.get(name, name)}"


def chimap_paths(out, key: str) -> tuple[Path, Path]:
    """(map, sidecar) of a run: a run is complete when both exist (the sidecar comes last)."""
    folder = run_folder(out, key)
    return (
        folder / derivative_name(key, "chimap.nii.gz"),
        folder / derivative_name(key, "record.json"),
    )


def source_names(root, run) -> list[str]:
    """BIDS URIs (``bids:raw:sub-01/...``) of a run's input images."""
    root = Path(root)
    files = [*run.phase, *run.magnitude]
    return [f"bids:raw:{Path(f).relative_to(root).as_posix()}" for f in files]


def chimap_sidecar(record: dict, *, sources: list[str], settings: dict) -> dict:
    """The Chimap JSON: BIDS keys first, then dlqsm's record (method, parameters, timings)."""
    return {
        "Units": "ppm",
        "Description": "magnetic susceptibility relative to the mean inside the brain mask",
        "Sources": sources,
        "SpatialReference": "orig",
        "DlqsmSettings": settings,
        **record,
    }


def publish_run(staging: Path, out, key: str, record_extra: dict) -> list[str]:
    """Move a single-run output folder into the derivatives tree under the run's names.

    Images and other files first, then the Chimap sidecar (record.json with the BIDS keys of
    ``record_extra``): once the sidecar exists, the run is complete. Each file lands by one
    rename (atomic, replaces an older version). Returns the derivative file names.
    """
    folder = run_folder(out, key)
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))
    if "chimap.nii.gz" not in names or "record.json" not in names:
        raise InputError("the run wrote no chimap.nii.gz/record.json.", path=staging)
    written = []
    sources = record_extra.get("Sources", [])
    order = [n for n in names if n not in ("chimap.nii.gz", "record.json")] + ["chimap.nii.gz"]
    for name in order:
        target = derivative_name(key, name)
        os.replace(staging / name, folder / target)
        written.append(target)
        extra = SIDECARS.get(NAMES.get(name, ""))
        if extra is not None:
            side = target.split(".nii")[0] + ".json"
            write_json_atomic(folder / side, {**extra, "Sources": sources})
            written.append(side)
    # the record names the staging folder where it names the output folder: point it here
    text = (staging / "record.json").read_text()
    record = json.loads(text.replace(json.dumps(str(staging))[1:-1], json.dumps(str(folder))[1:-1]))
    record["outputs"] = written + [derivative_name(key, "record.json")]
    sidecar = chimap_sidecar(
        record, sources=sources, settings=record_extra.get("DlqsmSettings", {})
    )
    write_json_atomic(folder / derivative_name(key, "record.json"), sidecar)
    return record["outputs"]


def dataset_description(command: str, description: str, source_root) -> dict:
    """dataset_description.json of a dlqsm derivatives folder."""
    import dlqsm

    raw_name = None
    raw = Path(source_root) / "dataset_description.json"
    if raw.exists():
        try:
            raw_name = json.loads(raw.read_text()).get("Name")
        except (OSError, ValueError):
            raw_name = None
    return {
        "Name": f"dlqsm {command}" + (f" of {raw_name}" if raw_name else ""),
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [
            {"Name": "dlqsm", "Version": dlqsm.__version__, "Description": description}
        ],
        "DatasetLinks": {"raw": Path(source_root).resolve().as_uri()},
    }


def prepare_tree(out, source_root, *, command: str, description: str, force: bool) -> None:
    """Create (or check) the derivatives folder's dataset_description, README, .bidsignore.

    An existing folder must be a dlqsm derivative (or empty); its description is rewritten only
    with ``force`` (runs made with other settings are refused later, run by run).

    Raises:
        InputError: OUT is the raw dataset or another dataset.
    """
    out, root = Path(out), Path(source_root)
    if out.resolve() == root.resolve():
        raise InputError(
            "the output folder is the input dataset.",
            path=out,
            fix="write derivatives elsewhere, e.g. -o BIDS/derivatives/dlqsm.",
        )
    if out.exists() and not out.is_dir():
        raise InputError("the output path is a file.", path=out, fix="give a folder with -o.")
    desc_path = out / "dataset_description.json"
    new = dataset_description(command, description, root)
    if desc_path.exists():
        try:
            old = json.loads(desc_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(
                f"cannot read dataset_description.json ({exc}).",
                path=desc_path,
                fix="repair it or choose another output folder.",
            ) from exc
        ours = old.get("DatasetType") == "derivative" and any(
            g.get("Name") == "dlqsm" for g in old.get("GeneratedBy", []) if isinstance(g, dict)
        )
        if not ours:
            raise InputError(
                "the output folder holds a dataset dlqsm did not write.",
                path=desc_path,
                fix="choose another output folder.",
            )
        if force and old != new:
            write_json_atomic(desc_path, new)
    else:
        write_json_atomic(desc_path, new)
    if not (out / ".bidsignore").exists():
        write_text_atomic(out / ".bidsignore", BIDSIGNORE)
    if not (out / "README").exists():
        write_text_atomic(out / "README", readme(command, description))


def readme(command: str, description: str) -> str:
    """README of a derivatives folder: what dlqsm wrote and how to read it."""
    return (
        f"dlqsm {command} derivatives\n\n{description}\n\n"
        "Per run (sub-*/[ses-*/]anat/): *_Chimap.nii.gz, magnetic susceptibility in ppm "
        "relative to the mean inside the brain mask (0 outside it), with its JSON sidecar "
        "(method, parameters, B0 geometry, timings, software versions); "
        "*_desc-brain_mask.nii.gz; *_localfield.nii.gz and *_totalfield.nii.gz (ppm of B0) "
        "where the run started from raw phase. logs/ holds one table per invocation "
        "(run, status, seconds, error); study/ the region table and figure when made.\n"
    )
