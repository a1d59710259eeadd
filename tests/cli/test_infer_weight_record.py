"""``dlqsm infer`` records the TV weight its model's initial estimate used, as reconstruct does."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from dlqsm.cli.main import main
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.geometry import b0_dir_from_affine, rotation_matrix
from dlqsm.pipeline.inversion import regularization
from tests.cli.test_infer_cli import save_tiny_checkpoint, tiny_residual_config

SHAPE = (32, 34, 30)
VOXEL = (1.5, 1.5, 2.0)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 32^3-ish local field of two spheres (B0 tilted 15 deg in the affine) plus noise."""
    d = tmp_path_factory.mktemp("weight_record")
    aff = np.eye(4)
    aff[:3, :3] = rotation_matrix([1, 0, 0], math.radians(15.0)) * np.array(VOXEL)
    idx = np.indices(SHAPE).astype(np.float32) - (np.array(SHAPE)[:, None, None, None] - 1) / 2
    r = np.sqrt(((idx * np.array(VOXEL)[:, None, None, None]) ** 2).sum(0))
    mask = r < 22.0
    chi = np.zeros(SHAPE, np.float32)
    for c, v in (((4, 0, 0), 0.1), ((-5, 3, 2), -0.05)):
        off = (idx - np.array(c)[:, None, None, None]) * np.array(VOXEL)[:, None, None, None]
        chi[np.sqrt((off ** 2).sum(0)) < 6.0] = v
    op = DipoleOperator(SHAPE, VOXEL, b0_dir_from_affine(aff), padding=8)
    field = op.forward(torch.from_numpy(chi)).numpy()
    field = field + np.random.default_rng(0).normal(0, 3e-3, SHAPE)
    nib.save(nib.Nifti1Image((field * mask).astype(np.float32), aff), str(d / "lf.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), str(d / "mask.nii.gz"))
    # a model of the shipped model's design (TV + U-Net correction) trained with TV's fixed
    # weight: the test does not depend on the shipped model's settings
    save_tiny_checkpoint(d / "res.ckpt", voxel_mm=VOXEL, cfg=tiny_residual_config())
    return d, aff


def _infer(d, out, *extra):
    return main(["infer", "--local-field", str(d / "lf.nii.gz"), "--mask",
                 str(d / "mask.nii.gz"), "-o", str(out), "--device", "cpu", "-q",
                 "--checkpoint", str(d / "res.ckpt"), *extra])


def test_recorded_auto_weight_is_the_one_gcv_chooses_and_computed_once(scan, tmp_path,
                                                                        monkeypatch):
    d, aff = scan
    calls = []
    original = regularization.auto_tv_alpha

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(regularization, "auto_tv_alpha", counting)
    assert _infer(d, tmp_path / "auto", "--estimate-weight", "auto") == 0
    assert len(calls) == 1  # the GCV weight was chosen once; the record carries it out
    monkeypatch.setattr(regularization, "auto_tv_alpha", original)

    inf = json.loads((tmp_path / "auto" / "record.json").read_text())["inference"]
    assert inf["initial_estimate_params"] == {"alpha": "auto"}
    est = inf["initial_estimate_info"]
    field = torch.from_numpy(nib.load(str(d / "lf.nii.gz")).get_fdata(dtype=np.float32))
    mask = torch.from_numpy(nib.load(str(d / "mask.nii.gz")).get_fdata() > 0.5)
    alpha, record = regularization.auto_tv_alpha(field * mask, mask, voxel_size=VOXEL,
                                                 b0_dir=tuple(b0_dir_from_affine(aff)))
    aw = est["auto_weight"]
    assert est["method"] == "tv" and est["parameters"]["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert aw["value"] == pytest.approx(alpha, rel=1e-9) and aw["parameter"] == "alpha"
    assert aw["lam_gcv_mm2"] == pytest.approx(record["lam_gcv_mm2"], rel=1e-9)
    assert aw["rule"] == record["rule"] and aw["criterion"] == "gcv"
    assert aw["gcv_noise_ppm"] == pytest.approx(record["gcv_noise_ppm"], rel=1e-6)
    assert aw["field_noise_ppm"] == pytest.approx(record["field_noise_ppm"], rel=1e-6)
    assert len(aw["curve"]) == len(record["curve"])
    # the noise makes the choice differ from the trained weight, inside the clipping range
    assert not aw["clipped"] and abs(alpha / regularization.TV_ALPHA_FIXED - 1) > 0.2
    assert est["b0_dir"] == pytest.approx(list(b0_dir_from_affine(aff)), abs=1e-6)
    assert est["voxel_size"] == pytest.approx(list(VOXEL))
    # and the console line says which weight the model's estimate took
    from dlqsm.cli.infer import estimate_summary

    assert estimate_summary(est) == (f"initial estimate: tv alpha {alpha:.2g} chosen for this "
                                     "scan (gcv, record.json)")
    assert estimate_summary(None) is None


def test_trained_weight_is_recorded_without_auto_weight(scan, tmp_path):
    d, _ = scan
    assert _infer(d, tmp_path / "trained", "--estimate-weight", "trained") == 0
    inf = json.loads((tmp_path / "trained" / "record.json").read_text())["inference"]
    est = inf["initial_estimate_info"]
    assert inf["initial_estimate_params"] == "as trained"
    assert est["parameters"]["alpha"] == regularization.TV_ALPHA_FIXED
    assert "auto_weight" not in est and est["iterations"] >= 1
    from dlqsm.cli.infer import estimate_summary

    assert estimate_summary(est) == "initial estimate: tv alpha 0.0003 as trained"
