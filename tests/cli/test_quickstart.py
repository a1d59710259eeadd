"""The README's main job: `dlqsm quickstart` trains, evaluates and writes a comparison."""

import csv

import pytest

from dlqsm.cli.main import main


@pytest.mark.slow
def test_quickstart_trains_and_compares_with_classical(tmp_path, capsys):
    out = tmp_path / "qs"
    args = ["quickstart", "-o", str(out), "--heads", "1", "--shape", "40", "48", "40",
            "--train-heads", "1", "--max-steps", "6", "trainer.max_epochs=1",
            "data.train_dataset.patches_per_volume=8", "cpu_threads=1"]
    assert main(args) == 0
    rows = {r["method"]: r for r in csv.DictReader((out / "evaluation" / "summary.csv").open())}
    from dlqsm.inference import default_model_installed

    shipped = {"dlqsm-default"} if default_model_installed() else set()
    assert set(rows) == {"tkd", "tv", "tkd+unet"} | shipped
    for r in rows.values():
        assert 0 < float(r["nrmse"]) < 200 and float(r["time_s"]) > 0
    # TKD plus a correction whose gain starts at 0: a few steps move it only a little from TKD
    assert abs(float(rows["tkd+unet"]["nrmse"]) - float(rows["tkd"]["nrmse"])) < 5
    assert (out / "train" / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "train" / "data").exists()  # the training heads are removed
    assert list((out / "evaluation" / "figures").glob("*_montage.png"))
    printed = capsys.readouterr().out
    assert "learned vs classical" in printed and "How to read this table" in printed
    # a second run refuses to overwrite the first without --force
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
