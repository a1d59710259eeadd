"""Explicit files, the Scan object, and the phase conventions (scaling, sign, coils)."""

import math

import nibabel as nib
import numpy as np
import pytest

from dlqsm.errors import InputError
from dlqsm.io.scan import Scan, load_scan, normalize_phase
from dlqsm.physics.geometry import rotation_matrix

from .conftest import AFFINE, SHAPE, TE, magnitude, true_phase, write_nii


def _files(tmp_path, phase=None, mag=None, affine=AFFINE):
    phase = true_phase(3) if phase is None else phase
    mag = magnitude(len(phase)) if mag is None else mag
    p = write_nii(tmp_path / "ph.nii.gz", np.moveaxis(phase, 0, -1), affine)
    m = write_nii(tmp_path / "mag.nii", np.moveaxis(mag, 0, -1), affine)
    return p, m


def test_explicit_4d_files(tmp_path):
    p, m = _files(tmp_path)
    scan = load_scan(phase=p, magnitude=m, te=TE, field_strength=3)
    assert scan.kind == "raw" and scan.n_echoes == 3 and not scan.has_coils
    np.testing.assert_allclose(scan.phase, true_phase(3), atol=1e-6)
    np.testing.assert_allclose(scan.magnitude, magnitude(3))
    assert scan.shape == SHAPE and scan.notices == []


def test_explicit_per_echo_files(tmp_path):
    phi = true_phase(2)
    files = [write_nii(tmp_path / f"p{e}.nii.gz", phi[e]) for e in range(2)]
    scan = load_scan(phase=files, te=TE[:2], field_strength=1.5)
    np.testing.assert_allclose(scan.phase, phi, atol=1e-6)
    assert scan.magnitude is None and scan.sources["phase"] == [str(f) for f in files]


def test_phase_sign_flip(tmp_path):
    p, m = _files(tmp_path)
    a = load_scan(phase=p, magnitude=m, te=TE, field_strength=3)
    b = load_scan(phase=p, magnitude=m, te=TE, field_strength=3, phase_sign=-1)
    np.testing.assert_allclose(np.exp(1j * b.phase), np.exp(-1j * a.phase), atol=1e-5)
    assert b.phase.min() >= -math.pi and b.phase.max() < math.pi
    assert any("sign flipped" in n for n in b.notices)
    with pytest.raises(InputError, match="phase sign"):
        load_scan(phase=p, te=TE, field_strength=3, phase_sign=2)


@pytest.mark.parametrize("scale, name", [(180 / math.pi, "degrees"), (0.0037 / math.pi, "tiny")])
def test_non_radian_phase_needs_rescale_flag(tmp_path, scale, name):
    phi = true_phase(3)
    phi[0, 0, 0, 0], phi[0, 0, 0, 1] = -math.pi, math.pi * (1 - 1e-6)  # span the full circle
    p, m = _files(tmp_path, phase=phi * scale)
    with pytest.raises(InputError, match="not radians.*--rescale-phase") as err:
        load_scan(phase=p, magnitude=m, te=TE, field_strength=3)
    assert str(p) in str(err.value)
    scan = load_scan(phase=p, magnitude=m, te=TE, field_strength=3, rescale_phase=True)
    np.testing.assert_allclose(np.exp(1j * scan.phase), np.exp(1j * phi), atol=1e-4)
    assert any("rescaled linearly" in n for n in scan.notices)


def test_normalize_phase_rules():
    x = np.array([0, 1000, 4095], np.float32)  # unsigned 12-bit
    notes = []
    np.testing.assert_allclose(normalize_phase(x, notices=notes),
                               [-math.pi, 1000 / 4096 * 2 * math.pi - math.pi,
                                4095 / 4096 * 2 * math.pi - math.pi], rtol=1e-6)
    assert "[0, 4096)" in notes[0]
    y = np.linspace(0, 2 * math.pi - 1e-3, 50).astype(np.float32)  # [0, 2pi) convention
    np.testing.assert_allclose(np.exp(1j * normalize_phase(y)), np.exp(1j * y), atol=1e-5)
    assert normalize_phase(y).max() < math.pi
    small = np.array([-0.3, 0.3], np.float32)  # integers that are radians stay
    np.testing.assert_array_equal(normalize_phase(np.array([-3, 0, 3], np.float32)), [-3, 0, 3])
    np.testing.assert_array_equal(normalize_phase(small * 100, rescale=False), small * 100)


def test_bad_explicit_inputs(tmp_path):
    p, m = _files(tmp_path)
    with pytest.raises(InputError, match="2 echo times given for 3"):
        load_scan(phase=p, magnitude=m, te=TE[:2], field_strength=3)
    with pytest.raises(InputError, match="not increasing"):
        load_scan(phase=p, magnitude=m, te=[0.004, 0.012, 0.008], field_strength=3)
    with pytest.raises(InputError, match="field strength is missing") as err:
        load_scan(phase=p, magnitude=m, te=TE)
    assert str(p) in str(err.value)
    with pytest.raises(InputError, match="field strength must be in tesla"):
        load_scan(phase=p, te=TE, field_strength=300)
    with pytest.raises(InputError, match="zero vector"):
        load_scan(phase=p, te=TE, field_strength=3, b0_dir=[0, 0, 0])
    with pytest.raises(InputError, match="voxel size"):
        load_scan(phase=p, te=TE, field_strength=3, voxel_size=[1, 0, 1])
    with pytest.raises(InputError, match="does not exist") as err:
        load_scan(phase=tmp_path / "nope.nii.gz", te=TE, field_strength=3)
    assert "nope.nii.gz" in str(err.value)
    with pytest.raises(InputError, match="no input images"):
        load_scan(te=TE)
    with pytest.raises(InputError, match="must be a folder"):
        load_scan(p)


def test_swapped_magnitude_is_refused(tmp_path):
    p, m = _files(tmp_path, mag=true_phase(3))
    with pytest.raises(InputError, match="negative") as err:
        load_scan(phase=p, magnitude=m, te=TE, field_strength=3)
    assert str(m) in str(err.value)


def test_singular_affine_names_file(tmp_path):
    bad = AFFINE.copy()
    bad[:3, 2] = 0  # zero voxel size along z (a broken header: sform only)
    p, mk = tmp_path / "lf.nii.gz", tmp_path / "mask.nii.gz"
    for path, data in ((p, np.zeros(SHAPE, np.float32)), (mk, np.ones(SHAPE, np.uint8))):
        img = nib.Nifti1Image(data, None)
        img.set_sform(bad, code=1)
        nib.save(img, str(path))
    with pytest.raises(InputError, match="singular") as err:
        load_scan(local_field=p, mask=mk)
    assert str(p) in str(err.value)
    scan = load_scan(local_field=p, mask=mk, b0_dir=[0, 0, 1], voxel_size=[1, 1, 1])
    np.testing.assert_allclose(scan.voxel_size, 1)


def test_oblique_affine_gives_tilted_b0(tmp_path):
    rot = rotation_matrix([1, 0, 0], math.radians(20))
    aff = np.eye(4)
    aff[:3, :3] = rot * 1.5
    p = write_nii(tmp_path / "lf.nii.gz", np.zeros(SHAPE, np.float32), aff)
    mk = write_nii(tmp_path / "mask.nii.gz", np.ones(SHAPE, np.uint8), aff)
    scan = load_scan(local_field=p, mask=mk)
    np.testing.assert_allclose(scan.b0_dir, rot.T @ [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(scan.voxel_size, 1.5)
    assert math.isclose(math.degrees(math.acos(scan.b0_dir[2])), 20, abs_tol=1e-4)


def test_uncombined_coils(tmp_path):
    phi = np.stack([true_phase(3, seed=c) for c in range(2)])  # (C, E, X, Y, Z)
    data = np.transpose(phi, (2, 3, 4, 1, 0))  # NIfTI (X, Y, Z, E, C)
    p = write_nii(tmp_path / "ph.nii.gz", data)
    scan = load_scan(phase=p, te=TE, field_strength=3)
    assert scan.has_coils and scan.phase.shape == (2, 3, *SHAPE)
    np.testing.assert_allclose(scan.phase, phi, atol=1e-6)
    assert any("(X, Y, Z, echo, coil)" in n for n in scan.notices)
    p = write_nii(tmp_path / "ph2.nii.gz", np.transpose(phi, (2, 3, 4, 0, 1)))
    scan = load_scan(phase=p, te=TE, field_strength=3, coil_axis=3)
    np.testing.assert_allclose(scan.phase, phi, atol=1e-6)


def test_scan_object_defaults():
    lf = np.zeros(SHAPE, np.float32)
    scan = Scan(local_field=lf, mask=np.ones(SHAPE, bool), voxel_size=(1, 1, 2))
    np.testing.assert_allclose(scan.affine, np.diag([1, 1, 2, 1]))
    np.testing.assert_allclose(scan.b0_dir, [0, 0, 1])
    assert scan.kind == "local_field" and scan.n_echoes == 0
    with pytest.raises(InputError, match="empty"):
        Scan(local_field=lf, mask=np.zeros(SHAPE, bool))
    with pytest.raises(InputError, match="needs phase"):
        Scan(mask=np.ones(SHAPE, bool))
