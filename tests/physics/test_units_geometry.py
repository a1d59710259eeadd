"""Units (rad <-> Hz <-> ppm) with known numbers, and the B0 direction from NIfTI affines."""

import math

import numpy as np
import pytest
import torch

from dlqsm.errors import InputError
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.geometry import (
    angle_to_b0,
    b0_dir_from_affine,
    normalize_b0_dir,
    normalize_voxel_size,
    rotation_matrix,
    voxel_size_from_affine,
)
from dlqsm.physics.units import (
    GAMMA_HZ_PER_T,
    hz_to_phase,
    hz_to_ppm,
    larmor_hz,
    phase_to_hz,
    phase_to_ppm,
    ppm_to_hz,
    ppm_to_phase,
)


# ----------------------------------------------------------------------------- units
def test_known_numbers():
    assert GAMMA_HZ_PER_T == pytest.approx(42.57747892e6, rel=1e-12)
    assert larmor_hz(3.0) == pytest.approx(127.73243676e6, rel=1e-10)
    assert ppm_to_hz(1.0, 3.0) == pytest.approx(127.73243676, rel=1e-10)  # 1 ppm at 3 T
    assert ppm_to_hz(1.0, 7.0) == pytest.approx(298.04235244, rel=1e-10)
    assert hz_to_ppm(127.73243676, 3.0) == pytest.approx(1.0, rel=1e-10)
    # 50 Hz of phase evolution over 10 ms is pi rad; at 7 T that is 50 / 298.04 ppm
    assert phase_to_hz(math.pi, 0.01) == pytest.approx(50.0)
    assert phase_to_ppm(math.pi, 0.01, 7.0) == pytest.approx(50.0 / 298.04235244, rel=1e-10)
    # 1 ppm at 3 T after TE = 20 ms: 2 pi * 127.732 Hz * 0.02 s = 16.0513 rad
    assert ppm_to_phase(1.0, 0.02, 3.0) == pytest.approx(2 * math.pi * 127.73243676 * 0.02,
                                                         rel=1e-10)
    assert ppm_to_phase(1.0, 0.02, 3.0) == pytest.approx(16.0513, abs=1e-4)
    # the formula of the design guide: ppm = phase / (2 pi gamma B0 TE) * 1e6
    phase, te, b0 = 1.234, 0.0125, 2.89
    assert phase_to_ppm(phase, te, b0) == pytest.approx(
        phase / (2 * math.pi * GAMMA_HZ_PER_T * b0 * te) * 1e6, rel=1e-12)


def test_round_trips_numpy_and_torch():
    rng = np.random.default_rng(0)
    ppm = rng.normal(0, 0.2, (4, 5, 6))
    for b0 in (1.5, 3.0, 7.0):
        assert np.allclose(hz_to_ppm(ppm_to_hz(ppm, b0), b0), ppm, rtol=0, atol=1e-14)
        assert np.allclose(phase_to_ppm(ppm_to_phase(ppm, 0.017, b0), 0.017, b0), ppm,
                           rtol=0, atol=1e-14)
    hz = rng.normal(0, 30, (3, 4))
    assert np.allclose(phase_to_hz(hz_to_phase(hz, 0.02), 0.02), hz, rtol=0, atol=1e-12)
    # torch keeps dtype and device; TE broadcasts over an echo axis
    te = torch.tensor([0.005, 0.010, 0.020]).view(3, 1, 1, 1)
    field = torch.randn(1, 4, 5, 6) * 0.1
    phase = ppm_to_phase(field, te, 3.0)
    assert phase.shape == (3, 4, 5, 6) and phase.dtype == torch.float32
    assert torch.allclose(phase[2], 4 * phase[0], rtol=1e-5, atol=1e-7)  # linear in TE
    back = phase_to_ppm(phase, te, 3.0)
    assert torch.allclose(back, field.expand(3, -1, -1, -1), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- geometry
def _affine(linear, offset=(10.0, -20.0, 5.0)):
    a = np.eye(4)
    a[:3, :3] = linear
    a[:3, 3] = offset
    return a


def test_axial_and_anisotropic():
    assert np.allclose(b0_dir_from_affine(np.eye(4)), (0, 0, 1))
    a = _affine(np.diag([0.5, 0.6, 2.0]))
    assert np.allclose(b0_dir_from_affine(a), (0, 0, 1))
    assert np.allclose(voxel_size_from_affine(a), (0.5, 0.6, 2.0))
    assert angle_to_b0(b0_dir_from_affine(a)) == pytest.approx(0.0)


def test_flipped_axes():
    # LAS storage (x flipped, common for FSL/ DICOM converters): B0 unchanged in voxel coords
    las = _affine(np.diag([-0.9, 0.9, 1.5]))
    assert np.allclose(b0_dir_from_affine(las), (0, 0, 1))
    assert np.allclose(voxel_size_from_affine(las), (0.9, 0.9, 1.5))
    # slices stored inferior-to-superior reversed: B0 points along -z in voxel coordinates
    assert np.allclose(b0_dir_from_affine(_affine(np.diag([1.0, 1.0, -2.0]))), (0, 0, -1))


def test_permuted_axes():
    # coronal storage: voxel axes (R, S, A) -> B0 (world S) is voxel axis 1
    coronal = _affine(np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]) @ np.diag([1, 1.2, 3]))
    assert np.allclose(b0_dir_from_affine(coronal), (0, 1, 0))
    assert np.allclose(voxel_size_from_affine(coronal), (1, 1.2, 3))
    # sagittal storage: voxel axes (A, S, R) -> B0 is voxel axis 1 as well; (S, A, R) -> 0
    sag = _affine(np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]))
    assert np.allclose(b0_dir_from_affine(sag), (0, 1, 0))
    sag2 = _affine(np.array([[0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]]))
    assert np.allclose(b0_dir_from_affine(sag2), (1, 0, 0))


def test_oblique():
    rot = rotation_matrix((1, 0, 0), np.radians(20))
    a = _affine(rot @ np.diag([0.8, 0.8, 2.0]))
    b = b0_dir_from_affine(a)
    # world z seen in the rotated voxel frame: R^T e_z = (0, sin 20, cos 20)
    assert np.allclose(b, (0, np.sin(np.radians(20)), np.cos(np.radians(20))))
    assert angle_to_b0(b) == pytest.approx(20.0)
    assert np.allclose(voxel_size_from_affine(a), (0.8, 0.8, 2.0))
    # oblique, flipped and anisotropic at once, for random rotations
    rng = np.random.default_rng(3)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        vox = rng.uniform(0.5, 3.0, 3) * rng.choice([-1, 1], 3)
        a = _affine(q @ np.diag(vox))
        b = b0_dir_from_affine(a)
        assert np.linalg.norm(b) == pytest.approx(1.0)
        assert np.allclose(b, np.sign(vox) * (q.T @ (0, 0, 1)))
        # mapped back through the voxel axes it is world +z again
        axes = a[:3, :3] / np.abs(vox)
        assert np.allclose(axes @ b, (0, 0, 1))
        assert np.allclose(voxel_size_from_affine(a), np.abs(vox))


def test_b0_world_override():
    a = _affine(rotation_matrix((0, 1, 0), np.radians(30)))
    assert np.allclose(b0_dir_from_affine(a, b0_world=(0, 0, -2)), -b0_dir_from_affine(a))
    assert np.allclose(b0_dir_from_affine(np.eye(4), b0_world=(1, 1, 0)),
                       (1 / np.sqrt(2), 1 / np.sqrt(2), 0))


def test_geometry_errors():
    with pytest.raises(InputError, match="Fix:"):
        b0_dir_from_affine(np.diag([1.0, 0.0, 1.0, 1.0]))  # zero voxel size
    with pytest.raises(InputError):
        b0_dir_from_affine(_affine([[1.0, 1.0, 0], [0, 0, 0], [0, 0, 1.0]]))  # parallel axes
    with pytest.raises(InputError):
        b0_dir_from_affine(np.eye(4), b0_world=(0, 0, 0))
    with pytest.raises(InputError):
        normalize_b0_dir((0, 0, 0))
    with pytest.raises(InputError):
        normalize_b0_dir((0, np.nan, 1))
    with pytest.raises(InputError):
        normalize_b0_dir((0, 1))
    for bad in [(1, -1, 1), (1, 0, 1), (1, np.inf, 1), (1, 2)]:
        with pytest.raises(InputError):
            normalize_voxel_size(bad)
    assert np.allclose(normalize_voxel_size(0.7), (0.7, 0.7, 0.7))
    assert np.allclose(normalize_b0_dir((0, 3, 4)), (0, 0.6, 0.8))


def test_rotation_matrix():
    r = rotation_matrix((0, 0, 1), np.pi / 2)
    assert np.allclose(r @ (1, 0, 0), (0, 1, 0))  # right-handed
    q = rotation_matrix((1, 2, 3), 0.7)
    assert np.allclose(q @ q.T, np.eye(3)) and np.linalg.det(q) == pytest.approx(1.0)
    assert np.allclose(q @ normalize_b0_dir((1, 2, 3)), normalize_b0_dir((1, 2, 3)))
    assert angle_to_b0((0, 1, 1)) == pytest.approx(45.0)
    assert angle_to_b0((0, 0, -1)) == pytest.approx(0.0)  # a direction, not an arrow


def test_field_does_not_depend_on_storage_order():
    """The same object stored in two voxel orders (RAS, and with the first two axes swapped
    and one flipped, plus an oblique rotation in both) gives the same field once the B0
    direction and voxel size are read from each file's affine."""
    rng = np.random.default_rng(7)
    shape, vox = (10, 8, 6), (0.9, 1.2, 2.0)
    chi = torch.tensor(rng.normal(size=shape))
    a1 = _affine(rotation_matrix((1, 1, 0), np.radians(25)) @ np.diag(vox))
    # chi2[i, j, k] = chi[N0 - 1 - j, i, k]
    chi2 = chi.flip(0).permute(1, 0, 2)
    m = np.array([[0, -1, 0, shape[0] - 1], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    a2 = a1 @ m
    fields = []
    for c, a in ((chi, a1), (chi2, a2)):
        op = DipoleOperator(c.shape, voxel_size_from_affine(a), b0_dir_from_affine(a),
                            padding=2, dtype=torch.float64)
        fields.append(op.forward(c))
    assert torch.allclose(fields[1], fields[0].flip(0).permute(1, 0, 2), atol=1e-12)
    # the test can fail: ignoring the affine (B0 along voxel z) gives another field
    naive = DipoleOperator(chi2.shape, voxel_size_from_affine(a2), (0, 0, 1), padding=2,
                           dtype=torch.float64).forward(chi2)
    assert not torch.allclose(naive, fields[0].flip(0).permute(1, 0, 2), atol=1e-3)
