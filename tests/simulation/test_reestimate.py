"""A dataset copy with a new classical estimate (scripts/reestimate_initial.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from dlqsm.errors import InputError
from dlqsm.pipeline.batched import classical_estimate
from dlqsm.simulation.datasets import HeadCaseDataset
from dlqsm.simulation.disk import DiskQSMDataset, write_dataset
from dlqsm.simulation.wrappers import WithInitialEstimate, reestimate_dataset


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    ds = WithInitialEstimate(HeadCaseDataset(2, shape=(24, 28, 24), max_tilt_deg=25.0,
                                             voxel_size=(1.0, 1.0, 1.5)),
                             method="tkd")
    write_dataset(ds, root, compress=False, progress=False)
    return root


def test_new_estimate_in_the_sample_geometry_other_files_linked(stored, tmp_path):
    dst = tmp_path / "auto"
    out = reestimate_dataset(stored, dst, method="tv", params={"alpha": 1e-3, "max_iter": 20},
                             progress=False)
    assert out["written"] == 2
    src, new = DiskQSMDataset(stored), DiskQSMDataset(dst)
    for k in range(2):
        meta = src.meta(k)
        assert np.linalg.norm(np.asarray(meta["b0_dir"])[:2]) > 0.1  # tilted: geometry used
        a, b = src[k], new[k]
        expect = classical_estimate(a["field"][None], a["mask"][None],
                                    torch.tensor(meta["b0_dir"]), torch.tensor(meta["voxel_size"]),
                                    method="tv", params={"alpha": 1e-3, "max_iter": 20})[0]
        torch.testing.assert_close(b["chi_init"], expect, atol=1e-6, rtol=0)
        assert not torch.allclose(b["chi_init"], a["chi_init"], atol=1e-4)  # it was TKD
        for key in ("chi", "field", "mask", "labels"):
            torch.testing.assert_close(a[key], b[key])
        f_src = stored / meta["folder"] / "field.nii"
        assert os.stat(f_src).st_ino == os.stat(dst / meta["folder"] / "field.nii").st_ino
        assert new.meta(k)["initial_estimate"] == {"method": "tv",
                                                   "params": {"alpha": 1e-3, "max_iter": 20}}
    info = json.loads((dst / "dataset.json").read_text())
    assert info["settings"]["initial_estimate"]["method"] == "tv"
    # re-running skips finished samples; other settings into the same folder are refused
    again = reestimate_dataset(stored, dst, method="tv", params={"alpha": 1e-3, "max_iter": 20},
                               progress=False)
    assert again == {"written": 0, "skipped": 2, "out_dir": str(dst)}
    with pytest.raises(InputError, match="force"):
        reestimate_dataset(stored, dst, method="tkd", progress=False)
    with pytest.raises(InputError, match="another folder"):
        reestimate_dataset(stored, stored, progress=False)


def test_script_parses_auto(stored, tmp_path, capsys):
    import runpy
    import sys

    argv = sys.argv
    sys.argv = ["reestimate_initial.py", str(stored), str(tmp_path / "a"), "--method", "tkd",
                "--param", "threshold=0.25"]
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(_script()), run_name="__main__")
    finally:
        sys.argv = argv
    assert exc.value.code == 0
    assert json.loads(capsys.readouterr().out)["written"] == 2
    meta = DiskQSMDataset(tmp_path / "a").meta(0)
    assert meta["initial_estimate"] == {"method": "tkd", "params": {"threshold": 0.25}}


def _script():
    from pathlib import Path

    return Path(__file__).resolve().parents[2] / "scripts" / "reestimate_initial.py"
