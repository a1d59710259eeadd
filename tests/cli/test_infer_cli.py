"""``dlqsm infer`` end to end on tiny local-field / total-field inputs with an untrained net."""

import argparse
import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from dlqsm.cli import infer as cli
from dlqsm.cli.main import main
from dlqsm.inference import Predictor
from dlqsm.inference.predictor import estimate_params
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.geometry import b0_dir_from_affine, rotation_matrix

SHAPE = (20, 22, 18)
TILT = 20.0  # degrees between B0 and the voxel z axis


def _affine(tilt=TILT):
    a = np.eye(4)
    a[:3, :3] = rotation_matrix([1, 0, 0], math.radians(tilt)) * np.array([1.0, 1.0, 1.5])
    a[:3, 3] = [-10, -11, -13]
    return a


def _phantom(affine):
    idx = np.indices(SHAPE).astype(np.float32) - (np.array(SHAPE)[:, None, None, None] - 1) / 2
    mask = np.sqrt((idx ** 2).sum(0)) < 7.5
    chi = np.zeros(SHAPE, np.float32)
    chi[np.sqrt(((idx - np.array([3, 0, 0])[:, None, None, None]) ** 2).sum(0)) < 2.5] = 0.1
    op = DipoleOperator(SHAPE, (1, 1, 1.5), b0_dir_from_affine(affine), padding=8)
    return chi, mask, op.forward(torch.from_numpy(chi)).numpy().astype(np.float32)


def tiny_residual_config(params=None):
    """Network config of a tiny TV + U-Net residual model (the shipped model's design; gain 0
    untrained, so its output is its TV estimate) with TV parameters ``params``."""
    return {"_target_": "dlqsm.models.InversionResidualNet", "method": "tv",
            "params": dict(params or {}), "pad_multiple": 2,
            "backbone": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3,
                         "in_channels": 2, "out_channels": 1, "channels": [4, 8],
                         "strides": [2], "num_res_units": 0}}


def save_tiny_checkpoint(path, voxel_mm=1.0, cfg=None):
    """An untrained checkpoint in the layout ``dlqsm train`` writes (``checkpoint["dlqsm"]``):
    a tiny U-Net (``NormalizedNet``) unless ``cfg`` gives another network config; trained, as
    the metadata says, at ``voxel_mm`` (one or three values)."""
    from dlqsm.models import build_from_config

    cfg = cfg or {"_target_": "dlqsm.models.NormalizedNet", "pad_multiple": 2,
                  "backbone": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3,
                               "in_channels": 1, "out_channels": 1, "channels": [4, 8],
                               "strides": [2], "num_res_units": 0}}
    net = build_from_config(cfg)
    vox = [float(v) for v in np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))]
    meta = {"format": "dlqsm-model/1", "network": cfg["_target_"].rsplit(".", 1)[-1],
            "input_normalization": net.input_normalization(),
            "training_geometry": {"voxel_size_min": vox, "voxel_size_max": vox}}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "dlqsm": {"net_config": cfg, "state_dict_prefix": "net.", "metadata": meta}},
               path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("infer")
    aff = _affine()
    chi, mask, field = _phantom(aff)
    nib.save(nib.Nifti1Image(field * mask, aff), str(d / "lf.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), str(d / "mask.nii.gz"))
    # total field: local field plus a smooth background (a linear gradient) inside the brain
    idx = np.indices(SHAPE).astype(np.float32)
    bg = 0.05 * idx[0] / SHAPE[0] - 0.03 * idx[2] / SHAPE[2]
    nib.save(nib.Nifti1Image((field + bg) * mask, aff), str(d / "tf.nii.gz"))
    save_tiny_checkpoint(d / "tiny.ckpt")
    return d, mask


def _run(*argv):
    return main(["infer", *[str(a) for a in argv], "--device", "cpu", "-q"])


def test_local_field_input_writes_chimap_and_record(inputs, tmp_path):
    d, mask = inputs
    out = tmp_path / "out"
    assert _run("--local-field", d / "lf.nii.gz", "--mask", d / "mask.nii.gz", "-o", out,
                "--checkpoint", d / "tiny.ckpt") == 0
    img = nib.load(str(out / "chimap.nii.gz"))
    np.testing.assert_allclose(img.affine, _affine(), atol=1e-5)
    chi = img.get_fdata()
    assert chi.shape == SHAPE and np.all(np.isfinite(chi))
    assert np.all(chi[~mask] == 0) and abs(chi[mask].mean()) < 1e-5
    rec = json.loads((out / "record.json").read_text())
    assert rec["model"]["checkpoint"].endswith("tiny.ckpt")
    assert rec["model"]["metadata"]["network"] == "NormalizedNet"
    assert rec["inference"]["resampled"] and rec["inference"]["rotation_deg"] == pytest.approx(
        TILT, abs=1e-3)
    assert rec["inference"]["network_voxel_size_mm"] == [1.0, 1.0, 1.0]
    assert rec["timings_s"]["network"] > 0 and rec["timings_s"]["total"] > 0
    assert rec["outputs"] == ["chimap.nii.gz", "chimap.png", "record.json"]
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_cli_equals_python_predictor(inputs, tmp_path):
    d, mask = inputs
    out = tmp_path / "out"
    assert _run("--local-field", d / "lf.nii.gz", "--mask", d / "mask.nii.gz", "-o", out,
                "--checkpoint", d / "tiny.ckpt", "--tile", "8", "--overlap", "0.25") == 0
    field = nib.load(str(d / "lf.nii.gz"))
    pred = Predictor(d / "tiny.ckpt", device="cpu", tile=True, roi_size=8, overlap=0.25)
    chi = pred.predict(field.get_fdata().astype(np.float32), mask, affine=field.affine)
    np.testing.assert_allclose(nib.load(str(out / "chimap.nii.gz")).get_fdata(), chi,
                               atol=1e-6)
    rec = json.loads((out / "record.json").read_text())
    assert rec["inference"]["mode"] == "sliding-window"


def test_refuses_to_overwrite_without_force(inputs, tmp_path, capsys):
    d, _ = inputs
    out = tmp_path / "out"
    argv = ("--local-field", d / "lf.nii.gz", "--mask", d / "mask.nii.gz", "-o", out,
            "--checkpoint", d / "tiny.ckpt")
    assert _run(*argv) == 0
    before = (out / "chimap.nii.gz").stat().st_mtime_ns
    assert _run(*argv) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "chimap.nii.gz").stat().st_mtime_ns == before
    assert _run(*argv, "--force") == 0


def test_total_field_input_runs_background_removal(inputs, tmp_path):
    d, mask = inputs
    out = tmp_path / "out"
    assert _run("--total-field", d / "tf.nii.gz", "--mask", d / "mask.nii.gz", "-o", out,
                "--checkpoint", d / "tiny.ckpt", "--bfr", "pdf", "--param", "bfr.max_iter=20",
                "--no-tile") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["chimap.nii.gz", "chimap.png", "localfield.nii.gz", "mask.nii.gz",
                     "record.json"]
    rec = json.loads((out / "record.json").read_text())
    assert rec["field_mapping"]["parameters"]["bfr"]["method"] == "pdf"
    assert "bfr" in rec["timings_s"] and rec["inference"]["mode"] == "whole-volume"


@pytest.mark.parametrize("field, flag, model, fitted_to", [
    ("tf", "auto", "residual", "initial estimate"), ("tf", "auto", "plain", "network output"),
    ("tf", "off", "residual", None), ("lf", "auto", "residual", None)])
def test_detrend_after_dlqsm_background_removal(inputs, tmp_path, field, flag, model,
                                                fitted_to):
    """``--detrend auto``: the background-invisible trends are fitted (to the classical
    estimate a residual model refines, else to the output) and removed when infer removed
    the background itself; not for a given local field or with ``--detrend off``."""
    d, mask = inputs
    ckpt = tmp_path / "m.ckpt"
    save_tiny_checkpoint(ckpt, cfg=tiny_residual_config() if model == "residual" else None)
    out = tmp_path / "out"
    argv = ["--total-field", d / "tf.nii.gz", "--param", "bfr.max_iter=20"] if field == "tf" \
        else ["--local-field", d / "lf.nii.gz"]
    assert _run(*argv, "--mask", d / "mask.nii.gz", "-o", out, "--checkpoint", ckpt,
                "--detrend", flag) == 0
    info = json.loads((out / "record.json").read_text())["inference"]["detrend"]
    assert info["applied"] is (fitted_to is not None)
    if fitted_to:
        assert info["fitted_to"] == fitted_to and info["converged"]
        chi = nib.load(str(out / "chimap.nii.gz")).get_fdata()
        m = nib.load(str(out / "mask.nii.gz")).get_fdata() > 0.5
        assert abs(chi[m].mean()) < 1e-5 and np.all(chi[~m] == 0)


def test_clear_errors(inputs, tmp_path, capsys):
    d, _ = inputs
    out = tmp_path / "out"
    assert _run("--local-field", d / "lf.nii.gz", "--mask", d / "mask.nii.gz", "-o", out,
                "--checkpoint", d / "missing.ckpt") == 2
    assert "checkpoint does not exist" in capsys.readouterr().err
    assert _run("--local-field", d / "lf.nii.gz", "-o", out, "--checkpoint",
                d / "tiny.ckpt") == 2
    assert "mask" in capsys.readouterr().err
    assert _run("--local-field", d / "lf.nii.gz", "--mask", d / "mask.nii.gz", "-o", out,
                "--checkpoint", d / "tiny.ckpt", "--tile", "--no-tile") == 2
    assert not (out / "chimap.nii.gz").exists()


def _option_strings(parser, title):
    group = next(g for g in parser._action_groups if g.title == title)
    return {(a.dest, tuple(a.option_strings), a.nargs) for a in group._group_actions}


def test_input_flags_match_reconstruct():
    from dlqsm.cli import reconstruct

    subs = argparse.ArgumentParser().add_subparsers()
    title = "explicit inputs (override what INPUT provides)"
    ours = _option_strings(cli.add_parser(subs), title)
    theirs = _option_strings(reconstruct.add_parser(subs), title)
    assert ours == theirs


def test_raw_qsmci_input_runs_field_mapping_then_the_network(tmp_path):
    from dlqsm.simulation.head import simulate_head_case

    c = simulate_head_case((24, 30, 26), (7.0, 7.0, 7.0), (0, 0, 1), seed=1000000,
                           te=(0.004, 0.008, 0.012), padding=6)
    d = tmp_path / "raw"
    d.mkdir()
    for name, vol in (("phase", c.phase), ("magnitude", c.magnitude)):
        nib.save(nib.Nifti1Image(np.moveaxis(vol.numpy(), 0, -1).astype(np.float32), c.affine),
                 str(d / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(c.mask.numpy().astype(np.uint8), c.affine), str(d / "mask.nii.gz"))
    (d / "params.json").write_text(json.dumps({"TE": [0.004, 0.008, 0.012], "B0": 3.0}))
    save_tiny_checkpoint(tmp_path / "tiny7.ckpt", voxel_mm=7.0)
    out = tmp_path / "out"
    assert _run(d, "-o", out, "--checkpoint", tmp_path / "tiny7.ckpt",
                "--param", "bfr.max_iter=10") == 0
    rec = json.loads((out / "record.json").read_text())
    assert rec["input"]["kind"] == "raw"
    assert "totalfield.nii.gz" in rec["outputs"] and (out / "totalfield.nii.gz").exists()
    assert {"unwrap", "echo_fit", "bfr", "network", "total"} <= set(rec["timings_s"])
    assert not rec["inference"]["resampled"]  # 7 mm scan, 7 mm model, axial
    lf = nib.load(str(out / "localfield.nii.gz")).get_fdata()
    truth, total, m = c.local_field.numpy(), c.total_field.numpy(), c.mask.numpy()
    # the field mapping ran: closer to the true local field than the total field is
    # (background removal at 7 mm is rough: correlation ~0.3 against ~0.15)
    assert np.corrcoef(lf[m], truth[m])[0, 1] > np.corrcoef(total[m], truth[m])[0, 1] + 0.1


def test_estimate_weight_is_per_scan_for_a_local_field(inputs, tmp_path):
    """A model refining TV (the shipped model's design; a tiny one trained with the fixed
    weight, so the test does not depend on the shipped model's settings): from a local field
    its TV weight is chosen per scan (alpha=auto, recorded), --estimate-weight trained keeps
    the trained weight; the two maps differ. From raw phase / a total field the default is the
    trained weight."""
    from types import SimpleNamespace

    d, mask = inputs
    ckpt = tmp_path / "res.ckpt"
    save_tiny_checkpoint(ckpt, voxel_mm=(1.0, 1.0, 1.5), cfg=tiny_residual_config())
    runs = {}
    for choice in ("by-input", "trained"):
        out = tmp_path / choice
        assert _run("--local-field", d / "lf.nii.gz", "--mask", d / "mask.nii.gz", "-o", out,
                    "--estimate-weight", choice, "--checkpoint", ckpt) == 0
        rec = json.loads((out / "record.json").read_text())
        runs[choice] = (rec["inference"]["initial_estimate_params"],
                        nib.load(str(out / "chimap.nii.gz")).get_fdata())
    assert runs["by-input"][0] == {"alpha": "auto"} and runs["trained"][0] == "as trained"
    assert np.abs(runs["by-input"][1] - runs["trained"][1])[mask].max() > 1e-5
    tv_model = SimpleNamespace(net=SimpleNamespace(method="tv"))
    assert estimate_params(tv_model, "by-input", "raw") is None
    assert estimate_params(tv_model, "by-input", "total_field") is None
    assert estimate_params(tv_model, "auto", "raw") == {"alpha": "auto"}
    tkd_model = SimpleNamespace(net=SimpleNamespace(method="tkd"))
    assert estimate_params(tkd_model, "auto", "local_field") is None
