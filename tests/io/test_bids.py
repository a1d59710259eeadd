"""BIDS MEGRE discovery: grouping, sidecars (with inheritance), run selection and errors."""

import math

import numpy as np
import pytest

from dlqsm.errors import InputError
from dlqsm.io.bids import find_megre_runs, parse_entities
from dlqsm.io.scan import load_scan
from dlqsm.physics.geometry import b0_dir_from_affine

from .conftest import AFFINE, SHAPE, TE, true_phase, write_bids_run, write_json, write_nii


def test_parse_entities():
    ent = parse_entities("sub-01_ses-2_run-3_echo-4_part-phase_MEGRE.nii.gz")
    assert ent == {"sub": "01", "ses": "2", "run": "3", "echo": "4", "part": "phase"}
    assert parse_entities("MEGRE.json") == {}
    assert parse_entities("sub-01_T1w.nii.gz") == {}


def test_bids_dataset_loads_one_run(bids_root):
    pf, mf, _ = write_bids_run(bids_root)
    scan = load_scan(bids_root)
    assert scan.kind == "raw"
    assert scan.phase.shape == (3, *SHAPE) and scan.magnitude.shape == (3, *SHAPE)
    np.testing.assert_allclose(scan.te, TE)
    assert scan.field_strength == 3.0
    np.testing.assert_allclose(scan.affine, AFFINE)
    np.testing.assert_allclose(scan.voxel_size, [1.0, 1.2, 1.5])
    np.testing.assert_allclose(scan.b0_dir, b0_dir_from_affine(AFFINE))
    np.testing.assert_allclose(scan.phase, true_phase(3), atol=1e-6)
    assert scan.sources["phase"] == [str(p) for p in pf]


def test_subject_folder_and_inherited_sidecar(bids_root):
    write_bids_run(bids_root, sidecar_b0=False)
    # field strength only in a dataset-level sidecar: inherited by every image
    write_json(bids_root / "MEGRE.json", {"MagneticFieldStrength": 7.0})
    scan = load_scan(bids_root)
    assert scan.field_strength == 7.0
    # a subject folder alone is not a dataset root: the inherited value is then missing
    with pytest.raises(InputError, match="MagneticFieldStrength") as err:
        load_scan(bids_root / "sub-01")
    assert "sub-01_echo-1_part-phase_MEGRE.json" in str(err.value)
    assert load_scan(bids_root / "sub-01", field_strength=7).field_strength == 7.0


def test_several_runs_need_a_choice(bids_root):
    write_bids_run(bids_root, sub="01")
    write_bids_run(bids_root, sub="02", run="1", b0=7.0)
    write_bids_run(bids_root, sub="02", run="2", b0=7.0)
    with pytest.raises(InputError, match=r"3 MEGRE runs.*--subject") as err:
        load_scan(bids_root)
    assert "sub-02_run-2" in str(err.value) and str(bids_root) in str(err.value)
    assert load_scan(bids_root, subject="sub-01").field_strength == 3.0
    with pytest.raises(InputError, match="2 MEGRE runs"):
        load_scan(bids_root, subject="02")
    scan = load_scan(bids_root, subject="02", select="run-2")
    assert "run-2" in scan.sources["phase"][0]
    with pytest.raises(InputError, match="no \\*_MEGRE images found for subject '03'"):
        load_scan(bids_root, subject="03")


def test_missing_echo_time_names_the_sidecar(bids_root):
    _, _, sc = write_bids_run(bids_root)
    write_json(sc[1], {"MagneticFieldStrength": 3.0})
    mag_sc = sc[1].with_name(sc[1].name.replace("part-phase", "part-mag"))
    write_json(mag_sc, {"MagneticFieldStrength": 3.0})
    with pytest.raises(InputError, match="EchoTime of echo 2 is missing") as err:
        load_scan(bids_root)
    assert str(sc[1]) in str(err.value) and "--te" in str(err.value)
    scan = load_scan(bids_root, te=[4, 8, 12])  # ms on the command line: converted
    np.testing.assert_allclose(scan.te, TE)
    assert any("milliseconds" in n for n in scan.notices)


@pytest.mark.parametrize("te, message", [([0.004, 0.012, 0.008], "before echo 2"),
                                         ([0.004, 0.008, 0.008], "same EchoTime")])
def test_unsorted_or_duplicate_echo_times(bids_root, te, message):
    _, _, sc = write_bids_run(bids_root, te=te)
    with pytest.raises(InputError, match=message) as err:
        load_scan(bids_root)
    assert str(sc[2]) in str(err.value)


def test_sidecar_disagreement_and_bad_json(bids_root):
    _, _, sc = write_bids_run(bids_root)
    mag_sc = sc[0].with_name(sc[0].name.replace("part-phase", "part-mag"))
    write_json(mag_sc, {"EchoTime": 0.005, "MagneticFieldStrength": 3.0})
    with pytest.raises(InputError, match="EchoTime 0.005 differs") as err:
        load_scan(bids_root)
    assert str(mag_sc) in str(err.value)
    mag_sc.write_text("{not json")
    with pytest.raises(InputError, match="cannot read JSON sidecar") as err:
        load_scan(bids_root)
    assert str(mag_sc) in str(err.value)


def test_missing_magnitude_echo(bids_root):
    pf, mf, _ = write_bids_run(bids_root)
    mf[2].unlink()
    with pytest.raises(InputError, match="echo 3 has a phase image but no magnitude") as err:
        load_scan(bids_root)
    assert str(pf[2]) in str(err.value)


def test_grid_mismatch_between_echoes(bids_root):
    pf, mf, _ = write_bids_run(bids_root)
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    write_nii(mf[1], np.ones(SHAPE, np.float32), shifted)
    with pytest.raises(InputError, match="different affine") as err:
        load_scan(bids_root)
    assert str(mf[1]) in str(err.value)
    write_nii(pf[2], np.zeros((6, 5, 3), np.float32))
    with pytest.raises(InputError, match="grid") as err:
        load_scan(bids_root)
    assert str(pf[2]) in str(err.value)


def test_4d_echo_file_and_nan(bids_root):
    pf, _, _ = write_bids_run(bids_root)
    write_nii(pf[0], np.zeros((*SHAPE, 2), np.float32))
    with pytest.raises(InputError, match="must be 3D") as err:
        load_scan(bids_root)
    assert str(pf[0]) in str(err.value)
    bad = true_phase(1)[0]
    bad[1, 1, 1] = np.nan
    write_nii(pf[0], bad)
    with pytest.raises(InputError, match="NaN") as err:
        load_scan(bids_root)
    assert str(pf[0]) in str(err.value)


def test_integer_phase_is_rescaled_with_notice(bids_root):
    phi = true_phase(3)
    stored = np.clip(np.round(phi / math.pi * 4096), -4096, 4095).astype(np.int16)
    write_bids_run(bids_root, phase=stored)
    scan = load_scan(bids_root)
    assert any("integers" in n and "[-4096, 4096)" in n for n in scan.notices)
    err = np.angle(np.exp(1j * (scan.phase - phi)))
    assert np.abs(err).max() <= math.pi / 4096 + 1e-5


def test_runs_are_grouped_by_entities(bids_root):
    write_bids_run(bids_root, sub="01", ses="a")
    write_bids_run(bids_root, sub="01", ses="b")
    runs = find_megre_runs(bids_root)
    assert [r.key for r in runs] == ["sub-01_ses-a", "sub-01_ses-b"]
    assert all(r.echoes == [1, 2, 3] and r.field_strength == 3.0 for r in runs)
    # derivatives are never inputs
    write_bids_run(bids_root / "derivatives" / "x", sub="09")
    assert len(find_megre_runs(bids_root)) == 2
