"""Datasets on disk: atomic resumable writing, DiskQSMDataset round trip, `dlqsm simulate`."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from dlqsm.cli.main import main
from dlqsm.errors import InputError
from dlqsm.physics.geometry import b0_dir_from_affine, voxel_size_from_affine
from dlqsm.simulation.datasets import DiskQSMDataset, SimulatedQSMDataset
from dlqsm.simulation.disk import write_dataset

SHAPE = (12, 14, 10)


def test_write_resume_and_read_back(tmp_path):
    ds = SimulatedQSMDataset(3, SHAPE, seed=5, source={"shapes": 1, "head": 1}, signal=True,
                             n_echoes=2, voxel_size_range=(0.8, 1.6), max_tilt_deg=30)
    out = tmp_path / "sim"
    first = write_dataset(ds, out, indices=[0, 1], progress=False)
    assert first["written"] == 2 and first["skipped"] == 0
    (out / ".tmp-sample_crashed").mkdir()  # left by an interrupted run
    mtime = (out / "sample_00000" / "chi.nii.gz").stat().st_mtime_ns
    second = write_dataset(ds, out, progress=False)
    assert second["written"] == 1 and second["skipped"] == 2
    assert (out / "sample_00000" / "chi.nii.gz").stat().st_mtime_ns == mtime
    assert not (out / ".tmp-sample_crashed").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_samples"] == 3
    assert {e["source"] for e in manifest["samples"]} <= {"shapes", "head"}
    assert all(e["seed"] == ds.sample_seed(e["index"]) for e in manifest["samples"])
    disk = DiskQSMDataset(out)
    assert len(disk) == 3
    for i in range(3):
        ref, got = ds[i], disk[i]
        assert set(got) == set(ref)
        for k in ref:
            assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
            assert torch.allclose(got[k].float(), ref[k].float(), atol=1e-6), k
        img = nib.load(str(out / f"sample_{i:05d}" / "field.nii.gz"))
        assert np.allclose(b0_dir_from_affine(img.affine), ref["b0_dir"].numpy(), atol=1e-5)
        assert np.allclose(voxel_size_from_affine(img.affine), ref["voxel_size"].numpy(),
                           atol=1e-5)
    assert set(DiskQSMDataset(out, signal=False)[0]) == {"chi", "field", "mask", "b0_dir",
                                                         "voxel_size", "labels"}


def test_changed_settings_are_refused(tmp_path):
    write_dataset(SimulatedQSMDataset(1, SHAPE, seed=0), tmp_path, progress=False)
    other = SimulatedQSMDataset(1, SHAPE, seed=1)
    with pytest.raises(InputError, match="different settings"):
        write_dataset(other, tmp_path, progress=False)
    assert write_dataset(other, tmp_path, progress=False, force=True)["written"] == 1
    with pytest.raises(InputError):
        DiskQSMDataset(tmp_path / "missing")


def test_cli_simulate(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["simulate", f"out_dir={out}", "n_samples=2", "simulation.shape=[12,12,12]",
            "progress=false", "compress=false"]
    assert main(args) == 0
    assert sorted(p.name for p in out.glob("sample_*")) == ["sample_00000", "sample_00001"]
    assert (out / "sample_00000" / "chi.nii").exists()
    assert "wrote 2" in capsys.readouterr().out
    assert main(args) == 0
    assert "skipped 2" in capsys.readouterr().out
    assert DiskQSMDataset(out)[1]["chi"].shape == (1, 12, 12, 12)
    assert main(["simulate", f"out_dir={out}", "no_such_key=1"]) == 2
    assert main(["simulate", f"out_dir={tmp_path / 'h'}", "n_samples=1", "simulation=head",
                 "simulation.shape=[16,16,16]", "progress=false"]) == 0
    assert DiskQSMDataset(tmp_path / "h")[0]["labels"].max() > 0


def test_folders_written_before_the_renames_resume(tmp_path):
    """dataset.json of an older dlqsm (chi_scale, a two-number voxel_size) still matches."""
    ds = SimulatedQSMDataset(2, shape=(12, 12, 12), seed=1, voxel_size_range=(0.8, 1.6),
                             chi_multiplier=(0.5, 2.0))
    write_dataset(ds, tmp_path, indices=[0], progress=False)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    s = meta["settings"]
    s["chi_scale"] = s.pop("chi_multiplier")
    s["voxel_size"] = s.pop("voxel_size_range")
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    assert write_dataset(ds, tmp_path, progress=False)["written"] == 1
    s["chi_scale"] = [0.5, 3.0]  # a real change is still refused
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="different settings"):
        write_dataset(ds, tmp_path, progress=False)
