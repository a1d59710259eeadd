"""QSM-CI artifact folders: raw (phase + magnitude + params) and local-field variants."""

import numpy as np
import pytest

from dlqsm.errors import InputError
from dlqsm.io.qsmci import is_qsmci_folder, read_params, write_params
from dlqsm.io.scan import load_scan

from .conftest import AFFINE, SHAPE, TE, magnitude, true_phase, write_json, write_nii


def _raw_folder(folder, *, te=TE, n_mag=3, params_extra=None):
    write_nii(folder / "phase.nii.gz", np.moveaxis(true_phase(3), 0, -1))
    write_nii(folder / "magnitude.nii.gz", np.moveaxis(magnitude(n_mag), 0, -1))
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    write_nii(folder / "mask.nii.gz", mask)
    params = {"TE": te, "B0": 7.0, "B0_dir": [0.0, 0.6, 0.8], "voxel_size": [1.0, 1.2, 1.5]}
    params.update(params_extra or {})
    write_json(folder / "params.json", params)
    return folder


def _local_folder(folder, **params):
    write_nii(folder / "localfield.nii.gz", np.full(SHAPE, 0.01, np.float32))
    mask = np.ones(SHAPE, np.uint8)
    write_nii(folder / "mask.nii.gz", mask)
    write_json(folder / "params.json", {"B0_dir": [0, 0, 1], "voxel_size": [1, 1.2, 1.5],
                                        **params})
    return folder


def test_raw_artifacts(tmp_path):
    f = _raw_folder(tmp_path / "in")
    assert is_qsmci_folder(f)
    scan = load_scan(f)
    assert scan.kind == "raw" and scan.phase.shape == (3, *SHAPE)
    np.testing.assert_allclose(scan.phase, true_phase(3), atol=1e-6)
    np.testing.assert_allclose(scan.te, TE)
    assert scan.field_strength == 7.0
    np.testing.assert_allclose(scan.b0_dir, [0.0, 0.6, 0.8])  # params win over the affine
    assert scan.mask.dtype == bool and scan.mask.sum() == 4 * 3 * 2
    np.testing.assert_allclose(scan.affine, AFFINE)
    assert scan.sources["te"] == str(f / "params.json")


def test_local_field_artifacts(tmp_path):
    scan = load_scan(_local_folder(tmp_path / "lf"))
    assert scan.kind == "local_field" and scan.phase is None
    np.testing.assert_allclose(scan.local_field, 0.01)
    np.testing.assert_allclose(scan.voxel_size, [1, 1.2, 1.5])


def test_total_field_preferred_over_local_field_with_notice(tmp_path):
    f = _local_folder(tmp_path / "tf")
    write_nii(f / "totalfield.nii.gz", np.zeros(SHAPE, np.float32))
    scan = load_scan(f)
    assert scan.kind == "total_field"
    assert any("ignoring localfield" in n for n in scan.notices)
    # an explicit local field wins over the folder's choice
    scan = load_scan(f, local_field=f / "localfield.nii.gz")
    assert scan.kind == "local_field"


def test_te_in_ms_is_converted_with_notice(tmp_path):
    scan = load_scan(_raw_folder(tmp_path / "in", te=[4, 8, 12]))
    np.testing.assert_allclose(scan.te, TE)
    assert any("milliseconds" in n and "params.json" in n for n in scan.notices)


def test_missing_te_names_params(tmp_path):
    f = _raw_folder(tmp_path / "in")
    write_json(f / "params.json", {"B0": 3})
    with pytest.raises(InputError, match="TE") as err:
        load_scan(f)
    assert str(f / "params.json") in str(err.value)
    assert load_scan(f, te=TE).n_echoes == 3


def test_echo_count_mismatches(tmp_path):
    f = _raw_folder(tmp_path / "a", te=TE[:2])
    with pytest.raises(InputError, match="2 echo times given for 3 phase echoes") as err:
        load_scan(f)
    assert str(f / "params.json") in str(err.value)
    f = _raw_folder(tmp_path / "b", n_mag=2)
    with pytest.raises(InputError, match="magnitude has 2 echoes") as err:
        load_scan(f)
    assert str(f / "magnitude.nii.gz") in str(err.value)


@pytest.mark.parametrize("key, value, message", [
    ("B0_dir", [0, 0, 0], "zero vector"),
    ("voxel_size", [1, 0, 1], "voxel size"),
    ("B0", 0, "field strength"),
    ("TE", [0.004, 0.004, 0.012], "duplicate"),
    ("TE", [0.012, 0.008, 0.004], "not increasing"),
    ("B0_dir", [0, 1], "list of 3 numbers"),
])
def test_bad_params_name_params_json(tmp_path, key, value, message):
    f = _raw_folder(tmp_path / "in", params_extra={key: value})
    with pytest.raises(InputError, match=message) as err:
        load_scan(f)
    assert str(f / "params.json") in str(err.value)


def test_bad_images_name_the_file(tmp_path):
    f = _local_folder(tmp_path / "lf")
    write_nii(f / "mask.nii.gz", np.ones((*SHAPE, 2), np.uint8))
    with pytest.raises(InputError, match="expected 3D") as err:
        load_scan(f)
    assert str(f / "mask.nii.gz") in str(err.value)
    write_nii(f / "mask.nii.gz", np.ones((6, 5, 5), np.uint8))
    with pytest.raises(InputError, match="grid") as err:
        load_scan(f)
    assert str(f / "mask.nii.gz") in str(err.value)
    (f / "mask.nii.gz").unlink()
    with pytest.raises(InputError, match="needs a brain mask") as err:
        load_scan(f)
    assert str(f / "localfield.nii.gz") in str(err.value)
    (f / "localfield.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(InputError, match="cannot read") as err:
        load_scan(f)
    assert str(f / "localfield.nii.gz") in str(err.value)
    (f / "params.json").write_text("{")
    with pytest.raises(InputError, match="cannot read params.json") as err:
        load_scan(f)
    assert str(f / "params.json") in str(err.value)


def test_params_round_trip(tmp_path):
    p = write_params(tmp_path / "params.json", te=[0.004], b0=3, b0_dir=[0, 0, 1],
                     voxel_size=[1, 1, 2])
    assert read_params(p) == {"TE": [0.004], "B0": 3.0, "B0_dir": [0, 0, 1],
                              "voxel_size": [1, 1, 2]}
