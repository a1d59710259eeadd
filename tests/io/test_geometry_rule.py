"""Geometry that disagrees with itself (issue 10 item 3): a sheared affine, or a params.json /
sidecar B0 direction that disagrees with the affine, is reported naming both; the rule decides
which wins (--b0-dir > params/sidecar B0_dir > affine; --b0-source forces one); both are kept
for record.json."""

import json
import math

import numpy as np
import pytest

from dlqsm.errors import InputError
from dlqsm.io.nifti import affine_problem, shear_deg
from dlqsm.io.scan import load_scan
from dlqsm.physics.geometry import angle_to_b0, b0_dir_from_affine, rotation_matrix

from .conftest import write_json, write_nii

SHAPE = (8, 8, 8)


def _oblique(tilt_deg=15.0):
    a = np.eye(4)
    a[:3, :3] = rotation_matrix([1, 0, 0], math.radians(tilt_deg))
    return a


def _diagonal_only_resize(affine, zoom):
    """What a resize that scales only the affine's diagonal does (qsm-forward 0.32): the
    off-diagonal terms of an oblique affine keep their old scale -> a sheared affine."""
    a = affine.copy()
    for i in range(3):
        a[i, i] *= zoom[i]
    return a


def _tilted(b, deg):
    """``b`` turned by ``deg`` degrees (about an axis perpendicular to it)."""
    return rotation_matrix(np.cross(b, [1.0, 0, 0]), math.radians(deg)) @ b


def _folder(tmp_path, affine, params):
    d = tmp_path / "in"
    field = np.zeros(SHAPE, np.float32)
    field[2:6, 2:6, 2:6] = 0.01
    write_nii(d / "localfield.nii.gz", field, affine)
    write_nii(d / "mask.nii.gz", np.ones(SHAPE, np.uint8), affine)
    write_json(d / "params.json", params)
    return d


def test_shear_measure():
    assert shear_deg(_oblique()) == pytest.approx(0, abs=1e-9)
    sheared = _diagonal_only_resize(_oblique(), (1, 1, 2))
    assert shear_deg(sheared) > 1 and affine_problem(sheared) == "sheared"
    assert affine_problem(_oblique()) is None
    assert affine_problem(np.diag([1.0, 1.0, 0.0, 1.0])) == "singular"


def test_sheared_affine_reported_and_sidecar_wins(tmp_path):
    true_b0 = rotation_matrix([1, 0, 0], math.radians(15)).T @ [0, 0, 1]
    sheared = _diagonal_only_resize(_oblique(), (1, 1, 2))
    d = _folder(tmp_path, sheared, {"B0_dir": true_b0.tolist()})
    scan = load_scan(d)
    np.testing.assert_allclose(scan.b0_dir, true_b0, atol=1e-9)
    g = scan.geometry
    assert g["b0_dir_source"] == "sidecar" and g["b0_dir_source_file"] == str(d / "params.json")
    assert g["affine_shear_deg"] == pytest.approx(shear_deg(sheared), abs=1e-3)
    assert g["b0_dir_affine"] == pytest.approx(b0_dir_from_affine(sheared).tolist())
    assert g["b0_disagreement_deg"] > 1  # the sheared affine's B0 is off
    text = " ".join(scan.notices)
    assert "the affine is sheared" in text and "using B0_dir" in text
    assert "disagrees by" in text and str(d / "params.json") in text


@pytest.mark.parametrize("source, expect", [("auto", "sidecar"), ("sidecar", "sidecar"),
                                            ("affine", "affine")])
def test_disagreement_reported_and_b0_source_chooses(tmp_path, source, expect):
    aff = _oblique(20)
    from_affine = b0_dir_from_affine(aff)
    side = _tilted(from_affine, 5)
    scan = load_scan(_folder(tmp_path, aff, {"B0_dir": side.tolist()}), b0_source=source)
    want = side if expect == "sidecar" else from_affine
    np.testing.assert_allclose(scan.b0_dir, want / np.linalg.norm(want), atol=1e-9)
    assert scan.geometry["b0_dir_source"] == expect
    assert scan.geometry["b0_disagreement_deg"] == pytest.approx(5, abs=1e-3)
    note = next(n for n in scan.notices if "disagrees" in n)
    assert "5.0 deg" in note and "localfield.nii.gz" in note and "--b0-source" in note


def test_agreement_within_a_degree_is_quiet(tmp_path):
    aff = _oblique(20)
    near = _tilted(b0_dir_from_affine(aff), 0.5)
    scan = load_scan(_folder(tmp_path, aff, {"B0_dir": near.tolist()}))
    assert not [n for n in scan.notices if "B0" in n or "sheared" in n]
    assert scan.geometry["b0_disagreement_deg"] == pytest.approx(0.5, abs=1e-3)


def test_command_line_b0_wins_and_b0_source_needs_a_sidecar(tmp_path):
    aff = _oblique(20)
    d = _folder(tmp_path, aff, {"B0_dir": [0, 0, 1]})
    scan = load_scan(d, b0_dir=[0, 1, 1])
    np.testing.assert_allclose(scan.b0_dir, np.array([0, 1, 1]) / math.sqrt(2))
    assert scan.geometry["b0_dir_source"] == "command line"
    assert scan.geometry["b0_dir_sidecar"] == [0.0, 0.0, 1.0]  # kept for the record
    assert scan.geometry["b0_disagreement_deg"] == pytest.approx(
        angle_to_b0([0, 1, 1], b0_dir_from_affine(aff)), abs=1e-3)
    write_json(d / "params.json", {})
    with pytest.raises(InputError, match="no B0_dir in params.json"):
        load_scan(d, b0_source="sidecar")


def test_record_keeps_both_directions(tmp_path):
    from dlqsm.cli.main import main

    sheared = _diagonal_only_resize(_oblique(), (1, 1, 2))
    d = _folder(tmp_path, sheared, {"B0_dir": [0.0, 0.0, 1.0]})
    out = tmp_path / "out"
    assert main(["reconstruct", str(d), "-o", str(out), "--method", "tkd", "-q"]) == 0
    g = json.loads((out / "record.json").read_text())["geometry"]
    assert g["b0_dir_voxel"] == [0.0, 0.0, 1.0] and g["b0_dir_source"] == "sidecar"
    assert g["b0_dir_sidecar"] == [0.0, 0.0, 1.0] and len(g["b0_dir_affine"]) == 3
    assert g["affine_shear_deg"] > 1 and g["b0_disagreement_deg"] > 1


def test_bids_sidecar_b0_dir_is_read_and_weighed(tmp_path):
    """qsm-forward's BIDS sidecars carry B0_dir: it is the sidecar direction of the rule."""
    from .conftest import write_bids_run

    root = tmp_path / "bids"
    write_json(root / "dataset_description.json", {"Name": "t", "BIDSVersion": "1.9.0"})
    _, _, sidecars = write_bids_run(root)
    for sc in sidecars:
        meta = json.loads(sc.read_text())
        write_json(sc, {**meta, "B0_dir": [0.0, 0.2, 1.0]})
    scan = load_scan(root)
    np.testing.assert_allclose(scan.b0_dir, np.array([0, 0.2, 1]) / math.hypot(0.2, 1))
    assert scan.geometry["b0_dir_source"] == "sidecar"
    assert scan.geometry["b0_dir_source_file"] == str(sidecars[0])
    assert any("disagrees by 11.3 deg" in n for n in scan.notices)
    assert load_scan(root, b0_source="affine").geometry["b0_dir_source"] == "affine"
