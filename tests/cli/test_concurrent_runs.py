"""Two runs into one output folder never mix their files: a run owns the folder while it
writes (a second one is refused at once, in one line), and record.json names the sha256 of the
map it describes."""

import json
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from dlqsm.cli.main import main
from dlqsm.errors import OutputBusyError
from dlqsm.io.outputs import LOCK_NAME, OutputDir, sha256_file


@pytest.fixture(scope="module")
def lf(tmp_path_factory):
    d = tmp_path_factory.mktemp("conc")
    rng = np.random.default_rng(0)
    mask = np.zeros((24, 24, 24), np.uint8)
    mask[4:20, 4:20, 4:20] = 1
    nib.save(nib.Nifti1Image((rng.normal(0, 0.02, mask.shape) * mask).astype(np.float32),
                             np.eye(4)), str(d / "lf.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(d / "mask.nii.gz"))
    return d


def _argv(d, out, *extra):
    return ["reconstruct", "--local-field", str(d / "lf.nii.gz"), "--mask",
            str(d / "mask.nii.gz"), "-o", str(out), "--method", "tkd", *extra]


def test_second_run_refused_while_the_first_writes(lf, tmp_path, capsys):
    out = tmp_path / "out"
    with OutputDir(out).lock():
        assert main(_argv(lf, out, "-q")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert "another dlqsm run is writing into this folder" in err and "Fix:" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    assert not out.exists()  # the owner created it and wrote nothing: removed again


@pytest.mark.slow  # two fresh Python processes (~15 s on 2 cores)
def test_racing_processes_never_mix_map_and_record(lf, tmp_path):
    """Two real processes started together into one folder (--force): each one either
    finishes or is refused in one line, and the record on disk describes the map on disk."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dlqsm.cli.main", *_argv(lf, out, "--force", "-q")]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert any(code == 0 for code, _ in results), results
    for code, err in results:
        assert code in (0, 2), err
        if code == 2:
            assert "another dlqsm run is writing into this folder" in err
    rec = json.loads((out / "record.json").read_text())
    assert rec["sha256"]["chimap.nii.gz"] == sha256_file(out / "chimap.nii.gz")
    assert not (out / LOCK_NAME).exists()


def test_a_killed_owner_does_not_lock_the_folder_forever(tmp_path):
    out = tmp_path / "out"
    code = ("import sys, time\nfrom dlqsm.io.outputs import OutputDir\n"
            f"ctx = OutputDir({str(out)!r}).lock()\nctx.__enter__()\nprint('locked', flush=True)\n"
            "time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusyError, match=f"run {p.pid} on"):
            with OutputDir(out).lock():
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    deadline = time.time() + 10
    while True:  # the kernel drops the dead process's lock
        try:
            with OutputDir(out).lock():
                break
        except OutputBusyError:
            assert time.time() < deadline
            time.sleep(0.1)
