"""A simulated BIDS MEGRE dataset (3 subjects x 2 sessions, 48^3) shared by the study tests.

Each subject is a dlqsm head phantom (:func:`dlqsm.simulation.head.simulate_head_case`, own
seed) with 4 echoes; its second session is the same head with fresh noise. Runs are written
as ``*_echo-N_part-{mag,phase}_MEGRE.nii.gz`` with sidecars (EchoTime,
MagneticFieldStrength). ``participants.tsv`` gives a group and an age. The
phantom's labels are written as a segmentation derivative (``*_dseg.nii.gz`` + ``dseg.tsv``)
on a grid twice as fine and flipped along x, so the study table must resample through the
affines to find them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (48, 48, 48)
VOXEL = 3.5
SUBJECTS = ("01", "02", "03")
SESSIONS = ("1", "2")
GROUPS = {"01": "patient", "02": "control", "03": "patient"}
FAST = ["--method", "tkd", "--bfr", "vsharp", "--unwrap", "laplacian"]
"""Fast methods for tests about plumbing (one 48^3 run takes about a second)."""


def _save(path: Path, data, affine) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    nib.save(img, str(path))


def _json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def fine_flipped(labels: np.ndarray, affine: np.ndarray):
    """The same labels on a grid twice as fine (each voxel -> 2x2x2) and flipped along x,
    with the affine that keeps every label at its world position."""
    fine = labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)[::-1]
    half = np.diag([0.5, 0.5, 0.5, 1.0])
    half[:3, 3] = -0.25  # fine voxel 0 sits a quarter of a coarse voxel before coarse 0
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, fine.shape[0] - 1
    return np.ascontiguousarray(fine), affine @ half @ flip


def write_dataset(
    root: Path, subjects=SUBJECTS, sessions=SESSIONS, shape=SHAPE, voxel=VOXEL
) -> dict:
    """Write the BIDS dataset and the label derivative; returns {run key: HeadCase labels}."""
    from dlqsm.simulation.anatomy import LABELS
    from dlqsm.simulation.head import simulate_head_case

    _json(root / "dataset_description.json", {"Name": "simulated cohort", "BIDSVersion": "1.9.0"})
    (root / "participants.tsv").write_text(
        "participant_id\tgroup\tage\n"
        + "".join(f"sub-{s}\t{GROUPS[s]}\t{30 + 7 * i}\n" for i, s in enumerate(subjects))
    )
    seg_root = root / "derivatives" / "phantom"
    _json(
        seg_root / "dataset_description.json",
        {
            "Name": "phantom labels",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "dlqsm simulation"}],
        },
    )
    labels = {}
    for i, sub in enumerate(subjects):
        case = simulate_head_case(shape, voxel_size=(voxel,) * 3, seed=100 + i, snr=60.0)
        lab = case.labels.numpy().astype(np.int16)
        rng = np.random.default_rng(i)
        for j, ses in enumerate(sessions):
            # later sessions: the same head rescanned (fresh noise on phase and magnitude)
            phase, mag = case.phase.numpy(), case.magnitude.numpy()
            if j:
                phase = np.angle(np.exp(1j * (phase + rng.normal(0, 0.02, phase.shape))))
                mag = mag * (1 + rng.normal(0, 0.01, mag.shape))
            key = f"sub-{sub}_ses-{ses}"
            anat = root / f"sub-{sub}" / f"ses-{ses}" / "anat"
            for e in range(phase.shape[0]):
                for part, vol in (("mag", mag), ("phase", phase)):
                    stem = f"{key}_echo-{e + 1}_part-{part}_MEGRE"
                    _save(anat / f"{stem}.nii.gz", vol[e].astype(np.float32), case.affine)
                    _json(
                        anat / f"{stem}.json",
                        {"EchoTime": float(case.te[e]), "MagneticFieldStrength": 3.0},
                    )
            fine, faff = fine_flipped(lab, case.affine)
            seg = seg_root / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"{key}_desc-phantom_dseg"
            _save(seg.with_suffix(".nii.gz"), fine, faff)
            seg.with_suffix(".tsv").write_text(
                "index\tname\n" + "".join(f"{v}\t{k}\n" for k, v in LABELS.items() if v)
            )
            labels[key] = lab
    return labels


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """(BIDS root, {run key: labels on the scan grid}) of the simulated 3 x 2 dataset."""
    root = tmp_path_factory.mktemp("cohort") / "bids"
    labels = write_dataset(root)
    return root, labels


@pytest.fixture(scope="session")
def derived(cohort, tmp_path_factory):
    """The dataset reconstructed once with --jobs 1 (fast methods): (root, deriv, exit code)."""
    from dlqsm.cli.main import main

    root, _ = cohort
    deriv = tmp_path_factory.mktemp("deriv") / "dlqsm"
    code = main(["reconstruct", str(root), "-o", str(deriv), "--jobs", "1", "-q", *FAST])
    return root, deriv, code


def copy_dataset(root: Path, dest: Path) -> Path:
    """A private copy of the dataset (for tests that damage it)."""
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns("derivatives"))
    return dest
