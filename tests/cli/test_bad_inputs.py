"""Every malformed input of issue 14 gets one line that names the file and the fix; nothing is
written and no traceback or library warning reaches the terminal. One case per row of the
issue's table (parametrised), plus the runs that must succeed after the suggested fix."""

import json
import os
import re
import subprocess

import nibabel as nib
import numpy as np
import pytest
import torch

from dlqsm.cli.main import main
from dlqsm.io.outputs import sha256_file
from dlqsm.physics.dipole import DipoleOperator

SHAPE = (16, 16, 16)


def _save(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(data), np.asarray(affine, float)), str(path))
    return path


def _save_raw_header(path, data, sform, *, pixdim_zero=False):
    """A NIfTI whose sform is exactly ``sform`` (nibabel refuses singular ones in the
    constructor), qform unset; optionally zero voxel sizes in pixdim."""
    img = nib.Nifti1Image(np.asarray(data), None)
    h = img.header
    h.set_qform(None, code=0)
    h["srow_x"], h["srow_y"], h["srow_z"] = sform[0], sform[1], sform[2]
    h["sform_code"] = 1
    if pixdim_zero:
        h["pixdim"][1:4] = 0
    img.to_filename(str(path))
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 16^3 local field (ppm) of a sphere of 0.2 ppm inside a spherical brain mask."""
    d = tmp_path_factory.mktemp("bad")
    idx = np.indices(SHAPE).astype(np.float32) - 7.5
    r = np.sqrt((idx ** 2).sum(0))
    mask = r < 7
    chi = np.where(np.sqrt(((idx - [[[[2]]], [[[0]]], [[[0]]]]) ** 2).sum(0)) < 2.5, 0.2, 0.0)
    field = DipoleOperator(SHAPE, (1, 1, 1), (0, 0, 1)).forward(
        torch.from_numpy(chi.astype(np.float32))).numpy() * mask
    _save(d / "lf.nii.gz", field.astype(np.float32))
    _save(d / "lf_hz.nii.gz", (field * 42.57747892 * 3).astype(np.float32))  # 3 T, Hz
    _save(d / "mask.nii.gz", mask.astype(np.uint8))
    _save(d / "mask_half.nii.gz", (mask * 0.5).astype(np.float32))
    sing = np.eye(4)
    sing[2, 2] = 0
    _save_raw_header(d / "lf_singular.nii.gz", field.astype(np.float32), sing)
    _save_raw_header(d / "mask_singular.nii.gz", mask.astype(np.uint8), sing)
    _save_raw_header(d / "lf_zeroed.nii.gz", field.astype(np.float32), np.zeros((4, 4)))
    _save_raw_header(d / "lf_pixdim0.nii.gz", field.astype(np.float32), np.eye(4),
                     pixdim_zero=True)
    torch.save(torch.nn.Linear(2, 2), d / "pickled_model.pt")  # a whole pickled network
    raw = d / "raw_qsmci"
    raw.mkdir()
    phase = np.stack([np.angle(np.exp(1j * field * t * 800)) for t in (1, 2)], -1)
    _save(raw / "phase.nii.gz", phase.astype(np.float32))
    _save(raw / "mag.nii.gz", np.ones(SHAPE + (2,), np.float32))  # not QSM-CI's name
    (raw / "params.json").write_text(json.dumps({"TE": [0.004, 0.008], "B0": 3.0}))
    return d, mask


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _lf(d, lf="lf.nii.gz", mask="mask.nii.gz"):
    return ["--local-field", d / lf, "--mask", d / mask]


# (argv builder, expected text in the one line, command)
ROWS = {
    "field in Hz read as ppm": (lambda d, o: ["reconstruct", *_lf(d, "lf_hz.nii.gz"), "-o", o],
                                r"lf_hz\.nii\.gz: local field values reach .*--field-unit hz"),
    "--local-field with --phase": (
        lambda d, o: ["reconstruct", *_lf(d), "--phase", d / "lf.nii.gz", "-o", o],
        r"--phase and --local-field given together.*give only one"),
    "output path is a file": (lambda d, o: ["reconstruct", *_lf(d), "-o", d / "lf.nii.gz"],
                              r"the output path is a file"),
    "foreign torch file": (
        lambda d, o: ["infer", *_lf(d), "-o", o, "--checkpoint", d / "pickled_model.pt"],
        r"pickled_model\.pt: not a dlqsm model.*could run code"),
    "foreign torch file (evaluate)": (
        lambda d, o: ["evaluate", "--methods", "tkd", "--checkpoint", d / "pickled_model.pt",
                      "--heads", "1", "--shape", 16, 16, 16, "-o", o],
        r"pickled_model\.pt: not a dlqsm model.*could run code"),
    "singular affine": (lambda d, o: ["reconstruct", *_lf(d, "lf_singular.nii.gz",
                                                         "mask_singular.nii.gz"), "-o", o],
                        r"lf_singular\.nii\.gz: the NIfTI affine is singular.*--b0-dir"),
    "zeroed affine in the field only": (
        lambda d, o: ["reconstruct", *_lf(d, "lf_zeroed.nii.gz"), "-o", o],
        r"lf_zeroed\.nii\.gz: the NIfTI affine is singular.*mask\.nii\.gz has a valid one"),
    "folder with mag.nii.gz": (lambda d, o: ["reconstruct", d / "raw_qsmci", "-o", o],
                               r"raw_qsmci: no magnitude\.nii\.gz and no mask\.nii\.gz here "
                               r"\(found mag\.nii\.gz"),
    "non-numeric --param": (
        lambda d, o: ["reconstruct", *_lf(d), "-o", o, "--method", "tkd", "--param",
                      "threshold=abc"], r"parameter 'threshold' of inversion \(tkd\) must be a "
                                        r"number.*got 'abc'"),
    "--field-unit rad without TE": (
        lambda d, o: ["reconstruct", *_lf(d), "-o", o, "--field-unit", "rad",
                      "--field-strength", "3"], r"needs exactly one echo time"),
    "--field-unit with phase": (
        lambda d, o: ["reconstruct", d / "raw_qsmci", "--magnitude", d / "raw_qsmci" /
                      "mag.nii.gz", "--field-unit", "hz", "-o", o],
        r"--field-unit applies to a total or local field, but the input starts from phase"),
    "--b0-dir with --b0-source": (
        lambda d, o: ["reconstruct", *_lf(d), "-o", o, "--b0-dir", 0, 0, 1, "--b0-source",
                      "affine"], r"--b0-dir and --b0-source affine given together"),
    "--subject without INPUT": (
        lambda d, o: ["reconstruct", *_lf(d), "-o", o, "--subject", "01"],
        r"--subject/--select pick a run inside INPUT"),
    "--b0-source sidecar without one": (
        lambda d, o: ["reconstruct", *_lf(d), "-o", o, "--b0-source", "sidecar"],
        r"no B0_dir in params\.json or the sidecars"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_is_one_line(case, tmp_path, capsys, row):
    d, _ = case
    build, pattern = ROWS[row]
    out = tmp_path / "out"
    argv = build(d, out)
    code, err = _run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"dlqsm {argv[0]}: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Fix:" in lines[0] and "Traceback" not in err and "weights_only" not in err
    assert not out.exists()  # nothing written, not even an empty folder


@pytest.mark.parametrize("command", ["reconstruct", "infer", "evaluate"])
def test_device_accepted_the_same_way_everywhere(case, tmp_path, capsys, command):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the no-CUDA message cannot be produced")
    d, _ = case
    args = {"evaluate": ["evaluate", "--methods", "tkd", "--heads", "1", "--shape", 16, 16, 16,
                         "-o", tmp_path / "o"]}.get(command, [command, *_lf(d), "-o",
                                                              tmp_path / "o"])
    code, err = _run([*args, "--device", "cuda"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "CUDA was asked for but is not available" in err and "--device cpu" in err
    from dlqsm.cli import evaluate
    from dlqsm.cli.main import build_parser

    ns = build_parser().parse_args(["evaluate", "--methods", "tkd", "-o", str(tmp_path / "e")])
    assert ns.device == "auto" and evaluate.build_config(ns)["device"] == "cpu"


def test_read_only_output_folder_refused_before_work(case, tmp_path, capsys):
    d, _ = case
    ro = tmp_path / "ro"
    ro.mkdir()
    locked = False
    if os.geteuid() != 0:
        ro.chmod(0o555)
        locked = True
    elif subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode == 0:
        locked = True
    if not locked:
        pytest.skip("cannot make a read-only folder here (root without chattr)")
    try:
        code, err = _run(["reconstruct", *_lf(d), "-o", ro / "out", "-q"], capsys)
    finally:
        if os.geteuid() != 0:
            ro.chmod(0o755)
        else:
            subprocess.run(["chattr", "-i", str(ro)], check=True)
    assert code == 2 and err.count("\n") == 1
    assert "cannot write into" in err and "choose a writable output folder" in err
    assert not (ro / "out").exists()


def test_the_suggested_fixes_work(case, tmp_path, capsys):
    """After each refusal above, the fix its message suggests makes the run succeed."""
    d, mask = case
    ok = tmp_path / "ppm"
    assert main([str(a) for a in ["reconstruct", *_lf(d), "-o", ok, "--method", "tkd",
                                  "-q"]]) == 0
    # Hz: converted with --field-unit hz at the given field strength = the ppm run
    hz = tmp_path / "hz"
    assert main([str(a) for a in ["reconstruct", *_lf(d, "lf_hz.nii.gz"), "-o", hz,
                                  "--method", "tkd", "--field-unit", "hz",
                                  "--field-strength", 3, "-q"]]) == 0
    a = nib.load(str(ok / "chimap.nii.gz")).get_fdata()
    b = nib.load(str(hz / "chimap.nii.gz")).get_fdata()
    np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max())
    # singular affine: --b0-dir and --voxel-size; the outputs carry diag(voxel size)
    sg = tmp_path / "sing"
    assert main([str(a) for a in ["reconstruct", *_lf(d, "lf_singular.nii.gz",
                                                       "mask_singular.nii.gz"), "-o", sg,
                                  "--method", "tkd", "--b0-dir", 0, 0, 1, "--voxel-size",
                                  1, 1, 2]]) == 0
    assert "the affine is singular; the outputs carry diag(1, 1, 2)" in capsys.readouterr().err
    np.testing.assert_allclose(nib.load(str(sg / "chimap.nii.gz")).affine,
                               np.diag([1.0, 1.0, 2.0, 1.0]))
    rec = json.loads((sg / "record.json").read_text())
    assert rec["geometry"]["input_affine"][2][2] == 0
    assert rec["geometry"]["b0_dir_source"] == "command line"
    # a mask of 0.5s: its non-zero voxels, with a notice
    half = tmp_path / "half"
    assert main([str(a) for a in ["reconstruct", *_lf(d, mask="mask_half.nii.gz"), "-o",
                                  half, "--method", "tkd"]]) == 0
    err = capsys.readouterr().err
    assert "mask values are at most 0.5: every voxel above 0 is taken as brain" in err
    assert json.loads((half / "record.json").read_text())["mask"]["voxels"] == int(mask.sum())


def test_nibabel_warnings_become_notices(case, tmp_path, capsys):
    """pixdim 0 with a valid sform: the run proceeds; nibabel's text only as a dlqsm note."""
    d, _ = case
    out = tmp_path / "o"
    code, err = _run(["reconstruct", *_lf(d, "lf_pixdim0.nii.gz"), "-o", out, "--method",
                      "tkd"], capsys)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "pixdim" in ln]
    assert lines and all(ln.startswith("dlqsm reconstruct: note: ") for ln in lines)
    assert "lf_pixdim0.nii.gz: nibabel:" in lines[0]
    rec = json.loads((out / "record.json").read_text())
    assert any("pixdim" in n for n in rec["notices"])


def test_record_names_the_hash_of_its_map_and_preview_is_written(case, tmp_path):
    d, _ = case
    out = tmp_path / "o"
    assert main([str(a) for a in ["reconstruct", *_lf(d), "-o", out, "--method", "tkd",
                                  "-q"]]) == 0
    rec = json.loads((out / "record.json").read_text())
    assert rec["sha256"] == {"chimap.nii.gz": sha256_file(out / "chimap.nii.gz")}
    png = (out / "chimap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not (out / ".dlqsm.lock").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files
