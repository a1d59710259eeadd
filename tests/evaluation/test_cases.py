"""Evaluation test cases: held-out simulated heads and folders with reference maps."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from dlqsm.errors import InputError
from dlqsm.evaluation.cases import (
    EVAL_SEED_BASE,
    b0_at_tilt,
    folder_cases,
    read_layout,
    simulated_heads,
)
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.geometry import angle_to_b0, b0_dir_from_affine

from .conftest import HEAD_SHAPE as SHAPE
from .conftest import HEAD_TILT


def test_heads_are_held_out_and_physically_consistent(tiny_heads):
    heads = tiny_heads
    assert [c.name for c in heads] == [f"head{EVAL_SEED_BASE}", f"head{EVAL_SEED_BASE + 1}"]
    assert [c.source["seed"] for c in heads] == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1]
    for c in heads:
        assert angle_to_b0(c.b0_dir) == pytest.approx(HEAD_TILT, abs=1e-6)
        np.testing.assert_allclose(b0_dir_from_affine(c.affine), c.b0_dir, atol=1e-9)
        assert abs(c.reference[c.mask].mean()) < 1e-6
        op = DipoleOperator(SHAPE, c.voxel_size, c.b0_dir, padding=tuple(n // 4 for n in SHAPE))
        expected = op.forward(torch.tensor(c.reference * c.mask)).numpy() * c.mask
        np.testing.assert_allclose(c.local_field, expected, atol=1e-6)
        assert np.all(c.reference[~c.mask] == 0)
        assert c.roi_names[c.roi_ids[0]] == "caudate"
        present = [i for i in c.roi_ids if (c.labels == i).any()]
        assert len(present) >= 4
    assert not np.array_equal(heads[0].reference, heads[1].reference)
    assert heads[0].b0_dir != heads[1].b0_dir  # azimuth drawn per case


def test_heads_are_reproducible_and_refuse_training_seeds():
    a = simulated_heads(1, (24, 28, 26), 8.0, noise_std=0.01)[0]
    b = simulated_heads(1, (24, 28, 26), 8.0, noise_std=0.01)[0]
    np.testing.assert_array_equal(a.local_field, b.local_field)
    with pytest.raises(InputError, match="training range"):
        simulated_heads(1, (24, 28, 26), 8.0, seed=123)
    np.testing.assert_allclose(b0_at_tilt(0.0, 5), [0, 0, 1])


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(path))


def _write_case(folder, names, shape=(12, 14, 10), affine=None, skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.2, 1.0]) if affine is None else affine
    rng = np.random.default_rng(0)
    mask = np.zeros(shape)
    mask[2:-2, 2:-2, 2:-2] = 1
    labels = np.zeros(shape)
    labels[4:6, 4:6, 4:6] = 1
    labels[7:9, 7:9, 4:6] = 2
    vols = {"local_field": rng.normal(size=shape) * mask, "mask": mask,
            "reference": rng.normal(size=shape) * mask, "labels": labels}
    for key, name in names.items():
        if key not in skip:
            _save(folder / name, vols[key], affine)
    return vols


def test_challenge2016_layout_is_detected(tmp_path):
    names = {"local_field": "phs_tissue.nii.gz", "mask": "msk.nii.gz",
             "reference": "chi_cosmos.nii.gz", "labels": "evaluation_mask.nii.gz"}
    vols = _write_case(tmp_path / "ch", names)
    (case,) = folder_cases(tmp_path / "ch")
    assert case.name == "ch" and case.roi_ids == [1, 2]
    np.testing.assert_allclose(case.voxel_size, (1, 1, 1.2))
    np.testing.assert_allclose(case.b0_dir, (0, 0, 1))
    np.testing.assert_allclose(case.local_field, vols["local_field"], atol=1e-6)
    assert case.magnitude is None and case.mask.dtype == bool
    assert case.reference_name == "COSMOS"  # labels the reference row of the figures


def test_subfolders_with_a_layout_file(tmp_path):
    names = {"local_field": "f.nii.gz", "mask": "m.nii.gz", "reference": "ref.nii.gz",
             "labels": "roi.nii.gz"}
    for sub in ("a", "b"):
        vols = _write_case(tmp_path / sub, names)
        layout = {**names, "field_scale": 2.0, "roi_names": {"1": "nucleus"}, "roi_ids": [1],
                  "b0_dir": [0, 1, 1]}
        (tmp_path / sub / "evaluation.json").write_text(json.dumps(layout))
    cases = folder_cases(tmp_path)
    assert [c.name for c in cases] == [f"{tmp_path.name}-a", f"{tmp_path.name}-b"]
    c = cases[0]
    np.testing.assert_allclose(c.local_field, 2 * vols["local_field"], atol=1e-6)
    assert c.roi_ids == [1] and c.roi_name(1) == "nucleus" and c.reference_name == "truth"
    np.testing.assert_allclose(c.b0_dir, np.array([0, 1, 1]) / np.sqrt(2))


def test_folder_errors(tmp_path):
    names = {"local_field": "localfield.nii.gz", "mask": "mask.nii.gz",
             "reference": "chi.nii.gz"}
    _write_case(tmp_path / "noref", names, skip=("reference",))
    with pytest.raises(InputError, match="ground-truth"):
        folder_cases(tmp_path / "noref", layout="dlqsm")
    with pytest.raises(InputError, match="no evaluation case"):
        folder_cases(tmp_path / "noref")  # nothing detected without a reference
    _write_case(tmp_path / "grid", names)
    _save(tmp_path / "grid" / "mask.nii.gz", np.ones((12, 14, 9)), np.eye(4))
    with pytest.raises(InputError, match="does not match"):
        folder_cases(tmp_path / "grid")
    with pytest.raises(InputError, match="does not exist"):
        folder_cases(tmp_path / "absent")
    with pytest.raises(InputError, match="unknown layout"):
        read_layout("nonsense")
    with pytest.raises(InputError, match="lacks reference"):
        read_layout({"local_field": "a", "mask": "b"})


def test_simulated_dataset_folder_is_detected(tmp_path):
    """A `dlqsm simulate` output folder is a set of cases (held-out simulated data on disk),
    with the geometry each sample was simulated in (read back from its affine)."""
    from dlqsm.simulation.datasets import HeadCaseDataset
    from dlqsm.simulation.disk import DiskQSMDataset, write_dataset

    ds = HeadCaseDataset(2, seed=5, shape=(20, 24, 20), voxel_size=(1.0, 1.2, 1.5),
                         max_tilt_deg=20.0)
    write_dataset(ds, tmp_path / "test", compress=False, progress=False)
    cases = folder_cases(tmp_path / "test")
    stored = DiskQSMDataset(tmp_path / "test")
    assert [c.name for c in cases] == ["test-sample_00000", "test-sample_00001"]
    for k, case in enumerate(cases):
        meta, sample = stored.meta(k), stored[k]
        np.testing.assert_allclose(case.b0_dir, meta["b0_dir"], atol=1e-5)
        np.testing.assert_allclose(case.voxel_size, meta["voxel_size"], atol=1e-5)
        assert np.linalg.norm(np.asarray(case.b0_dir)[:2]) > 0.05  # tilted
        np.testing.assert_array_equal(case.local_field, sample["field"][0].numpy())
        np.testing.assert_array_equal(case.reference, sample["chi"][0].numpy())
        assert case.labels is not None and case.reference_name == "truth"
