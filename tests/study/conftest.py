"""A simulated BIDS MEGRE dataset (3 subjects x 2 sessions, 48^3) shared by the study tests.

Written by :func:`dlqsm.study.simulated.write_megre_dataset`: one head phantom per subject,
4 echoes, its second session the same head with fresh noise, ``*_echo-N_part-{mag,phase}_MEGRE``
with sidecars (EchoTime, MagneticFieldStrength), ``participants.tsv`` (group, age). The
phantom's labels are written as a segmentation derivative (``*_dseg.nii.gz`` + ``dseg.tsv``)
on a grid twice as fine and flipped along x, so the study table must resample through the
affines to find them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dlqsm.io.nifti import save_nifti

SHAPE = (48, 48, 48)
VOXEL = 3.5
SUBJECTS = ("01", "02", "03")
SESSIONS = ("1", "2")
GROUPS = {"01": "patient", "02": "control", "03": "patient"}
FAST = ["--method", "tkd", "--bfr", "vsharp", "--unwrap", "laplacian"]
"""Fast methods for tests about plumbing (one 48^3 run takes about a second)."""


def _save(path: Path, data, affine) -> None:
    """Write a NIfTI keeping the array's dtype (labels stay integers)."""
    save_nifti(path, data, affine, dtype=np.asarray(data).dtype)


def fine_flipped(labels: np.ndarray, affine: np.ndarray):
    """The same labels on a grid twice as fine (each voxel -> 2x2x2) and flipped along x,
    with the affine that keeps every label at its world position."""
    fine = labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)[::-1]
    half = np.diag([0.5, 0.5, 0.5, 1.0])
    half[:3, 3] = -0.25  # fine voxel 0 sits a quarter of a coarse voxel before coarse 0
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, fine.shape[0] - 1
    return np.ascontiguousarray(fine), affine @ half @ flip


def write_dataset(root: Path) -> dict:
    """Write the BIDS dataset and its fine, flipped label derivative; {run key: labels}."""
    from dlqsm.study.simulated import write_megre_dataset

    return write_megre_dataset(
        root,
        SUBJECTS,
        SESSIONS,
        shape=SHAPE,
        voxel_size=(VOXEL,) * 3,
        groups=GROUPS,
        label_storage=fine_flipped,
    )


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
