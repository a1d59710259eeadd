"""A command resolves its checkpoint once and loads its model once (issue 13): ``dlqsm
evaluate`` with a learned method used to check the path three times and load the model twice."""

import json

import nibabel as nib
import numpy as np
import pytest

import dlqsm.inference.network as network
import dlqsm.models.loading as loading
from dlqsm.cli.main import main
from dlqsm.errors import InputError
from dlqsm.models.loading import CheckpointPath, resolve_checkpoint
from tests.cli.test_infer_cli import save_tiny_checkpoint


def _spy(monkeypatch):
    """Counts path checks (resolve_checkpoint on a path it has not checked) and model reads."""
    n = {"checks": 0, "loads": 0}
    resolve, read = loading.resolve_checkpoint, loading._safe_load

    def spy_resolve(checkpoint=None):
        n["checks"] += not isinstance(checkpoint, CheckpointPath)
        return resolve(checkpoint)

    def spy_read(*a, **k):
        n["loads"] += 1
        return read(*a, **k)

    for mod in (loading, network):
        monkeypatch.setattr(mod, "resolve_checkpoint", spy_resolve)
    monkeypatch.setattr(loading, "_safe_load", spy_read)
    return n


def test_resolve_checkpoint_checks_once(tmp_path):
    p = tmp_path / "m.ckpt"
    with pytest.raises(InputError, match="checkpoint does not exist"):
        resolve_checkpoint(p)
    p.write_bytes(b"")
    r = resolve_checkpoint(p)
    assert isinstance(r, CheckpointPath) and str(r) == str(p)
    p.unlink()
    assert resolve_checkpoint(r) is r  # trusted: not checked again


def test_evaluate_resolves_and_loads_a_checkpoint_once(tmp_path, monkeypatch):
    save_tiny_checkpoint(tmp_path / "tiny.ckpt", voxel_mm=8.0)
    n = _spy(monkeypatch)
    out = tmp_path / "out"
    assert main(["evaluate", "--methods", "tkd", "--checkpoint", f"tiny={tmp_path / 'tiny.ckpt'}",
                 "--heads", "1", "--shape", "24", "28", "26", "--voxel-size", "8", "-o",
                 str(out), "--no-figures", "--device", "cpu", "-q"]) == 0
    assert n == {"checks": 1, "loads": 1}
    rec = json.loads((out / "record.json").read_text())
    assert rec["methods"][1]["checkpoint"] == str(tmp_path / "tiny.ckpt")


def test_infer_resolves_and_loads_a_checkpoint_once(tmp_path, monkeypatch):
    save_tiny_checkpoint(tmp_path / "tiny.ckpt")
    mask = np.zeros((16, 16, 16), np.uint8)
    mask[4:12, 4:12, 4:12] = 1
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)),
             str(tmp_path / "lf.nii.gz"))
    nib.save(nib.Nifti1Image(mask, np.eye(4)), str(tmp_path / "mask.nii.gz"))
    n = _spy(monkeypatch)
    assert main(["infer", "--local-field", str(tmp_path / "lf.nii.gz"), "--mask",
                 str(tmp_path / "mask.nii.gz"), "--checkpoint", str(tmp_path / "tiny.ckpt"),
                 "-o", str(tmp_path / "out"), "--device", "cpu", "-q"]) == 0
    assert n == {"checks": 1, "loads": 1}
