"""NIfTI load/save and result folders: affines kept, clear errors, atomic, no silent overwrite."""

import os

import nibabel as nib
import numpy as np
import pytest

from dlqsm.errors import InputError, OutputExistsError
from dlqsm.io import OutputDir, load_nifti, save_nifti, write_json_atomic


def _affine():
    a = np.diag([0.8, 1.0, 1.5, 1.0])
    a[:3, 3] = [-10, 5, 3]
    return a


def test_save_load_round_trip_keeps_affine_and_permissions(tmp_path):
    data = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    p = save_nifti(tmp_path / "x.nii.gz", data, _affine())
    vol = load_nifti(p, ndim=3)
    np.testing.assert_array_equal(vol.data, data)
    np.testing.assert_allclose(vol.affine, _affine())
    np.testing.assert_allclose(vol.voxel_size, [0.8, 1.0, 1.5])
    assert os.stat(p).st_mode & 0o044  # readable by others like any new file, not mkstemp's 0600
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary left


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_nifti(tmp_path / "missing.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="bad.nii.gz.*cannot read"):
        load_nifti(bad)
    nan = np.zeros((3, 3, 3), np.float32)
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(InputError, match="1 NaN/inf"):
        load_nifti(tmp_path / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / "4d.nii")
    with pytest.raises(InputError, match="4 dimensions.*expected 3D"):
        load_nifti(tmp_path / "4d.nii", ndim=3)
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 1), np.float32), np.eye(4)), tmp_path / "s.nii")
    assert load_nifti(tmp_path / "s.nii", ndim=3).shape == (3, 3, 3)


def test_output_dir_refuses_overwrite_without_force(tmp_path):
    out = OutputDir(tmp_path / "out")
    out.nifti("chimap.nii.gz", np.zeros((2, 2, 2)), np.eye(4))
    out.json("record.json", {"a": np.float32(1.5), "b": np.arange(2)})
    with pytest.raises(OutputExistsError, match="--force"):
        out.check(["chimap.nii.gz", "other.nii.gz"])
    with pytest.raises(OutputExistsError):
        out.json("record.json", {})
    forced = OutputDir(tmp_path / "out", force=True)
    forced.check(["chimap.nii.gz"])
    forced.json("record.json", {"c": 2})
    assert (tmp_path / "out" / "record.json").read_text().strip().endswith("}")
    write_json_atomic(tmp_path / "j.json", {"p": tmp_path})
    assert str(tmp_path) in (tmp_path / "j.json").read_text()
