"""``dlqsm evaluate`` flags, config file and errors on tiny inputs."""

import argparse
import csv
import json

import nibabel as nib
import numpy as np
import pytest

from dlqsm.cli import evaluate as cli
from dlqsm.cli.main import main

TINY = ["--shape", "24", "28", "26", "--voxel-size", "8"]


def _run(*argv):
    return main(["evaluate", *[str(a) for a in argv], "-q"])


def _args(*argv):
    subs = argparse.ArgumentParser().add_subparsers()
    return cli.add_parser(subs).parse_args([str(a) for a in argv])


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_heads_with_flags(tmp_path):
    out = tmp_path / "out"
    assert _run("--methods", "tkd", "tsvd", "--heads", "1", *TINY, "--param",
                "tkd.threshold=0.15", "-o", out, "--no-figures") == 0
    rows = _rows(out / "metrics.csv")
    assert [r["method"] for r in rows] == ["tkd", "tsvd"] and rows[0]["case"] == "head1000000"
    rec = json.loads((out / "record.json").read_text())
    assert rec["methods"][0]["params"] == {"threshold": 0.15}
    assert rec["config"]["data"]["heads"]["shape"] == [24, 28, 26]
    assert not (out / "figures").exists()
    assert _run("--methods", "tkd", "--heads", "1", *TINY, "-o", out, "--no-figures") == 2
    assert _run("--methods", "tkd", "--heads", "1", *TINY, "-o", out, "--no-figures",
                "--force") == 0


def test_config_file_and_overrides(tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        "methods:\n  - {name: fast, kind: classical, method: tkd, params: {threshold: 0.2}}\n"
        "data:\n  heads: {count: 1, shape: [24, 28, 26], voxel_size: [8, 8, 8], "
        "seed: 1000005}\n"
        f"out_dir: {tmp_path / 'from_config'}\nfigures: false\n"
        "hydra:\n  run:\n    dir: logs/${now:%Y}\n")
    assert _run("--config", cfg) == 0
    rows = _rows(tmp_path / "from_config" / "metrics.csv")
    assert [(r["case"], r["method"]) for r in rows] == [("head1000005", "fast")]
    args = _args("--config", cfg, "--heads", "2", "--seed", "1000010", "-o", tmp_path / "o2",
                 "--b0-tilt", "30")
    c = cli.build_config(args)
    assert c["data"]["heads"]["count"] == 2 and c["data"]["heads"]["seed"] == 1000010
    assert c["data"]["heads"]["b0_tilt_deg"] == 30 and c["out_dir"] == str(tmp_path / "o2")
    assert c["methods"][0]["name"] == "fast"


def test_output_key_is_the_deprecated_name_of_out_dir(tmp_path, capsys):
    from dlqsm.evaluation.runner import renamed_config_keys

    heads = "data:\n  heads: {count: 1, shape: [24, 28, 26], voxel_size: [8, 8, 8]}\n"
    for key in ("out_dir", "output"):
        cfg = tmp_path / f"{key}.yaml"
        cfg.write_text(f"methods: [tkd]\n{heads}{key}: {tmp_path / key}\nfigures: false\n")
        if key == "output":
            with pytest.warns(DeprecationWarning, match="'output' is deprecated; use 'out_dir'"):
                assert _run("--config", cfg) == 0
            assert "'output' is deprecated" in capsys.readouterr().err
        else:
            assert _run("--config", cfg) == 0
        assert json.loads((tmp_path / key / "record.json").read_text())["config"]["out_dir"] \
            == str(tmp_path / key)
    with pytest.warns(DeprecationWarning):
        assert renamed_config_keys({"output": "a", "out_dir": "a"}) == {"out_dir": "a"}
    with pytest.warns(DeprecationWarning):  # flags (-o) override an old key of a config file
        c = cli.build_config(_args("--config", tmp_path / "output.yaml", "-o", tmp_path / "o"))
    assert c["out_dir"] == str(tmp_path / "o") and "output" not in c
    assert renamed_config_keys({"output": None, "title": "t"}) == {"title": "t"}
    # the old key set (e.g. python scripts/evaluate.py output=DIR) wins over the file's out_dir
    with pytest.warns(DeprecationWarning, match="output='a' replaces out_dir='b'"):
        assert renamed_config_keys({"output": "a", "out_dir": "b"}) == {"out_dir": "a"}


def test_data_folder_replaces_heads(tmp_path):
    d = tmp_path / "case"
    d.mkdir()
    shape = (16, 16, 12)
    mask = np.zeros(shape, np.float32)
    mask[3:-3, 3:-3, 2:-2] = 1
    chi = np.random.default_rng(0).normal(0, 0.05, shape).astype(np.float32) * mask
    for name, vol in (("localfield", chi * 0.1), ("mask", mask), ("chi", chi)):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), str(d / f"{name}.nii.gz"))
    c = cli.build_config(_args("--methods", "tkd", "--data", d, "-o", tmp_path / "o"))
    assert c["data"]["heads"] is None and c["data"]["folders"][0]["path"] == str(d)
    assert _run("--methods", "tkd", "--data", d, "-o", tmp_path / "o") == 0
    assert [r["case"] for r in _rows(tmp_path / "o" / "metrics.csv")] == ["case"]
    assert (tmp_path / "o" / "figures" / "case_montage.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--methods", "nope", "--heads", "1"], "unknown inversion method"),
    (["--methods", "tkd", "--heads", "1", "--seed", "7"], "training range"),
    (["--methods", "tkd", "--param", "tv.alpha=1"], "no method named 'tv'"),
    (["--methods", "tkd", "--data", "MISSING"], "does not exist"),
])
def test_errors(tmp_path, capsys, argv, message):
    argv = [a.replace("MISSING", str(tmp_path / "missing")) for a in argv]
    assert _run(*argv, *TINY, "-o", tmp_path / "out") == 2
    assert message in capsys.readouterr().err


def test_output_required_without_config(capsys):
    assert _run("--methods", "tkd") == 2
    assert "-o OUT" in capsys.readouterr().err
