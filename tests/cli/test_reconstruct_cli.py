"""``dlqsm reconstruct`` end to end on tiny local-field / total-field inputs."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch

from dlqsm.cli import reconstruct as cli
from dlqsm.cli.main import main
from dlqsm.errors import InputError
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.geometry import rotation_matrix
from dlqsm.pipeline import background, inversion, reconstruct

SHAPE = (20, 20, 20)
TILT = 15.0  # degrees between B0 and the voxel z axis


def _affine():
    a = np.eye(4)
    a[:3, :3] = rotation_matrix([1, 0, 0], math.radians(TILT)) * 1.0
    a[:3, 3] = [-10, -10, -10]
    return a


def _phantom():
    """Two spheres of +0.1 / -0.05 ppm inside a 8-voxel-radius brain; local field in ppm."""
    idx = np.indices(SHAPE).astype(np.float32) - 9.5
    r = np.sqrt((idx ** 2).sum(0))
    mask = r < 8
    chi = np.zeros(SHAPE, np.float32)
    chi[np.sqrt(((idx - np.array([3, 0, 0])[:, None, None, None]) ** 2).sum(0)) < 2.5] = 0.1
    chi[np.sqrt(((idx + np.array([3, 1, 0])[:, None, None, None]) ** 2).sum(0)) < 2.5] = -0.05
    b0 = rotation_matrix([1, 0, 0], math.radians(TILT)).T @ [0, 0, 1]
    op = DipoleOperator(SHAPE, (1, 1, 1), b0)
    field = op.forward(torch.from_numpy(chi)).numpy() * mask
    return chi, mask, field.astype(np.float32)


@pytest.fixture(scope="module")
def lf_input(tmp_path_factory):
    d = tmp_path_factory.mktemp("lf")
    chi, mask, field = _phantom()
    nib.save(nib.Nifti1Image(field, _affine()), str(d / "lf.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), _affine()), str(d / "mask.nii.gz"))
    return d, chi, mask


def _run(argv):
    return main(["reconstruct", *[str(a) for a in argv]])


@pytest.mark.parametrize("method", [m for m in cli.METHODS if m != "tfi"])  # tfi: total field
def test_local_field_each_method(lf_input, tmp_path, method):
    d, chi, mask = lf_input
    out = tmp_path / "out"
    params = {"tv": ["max_iter=30"], "rts": ["max_iter=30"], "ilsqr": ["max_iter=30"],
              "ndi": ["max_iter=30"], "medi": ["max_iter=4", "cg_max_iter=20"]}.get(method, [])
    params = [a for p in params for a in ("--param", p)]
    assert _run([
        "--local-field", d / "lf.nii.gz", "--mask", d / "mask.nii.gz", "-o", out,
        "--method", method, "-q", *params]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["chimap.nii.gz", "chimap.png",
                                                     "record.json"]
    img = nib.load(str(out / "chimap.nii.gz"))
    np.testing.assert_allclose(img.affine, _affine(), atol=1e-5)
    est = img.get_fdata()
    assert np.all(est[~mask] == 0)
    assert abs(est[mask].mean()) < 1e-5  # referenced to the mean inside the mask
    truth = chi[mask] - chi[mask].mean()
    assert np.corrcoef(est[mask], truth)[0, 1] > 0.7
    rec = json.loads((out / "record.json").read_text())
    assert rec["methods"] == {"inversion": method}
    assert rec["parameters"]["inversion"].keys() >= inversion.method_defaults(method).keys()
    assert rec["input"]["kind"] == "local_field"
    assert rec["input"]["sources"]["local_field"] == str(d / "lf.nii.gz")
    assert rec["geometry"]["b0_angle_to_voxel_z_deg"] == pytest.approx(TILT, abs=1e-3)
    assert rec["geometry"]["b0_dir_source"] == "affine"
    assert rec["timings_s"]["inversion"] > 0 and rec["software"]["dlqsm"]
    assert "ppm" in rec["units"]["chimap"]
    assert rec["arguments"]["method"] == method and rec["arguments"]["force"] is False


def test_force_and_existing_outputs(lf_input, tmp_path, capsys):
    d, _, _ = lf_input
    out = tmp_path / "out"
    argv = ["--local-field", d / "lf.nii.gz", "--mask", d / "mask.nii.gz", "-o", out,
            "--method", "tkd", "-q"]
    assert _run(argv) == 0
    before = (out / "chimap.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert "would overwrite" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "chimap.nii.gz").stat().st_mtime_ns == before
    assert _run([*argv, "--force"]) == 0
    assert (out / "chimap.nii.gz").stat().st_mtime_ns != before


def test_total_field_input_writes_local_field_and_mask(lf_input, tmp_path):
    d, _, mask = lf_input
    _, _, field = _phantom()
    idx = np.indices(SHAPE).astype(np.float32)
    total = field + (0.02 * (idx[0] - 9.5) + 0.01 * (idx[2] - 9.5)) * mask  # harmonic background
    nib.save(nib.Nifti1Image(total.astype(np.float32), _affine()), str(tmp_path / "tf.nii.gz"))
    out = tmp_path / "out"
    assert _run(["--total-field", tmp_path / "tf.nii.gz", "--mask", d / "mask.nii.gz", "-o",
                 out, "--method", "tkd", "--bfr", "vsharp", "-q"]) == 0
    assert {p.name for p in out.iterdir()} == {"chimap.nii.gz", "chimap.png",
                                               "localfield.nii.gz", "mask.nii.gz",
                                               "record.json"}
    lf = nib.load(str(out / "localfield.nii.gz")).get_fdata()
    m = nib.load(str(out / "mask.nii.gz")).get_fdata() > 0.5
    assert m.sum() < mask.sum()  # V-SHARP erodes the rim ...
    rec = json.loads((out / "record.json").read_text())
    assert any("rim voxels" in n for n in rec["notices"])  # ... and says so
    assert rec["methods"] == {"bfr": "vsharp", "inversion": "tkd"}
    inner = m & mask
    background_field = (total - field)[inner]
    # the linear background is harmonic: removed up to V-SHARP's own error on a 20^3 grid
    assert np.abs(lf[inner] - field[inner]).max() < 0.1 * np.abs(background_field).max()


@pytest.mark.parametrize("flag, field_kind, applied", [
    ("auto", "total", True), ("off", "total", False), ("auto", "local", False),
    ("on", "local", True)])
def test_detrend_flag(lf_input, tmp_path, flag, field_kind, applied):
    """``--detrend auto`` removes the background-invisible trends when dlqsm removed the
    background (total field) and not for a given local field; on/off force it; recorded."""
    d, _, _ = lf_input
    src = d / "lf.nii.gz"  # the local field also serves as a (background-free) total field
    out = tmp_path / "out"
    assert _run([f"--{field_kind}-field", src, "--mask", d / "mask.nii.gz", "-o", out,
                 "--method", "tkd", "--detrend", flag, "-q"]) == 0
    rec = json.loads((out / "record.json").read_text())
    info = rec["stage_info"]["inversion"]["detrend"]
    assert info["applied"] is applied and rec["arguments"]["detrend"] == flag
    if applied:
        assert info["converged"] and len(info["coefficients_ppm"]) == 8
        chi = nib.load(str(out / "chimap.nii.gz")).get_fdata()
        m = nib.load(str(out / "mask.nii.gz")).get_fdata() > 0.5 if field_kind == "total" \
            else lf_input[2]
        assert abs(chi[m].mean()) < 1e-6 and np.abs(chi[~m]).max() == 0


@pytest.mark.parametrize("argv, message", [
    (["--param", "nonsense=1"], "unknown parameter"),
    (["--param", "bfr.nonsense=1"], "unknown parameter"),
    (["--param", "alpha"], "KEY=VALUE"),
    (["--param", "tolerance.x=1"], "neither a stage nor a method"),
    (["--param", "threshold=abc", "--method", "tkd"], "'threshold' of inversion .tkd. must be a "
     "number"),
    (["--field-unit", "rad"], "needs the field strength"),
    (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "CUDA|device"),
])
def test_bad_flags_one_line(lf_input, tmp_path, capsys, argv, message):
    d, _, _ = lf_input
    code = _run(["--local-field", d / "lf.nii.gz", "--mask", d / "mask.nii.gz", "-o",
                 tmp_path / "o", "-q", *argv])
    err = capsys.readouterr().err.strip()
    if "cuda:7" in argv:
        pytest.skip("several GPUs: cuda:7 may exist")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("dlqsm reconstruct: error:")
    import re

    assert re.search(message, err)
    assert not (tmp_path / "o" / "chimap.nii.gz").exists()


def test_bad_input_names_file(tmp_path, capsys):
    lf = tmp_path / "lf.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), str(lf))
    code = _run(["--local-field", lf, "--mask", lf, "-o", tmp_path / "o"])
    err = capsys.readouterr().err
    assert code == 2 and str(lf) in err and "4 dimensions" in err
    assert not (tmp_path / "o").exists()


def test_stage_params_and_registries():
    chosen = {"unwrap": "romeo", "echo_fit": "wls", "bfr": "pdf", "inversion": "tv"}
    assert cli.stage_params(["alpha=1e-3", "bfr.radii=[8, 4]", "mask.fill=false",
                             "data_term=full", "pdf.tol=0.01", "tv.max_iter=5"], chosen) == {
        "inversion": {"alpha": 1e-3, "data_term": "full", "max_iter": 5},
        "bfr": {"radii": [8, 4], "tol": 0.01}, "mask": {"fill": False}}
    with pytest.raises(InputError, match="neither a stage nor a method chosen"):
        cli.stage_params(["tkd.threshold=0.2"], chosen)  # tkd is not the chosen inversion
    assert set(cli.METHODS) == set(inversion.METHODS)
    assert set(cli.BFR) == set(background.METHODS)
    assert set(cli.UNWRAP) == set(reconstruct.UNWRAP_METHODS)
    assert set(cli.ECHO_FIT) == set(reconstruct.ECHO_FIT_METHODS)
    assert cli.BFR[0] == background.DEFAULT_METHOD == reconstruct.DEFAULT_BFR


def test_raw_qsmci_folder(tmp_path):
    """Raw QSM-CI artifacts (phase/magnitude 4D, params.json) -> all four maps + record."""
    from dlqsm.io.qsmci import write_params
    from dlqsm.physics.units import ppm_to_phase

    chi, mask, field = _phantom()
    idx = np.indices(SHAPE).astype(np.float32) - 9.5
    total = field + 0.3 * idx[0] / 10 - 0.2 * idx[2] / 10  # harmonic background, wraps
    te = [0.005, 0.010, 0.015]
    phase = np.stack([ppm_to_phase(total, t, 3.0) + 0.4 for t in te], -1)
    phase = (np.mod(phase + np.pi, 2 * np.pi) - np.pi).astype(np.float32)
    mag = np.stack([np.where(mask, 1.0, 0.05) * np.exp(-t * 20) for t in te], -1)
    d = tmp_path / "in"
    d.mkdir()
    for name, data in (("phase", phase), ("magnitude", mag.astype(np.float32)),
                       ("mask", mask.astype(np.uint8))):
        nib.save(nib.Nifti1Image(data, _affine()), str(d / f"{name}.nii.gz"))
    write_params(d / "params.json", te=te, b0=3.0)  # no B0_dir: from the affine
    out = tmp_path / "out"
    assert _run([d, "-o", out, "--bfr", "vsharp", "--method", "tkd", "-q",
                 "--param", "unwrap.template=1"]) == 0
    assert {p.name for p in out.iterdir()} == {"chimap.nii.gz", "chimap.png",
                                               "totalfield.nii.gz", "localfield.nii.gz",
                                               "mask.nii.gz", "record.json"}
    tf = nib.load(str(out / "totalfield.nii.gz")).get_fdata()
    err = (tf - total)[mask]
    assert np.abs(err - err.mean()).max() < 1e-3  # noise-free: the field mapping is exact
    rec = json.loads((out / "record.json").read_text())
    assert rec["input"]["kind"] == "raw" and rec["input"]["echo_times_s"] == te
    assert rec["input"]["sources"]["te"] == str(d / "params.json")
    assert rec["methods"] == {"mask": "user", "unwrap": "romeo", "echo_fit": "wls",
                              "bfr": "vsharp", "inversion": "tkd"}
    assert rec["parameters"]["unwrap"]["template"] == 1
    assert "correct_offset" in rec["parameters"]["unwrap"]  # defaults recorded too
    assert rec["mask"]["source"] == "user"
    assert set(rec["timings_s"]) >= {"unwrap", "echo_fit", "bfr", "inversion", "total"}
    assert rec["geometry"]["b0_angle_to_voxel_z_deg"] == pytest.approx(TILT, abs=1e-3)
