"""The shipped default model (dlqsm/assets/default_model): files, metadata, use by `dlqsm infer`
without --checkpoint, and -- on a held-out simulated head -- better than TV-ADMM."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from dlqsm.cli.main import main
from dlqsm.inference import DEFAULT_MODEL_DIR, Predictor, default_model_installed
from dlqsm.models import InversionResidualNet, load_model

pytestmark = pytest.mark.skipif(not default_model_installed(),
                                reason="no default model in dlqsm/assets/default_model")


def test_default_model_files_and_metadata():
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"model.pt", "metadata.json"} <= set(files)
    assert sum(files.values()) < 20 * 2 ** 20  # the size limit
    meta = json.loads((DEFAULT_MODEL_DIR / "metadata.json").read_text())
    assert meta["units"]["output"].startswith("susceptibility, ppm")
    # trained on TV estimates with the per-scan weight, which inference then uses too
    assert meta["input_normalization"]["initial_estimate"] == {"method": "tv",
                                                              "params": {"alpha": "auto"}}
    geo = meta["training_geometry"]  # trained on several voxel sizes and B0 tilts
    assert max(geo["voxel_size_min"]) <= 1.0 <= min(geo["voxel_size_max"])
    assert geo["b0_tilt_deg_max"] > 20
    assert meta["name"].startswith("dlqsm-default") and "brains_model" in meta["config"]["tags"]
    net, meta2 = load_model(DEFAULT_MODEL_DIR)
    assert isinstance(net, InversionResidualNet) and net.method == "tv"
    assert net.params == {"alpha": "auto"}
    assert meta2["global_step"] == meta["global_step"] > 1000
    assert all(torch.isfinite(p).all() for p in net.parameters())


def _head(seed=1_000_000, shape=(164, 205, 205)):
    from dlqsm.evaluation.cases import simulated_heads

    return simulated_heads(1, shape=shape, seed=seed)[0]


def test_infer_without_checkpoint_uses_the_default_model(tmp_path):
    case = _head(shape=(48, 56, 48))
    aff = case.affine
    nib.save(nib.Nifti1Image(case.local_field, aff), tmp_path / "lf.nii.gz")
    nib.save(nib.Nifti1Image(case.mask.astype(np.uint8), aff), tmp_path / "mask.nii.gz")
    out = tmp_path / "out"
    assert main(["infer", "--local-field", str(tmp_path / "lf.nii.gz"), "--mask",
                 str(tmp_path / "mask.nii.gz"), "-o", str(out), "-q"]) == 0
    img = nib.load(out / "chimap.nii.gz")
    np.testing.assert_allclose(img.affine, aff, atol=1e-6)
    chi = np.asarray(img.dataobj)
    assert np.isfinite(chi).all() and np.abs(chi[case.mask]).max() < 2.0  # ppm, not ppb
    record = json.loads((out / "record.json").read_text())
    assert "default_model" in json.dumps(record)


@pytest.mark.slow
def test_default_model_beats_tv_on_a_held_out_head():
    """The issue's target on one adult-sized held-out head (seed >= 10^6, true local field)."""
    from dlqsm.metrics.functional import nrmse, xsim
    from dlqsm.pipeline.inversion import invert

    case = _head()
    field = torch.from_numpy(case.local_field)
    mask = torch.from_numpy(case.mask)
    ref = torch.from_numpy(case.reference)
    tv = invert(field, mask, method="tv").chi
    chi = torch.as_tensor(Predictor(device="cpu").predict(case.local_field, case.mask,
                                                          voxel_size=case.voxel_size,
                                                          b0_dir=case.b0_dir))
    e_tv, e_net = float(nrmse(tv, ref, mask)), float(nrmse(chi, ref, mask))
    x_tv, x_net = float(xsim(tv, ref, mask)), float(xsim(chi, ref, mask))
    assert math.isfinite(e_net) and e_net < e_tv, (e_net, e_tv)
    assert x_net > x_tv, (x_net, x_tv)
