"""Tiny on-disk inputs for the loader tests: NIfTI + JSON written into tmp_path."""

import json
import math

import nibabel as nib
import numpy as np
import pytest

SHAPE = (6, 5, 4)
TE = [0.004, 0.008, 0.012]
AFFINE = np.array([[1.0, 0, 0, -3], [0, 1.2, 0, -3], [0, 0, 1.5, -2], [0, 0, 0, 1]])


def write_nii(path, data, affine=AFFINE):
    """Write ``data`` with ``affine`` (sform and qform) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=np.float64))
    nib.save(img, str(path))
    return path


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def true_phase(n_echoes=3, shape=SHAPE, seed=0):
    """Wrapped phase (E, X, Y, Z) in [-pi, pi) spanning the whole circle."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(-math.pi, math.pi, shape)
    ph = np.stack([base * (e + 1) for e in range(n_echoes)])
    return (np.mod(ph + math.pi, 2 * math.pi) - math.pi).astype(np.float32)


def magnitude(n_echoes=3, shape=SHAPE):
    return np.stack([np.full(shape, 100.0 / (e + 1), np.float32) for e in range(n_echoes)])


def write_bids_run(root, sub="01", run=None, *, te=TE, b0=3.0, phase=None, ses=None,
                   sidecar_b0=True):
    """One subject's MEGRE run: per-echo mag/phase NIfTI + per-file sidecars.

    Returns (phase_files, mag_files, sidecar_files_of_phase).
    """
    n = len(te)
    phase = true_phase(n) if phase is None else phase
    mag = magnitude(n)
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + (f"_run-{run}" if run else "")
    pf, mf, sc = [], [], []
    for e in range(n):
        meta = {"EchoTime": te[e]}
        if sidecar_b0:
            meta["MagneticFieldStrength"] = b0
        for part, data, files in (("phase", phase[e], pf), ("mag", mag[e], mf)):
            name = f"{stem}_echo-{e + 1}_part-{part}_MEGRE"
            files.append(write_nii(folder / f"{name}.nii.gz", data))
            j = write_json(folder / f"{name}.json", meta)
            if part == "phase":
                sc.append(j)
    return pf, mf, sc


@pytest.fixture
def bids_root(tmp_path):
    root = tmp_path / "bids"
    write_json(root / "dataset_description.json", {"Name": "tiny", "BIDSVersion": "1.9.0"})
    return root
