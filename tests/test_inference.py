"""Predictor: B0 rotation and voxel-size resampling, tiling, referencing, errors.

The geometry tests use physics stand-ins for trained networks: ``AxialDipole`` applies the
dipole kernel for B0 along +z at 1 mm (an exact, well-conditioned operator whose output depends
on B0 being along z) and ``AxialTKD`` its thresholded inverse. Resampling is right when the
stand-in run on an oblique / anisotropic scan reproduces the same operator built directly with
the scan's B0 direction and voxel size; each test also checks that skipping the resampling
would be far off, so it can fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dlqsm.errors import InputError
from dlqsm.inference import (
    GridResampler,
    ModelSpec,
    Predictor,
    plan_geometry,
    resolve_checkpoint,
    rotation_to_axis,
)
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.geometry import rotation_matrix

Z = np.array([0.0, 0.0, 1.0])


def oblique(angle_deg, axis=(1.0, 0.3, 0.0)):
    return rotation_matrix(axis, np.radians(angle_deg)) @ Z


def centred_grid(shape, vox):
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vox, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1)


def smooth_phantom(shape, vox, seed=0, radius=18.0):
    """Gaussian blobs (ppm) well inside the grid and a spherical mask of ``radius`` mm."""
    rng = np.random.default_rng(seed)
    g = centred_grid(shape, vox)
    chi = np.zeros(shape, np.float32)
    for _ in range(12):
        c, s, a = rng.uniform(-7, 7, 3), rng.uniform(3, 4.5), rng.uniform(-0.1, 0.1)
        chi += (a * np.exp(-((g - c) ** 2).sum(-1) / (2 * s * s))).astype(np.float32)
    mask = ((g ** 2).sum(-1) < radius ** 2).astype(np.float32)
    return chi, mask


def dipole(chi, vox, b0, padding=16):
    return DipoleOperator(chi.shape, vox, b0, padding=padding).forward(torch.tensor(chi)).numpy()


def nrmse(a, b, m):
    a, b = a[m > 0] - a[m > 0].mean(), b[m > 0] - b[m > 0].mean()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class AxialDipole(nn.Module):
    """Stand-in network: the dipole field for B0 along +z at 1 mm (ignores the geometry)."""

    def forward(self, field, mask=None, b0_dir=None, voxel_size=None):
        return DipoleOperator(field.shape[-3:], (1, 1, 1), Z, padding=16,
                              device=field.device).forward(field)


class AxialTKD(nn.Module):
    """Stand-in network: thresholded k-space division for B0 along +z at 1 mm."""

    def __init__(self, geometry_aware=False, threshold=0.15):
        super().__init__()
        self.b0_aware = self.resolution_aware = geometry_aware
        self.threshold = threshold

    def forward(self, field, mask=None, b0_dir=None, voxel_size=None):
        b0, vox = Z, (1, 1, 1)
        if self.b0_aware:
            b0, vox = b0_dir[0].cpu().numpy(), voxel_size[0].cpu().numpy()
        op = DipoleOperator(field.shape[-3:], vox, b0, padding=8, device=field.device)
        k = op.kernel
        inv = 1 / torch.where(k.abs() > self.threshold, k,
                              torch.where(k >= 0, 1.0, -1.0) * self.threshold)
        return op.apply_kspace(field, torch.where(k == 0, 0.0, inv)) * mask


class Pointwise(nn.Module):
    """A 1x1x1 convolution (receptive field one voxel): tiling must not change its output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 1, 1)

    def forward(self, field, mask=None):
        return self.conv(torch.cat([field, mask], 1))


def test_rotation_to_axis_takes_b0_to_the_axis_by_at_most_90_degrees():
    rng = np.random.default_rng(1)
    for _ in range(20):
        b = rng.normal(size=3)
        b /= np.linalg.norm(b)
        r = rotation_to_axis(b, Z)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        np.testing.assert_allclose(r @ (b * np.sign(b[2])), Z, atol=1e-12)
        assert np.trace(r) >= 1 - 1e-9  # rotation angle <= 90 degrees
    np.testing.assert_allclose(rotation_to_axis(-Z), np.eye(3))


def test_resampler_round_trip_keeps_a_smooth_volume():
    vox = (0.9, 1.0, 1.6)
    shape = (44, 40, 26)
    chi, mask = smooth_phantom(shape, vox)
    rs = GridResampler(shape, vox, (1, 1, 1), rotation_to_axis(oblique(40)))
    assert not rs.is_identity
    x = torch.tensor(chi)[None, None]
    back = rs.to_scan(rs.to_model(x))[0, 0].numpy()
    assert nrmse(back, chi, mask) < 0.05  # two trilinear interpolations, 1.6 mm voxels
    assert GridResampler(shape, vox, vox).is_identity


@pytest.mark.parametrize("angle", [25, 60, 90, 150])
def test_oblique_b0_is_resampled_to_the_models_axis(angle):
    shape, vox = (40, 40, 40), (1.0, 1.0, 1.0)
    chi, mask = smooth_phantom(shape, vox)
    b0 = oblique(angle)
    direct = dipole(chi, vox, b0)  # the same operator built for the oblique B0
    pred = Predictor.from_module(AxialDipole(), {"voxel_size": [1, 1, 1]}, tile=False)
    out = pred.run(chi, mask, voxel_size=vox, b0_dir=b0)
    assert out.info["resampled"]
    assert nrmse(out.chi, direct, mask) < 0.06  # two trilinear interpolations: ~0.04
    naive = dipole(chi, vox, Z)  # what the network computes without the rotation
    assert nrmse(naive, direct, mask) > 0.3


def test_oblique_tkd_standin_matches_the_axial_case():
    """A z-only TKD on an oblique scan ~ the same TKD on the axial scan of the same object."""
    shape, vox = (40, 40, 40), (1.0, 1.0, 1.0)
    chi, mask = smooth_phantom(shape, vox)
    b0 = oblique(35)
    pred = Predictor.from_module(AxialTKD(), {}, tile=False)
    axial = pred.predict(dipole(chi, vox, Z) * mask, mask, voxel_size=vox, b0_dir=Z)
    obl = pred.predict(dipole(chi, vox, b0) * mask, mask, voxel_size=vox, b0_dir=b0)
    aware = Predictor.from_module(AxialTKD(geometry_aware=True), {}, tile=False)
    exact = aware.predict(dipole(chi, vox, b0) * mask, mask, voxel_size=vox, b0_dir=b0)
    naive = aware.predict(dipole(chi, vox, b0) * mask, mask, voxel_size=vox, b0_dir=Z)
    err_axial, err_obl = nrmse(axial, chi, mask), nrmse(obl, chi, mask)
    assert err_obl < err_axial + 0.05
    assert nrmse(obl, exact, mask) < 0.1
    assert nrmse(naive, chi, mask) > 2 * err_obl


@pytest.mark.parametrize("vox", [(1.0, 1.0, 2.0), (0.7, 0.8, 1.5)])
def test_voxel_size_is_resampled_to_the_training_resolution(vox):
    shape = tuple(int(round(40 / v)) for v in vox)
    chi, mask = smooth_phantom(shape, vox)
    b0 = oblique(30)
    direct = dipole(chi, vox, b0)
    pred = Predictor.from_module(AxialDipole(), {"voxel_size": [1, 1, 1]}, tile=False)
    out = pred.run(chi, mask, voxel_size=vox, b0_dir=b0)
    assert out.info["network_voxel_size_mm"] == [1.0, 1.0, 1.0]
    assert nrmse(out.chi, direct, mask) < 0.06
    naive = dipole(chi, (1, 1, 1), b0)  # the kernel the network assumes without resampling
    assert nrmse(naive, direct, mask) > 0.3


def test_anisotropic_tkd_standin_matches_isotropic_case():
    vox = (1.0, 1.0, 2.0)
    chi, mask = smooth_phantom((40, 40, 20), vox)
    iso = Predictor.from_module(AxialTKD(), {"voxel_size": [1, 1, 1]}, tile=False)
    aware = Predictor.from_module(AxialTKD(geometry_aware=True), {}, tile=False)
    field = dipole(chi, vox, Z) * mask
    resampled = iso.predict(field, mask, voxel_size=vox, b0_dir=Z)
    exact = aware.predict(field, mask, voxel_size=vox, b0_dir=Z)
    naive = aware.predict(field, mask, voxel_size=(1, 1, 1), b0_dir=Z)
    assert nrmse(resampled, exact, mask) < 0.15
    assert nrmse(naive, chi, mask) > nrmse(resampled, chi, mask) + 0.1


def test_geometry_aware_model_gets_b0_and_voxel_size_without_resampling():
    vox, b0 = (1.0, 1.0, 1.5), oblique(50)
    chi, mask = smooth_phantom((36, 36, 24), vox)
    net = AxialTKD(geometry_aware=True)
    out = Predictor.from_module(net, {}, tile=False).run(dipole(chi, vox, b0) * mask, mask,
                                                          voxel_size=vox, b0_dir=b0)
    assert not out.info["resampled"]
    np.testing.assert_allclose(out.info["network_b0_dir"], b0, atol=1e-6)
    assert nrmse(out.chi, chi, mask) < 0.6


def test_uses_geometry_flag_of_dlqsm_models_is_honoured():
    class Geo(nn.Module):
        def input_normalization(self):
            return {"uses_geometry": True}

    assert ModelSpec.from_metadata({}, Geo()).b0_aware
    assert not ModelSpec.from_metadata({}, nn.Identity()).b0_aware
    plan = plan_geometry(ModelSpec(b0_aware=True, resolution_aware=True), (8, 8, 8),
                         (1, 1, 2), oblique(30))
    assert plan.resampler.is_identity


def test_sliding_window_equals_whole_volume_for_a_pointwise_network():
    chi, mask = smooth_phantom((37, 30, 27), (1, 1, 1))
    net = Pointwise()
    net.conv.weight.data[:] = torch.tensor([2.0, 0.3]).view(1, 2, 1, 1, 1)
    whole = Predictor.from_module(net, {}, tile=False).run(chi, mask, voxel_size=1, b0_dir=Z)
    tiled = Predictor.from_module(net, {}, tile=True, roi_size=16, overlap=0.25).run(
        chi, mask, voxel_size=1, b0_dir=Z)
    assert whole.info["mode"] == "whole-volume"
    assert tiled.info["mode"] == "sliding-window" and tiled.info["roi_size"] == [16, 16, 16]
    expected = (2 * chi - 2 * chi[mask > 0].mean()) * mask  # the bias and mask term cancel
    np.testing.assert_allclose(whole.chi, expected, atol=1e-6)
    np.testing.assert_allclose(tiled.chi, whole.chi, atol=1e-6)


def test_memory_estimate_chooses_tiling():
    chi, mask = smooth_phantom((24, 24, 24), (1, 1, 1))
    net = Pointwise()
    roomy = Predictor.from_module(net, {}, memory_fraction=0.5)
    assert roomy.run(chi, mask, voxel_size=1, b0_dir=Z).info["mode"] == "whole-volume"
    tight = Predictor.from_module(net, {}, memory_fraction=1e-12, roi_size=16)
    info = tight.run(chi, mask, voxel_size=1, b0_dir=Z).info
    assert info["mode"] == "sliding-window"
    assert info["estimated_whole_volume_gib"] > info["memory_budget_gib"]
    est = roomy.memory_estimate((64, 64, 64))
    assert est["whole_volume_bytes"] == pytest.approx(est["bytes_per_voxel"] * 64 ** 3)


def test_output_is_referenced_masked_and_typed_like_the_input():
    chi, mask = smooth_phantom((24, 24, 24), (1, 1, 1), radius=9)
    pred = Predictor.from_module(Pointwise(), {}, tile=False)
    out = pred.predict(chi, mask, voxel_size=1, b0_dir=Z)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert abs(out[mask > 0].mean()) < 1e-6
    assert np.all(out[mask == 0] == 0)
    t = pred.predict(torch.tensor(chi), torch.tensor(mask), voxel_size=1, b0_dir=Z)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), out, atol=1e-6)


def test_geometry_from_affine():
    vox, b0 = np.array([1.0, 1.0, 1.5]), oblique(30)
    chi, mask = smooth_phantom((30, 30, 20), vox)
    field = dipole(chi, vox, b0) * mask
    # an affine whose voxel axes are rotated so that world +z is b0 in voxel coordinates
    rot = rotation_to_axis(b0, Z)  # rot @ b0 = z  ->  voxel axes = columns of rot
    affine = np.eye(4)
    affine[:3, :3] = rot * vox
    pred = Predictor.from_module(AxialDipole(), {}, tile=False)
    a = pred.predict(field, mask, affine=affine)
    b = pred.predict(field, mask, voxel_size=vox, b0_dir=b0)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bad_inputs_raise_input_errors(tmp_path):
    pred = Predictor.from_module(Pointwise(), {}, tile=False)
    vol = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(InputError, match="different grids"):
        pred.predict(vol, np.ones((8, 8, 7)), voxel_size=1, b0_dir=Z)
    with pytest.raises(InputError, match="mask is empty"):
        pred.predict(vol, vol, voxel_size=1, b0_dir=Z)
    with pytest.raises(InputError, match="B0 direction is unknown"):
        pred.predict(vol, vol + 1, voxel_size=1)
    with pytest.raises(InputError, match="3D"):
        pred.predict(np.zeros((8, 8, 8, 2)), np.ones((8, 8, 8, 2)), voxel_size=1, b0_dir=Z)
    bad = vol.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        pred.predict(bad, vol + 1, voxel_size=1, b0_dir=Z)
    with pytest.raises(InputError, match="checkpoint does not exist"):
        resolve_checkpoint(tmp_path / "nope.ckpt")


def test_missing_default_model_names_the_flag(monkeypatch, tmp_path):
    import dlqsm.models.loading as loading

    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(InputError, match="--checkpoint"):
        Predictor()


@pytest.mark.gpu
def test_cuda_matches_cpu():
    chi, mask = smooth_phantom((32, 32, 32), (1, 1, 1))
    b0 = oblique(30)
    cpu = Predictor.from_module(AxialDipole(), {}, device="cpu", tile=False)
    gpu = Predictor.from_module(AxialDipole(), {}, device="cuda", tile=False)
    a = cpu.predict(chi, mask, voxel_size=1, b0_dir=b0)
    b = gpu.predict(chi, mask, voxel_size=1, b0_dir=b0)
    np.testing.assert_allclose(a, b, atol=1e-5)
    t = gpu.predict(torch.tensor(chi, device="cuda"), torch.tensor(mask, device="cuda"),
                    voxel_size=1, b0_dir=b0)
    assert t.is_cuda


def save_tiny_checkpoint(path, metadata=None):
    """A checkpoint in the layout ``dlqsm train`` writes (``checkpoint["dlqsm"]``), untrained."""
    from dlqsm.models import build_from_config

    cfg = {"_target_": "dlqsm.models.NormalizedNet", "pad_multiple": 16,
           "backbone": {"_target_": "monai.networks.nets.BasicUNet", "spatial_dims": 3,
                        "in_channels": 1, "out_channels": 1, "features": [4, 4, 4, 4, 4, 4]}}
    net = build_from_config(cfg)
    meta = {"format": "dlqsm-model/1", "network": "NormalizedNet",
            "input_normalization": net.input_normalization(),
            "training_geometry": {"voxel_size_min": [1, 1, 1], "voxel_size_max": [1, 1, 1],
                                  "shapes": [[32, 32, 32]]}, **(metadata or {})}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "dlqsm": {"net_config": cfg, "state_dict_prefix": "net.", "metadata": meta}},
               path)
    return net


def test_predictor_loads_a_dlqsm_checkpoint(tmp_path):
    net = save_tiny_checkpoint(tmp_path / "tiny.ckpt")
    pred = Predictor(tmp_path / "tiny.ckpt", device="cpu")
    assert pred.spec.name == "NormalizedNet" and not pred.spec.b0_aware
    assert pred.spec.pad_multiple == 16 and pred.spec.roi_size == (32, 32, 32)
    chi, mask = smooth_phantom((30, 28, 20), (1, 1, 1), radius=9)
    out = pred.run(chi, mask, voxel_size=1, b0_dir=Z)
    with torch.no_grad():
        ref = net.eval()(torch.tensor(chi * mask)[None, None], torch.tensor(mask)[None, None])
    ref = ref[0, 0].numpy()
    ref = (ref - ref[mask > 0].mean()) * mask
    np.testing.assert_allclose(out.chi, ref, atol=1e-5)
    assert out.info["checkpoint"].endswith("tiny.ckpt")


def test_spec_reads_training_geometry_ranges():
    meta = {"training_geometry": {"voxel_size_min": [0.6, 0.6, 0.6],
                                  "voxel_size_max": [2.0, 2.0, 2.0]},
            "input_normalization": {"uses_geometry": False, "pad_multiple": 8}}
    spec = ModelSpec.from_metadata(meta)
    assert spec.voxel_range is not None and spec.pad_multiple == 8
    np.testing.assert_allclose(spec.target_voxel_size((0.8, 0.8, 1.2)), (0.8, 0.8, 1.2))
    np.testing.assert_allclose(spec.target_voxel_size((0.3, 0.8, 3.0)), (0.6, 0.8, 2.0))
    fixed = ModelSpec.from_metadata({"training_geometry": {"voxel_size_min": [1, 1, 1],
                                                           "voxel_size_max": [1, 1, 1]}})
    np.testing.assert_allclose(fixed.target_voxel_size((0.5, 0.5, 2)), (1, 1, 1))
    assert ModelSpec.from_metadata({"input_normalization": {"uses_geometry": True}}).b0_aware
    # an explicit voxel_range narrows the training geometry's
    narrow = ModelSpec.from_metadata({**meta, "voxel_range": [[0.8] * 3, [1.2] * 3]})
    np.testing.assert_allclose(narrow.target_voxel_size((1.0, 1.0, 2.0)), (1.0, 1.0, 1.2))
    np.testing.assert_allclose(spec.target_voxel_size((1.0, 1.0, 2.0)), (1.0, 1.0, 2.0))


@pytest.mark.gpu
def test_cuda_amp_and_memory_estimate(tmp_path):
    save_tiny_checkpoint(tmp_path / "tiny.ckpt")
    chi, mask = smooth_phantom((40, 36, 32), (1, 1, 1), radius=12)
    full = Predictor(tmp_path / "tiny.ckpt", device="cuda", tile=False)
    half = Predictor(tmp_path / "tiny.ckpt", device="cuda", tile=False, amp=True)
    a = full.predict(chi, mask, voxel_size=1, b0_dir=Z)
    b = half.predict(chi, mask, voxel_size=1, b0_dir=Z)
    assert half.amp and b.dtype == np.float32
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max() + 1e-6
    est = full.memory_estimate((40, 36, 32))
    assert 0 < est["whole_volume_bytes"] < est["budget_bytes"]


def test_exported_model_serves_as_the_default(tmp_path, monkeypatch):
    import dlqsm.models.loading as loading
    from dlqsm.models.loading import export_model

    save_tiny_checkpoint(tmp_path / "tiny.ckpt")
    export_model(tmp_path / "tiny.ckpt", tmp_path / "default_model")
    monkeypatch.setattr(loading, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    chi, mask = smooth_phantom((24, 20, 22), (1, 1, 1), radius=8)
    a = Predictor(device="cpu").predict(chi, mask, voxel_size=1, b0_dir=Z)
    b = Predictor(tmp_path / "tiny.ckpt", device="cpu").predict(chi, mask, voxel_size=1,
                                                                 b0_dir=Z)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert Predictor(device="cpu").checkpoint.startswith(str(tmp_path / "default_model"))


def test_resampling_keeps_the_whole_mask_covered():
    """QSM is scored over the whole mask: no rim voxel may be lost by the resampling."""

    class Ones(nn.Module):
        def forward(self, field, mask=None):
            return torch.ones_like(field) * mask

    chi, mask = smooth_phantom((40, 40, 30), (1, 1, 1.5), radius=14)
    out = Predictor.from_module(Ones(), {}, tile=False).run(chi, mask, voxel_size=(1, 1, 1.5),
                                                             b0_dir=oblique(35))
    assert out.info["resampled"] and out.info["uncovered_mask_voxels"] == 0
    np.testing.assert_allclose(out.chi[mask > 0], 0, atol=1e-5)  # 1 everywhere, minus its mean
