"""``dlqsm evaluate --estimate-weight``: learned residual models run their classical estimate
with the weight ``dlqsm infer`` uses (per scan for a local field by default), recorded."""

import argparse
import json

import pytest
import torch

from dlqsm.cli.main import main
from dlqsm.errors import InputError
from dlqsm.evaluation import evaluate, run_evaluation
from dlqsm.pipeline.inversion import regularization
from tests.cli.test_infer_cli import save_tiny_checkpoint, tiny_residual_config

TV_ITERS = 15


def _residual_checkpoint(path, voxel_mm):
    """An untrained TV + U-Net residual model (gain 0: its output is its TV estimate) trained,
    as far as the metadata says, at ``voxel_mm`` (so the tiny heads are not resampled)."""
    save_tiny_checkpoint(path, voxel_mm=voxel_mm,
                         cfg=tiny_residual_config({"max_iter": TV_ITERS}))
    return path


def test_learned_residual_model_uses_infers_weight_and_records_it(tiny_heads, tmp_path):
    head = tiny_heads[0]
    ckpt = _residual_checkpoint(tmp_path / "res.ckpt", float(head.voxel_size[0]))
    methods = [f"res={ckpt}",
               {"name": "res-trained", "kind": "learned", "checkpoint": str(ckpt),
                "options": {"estimate_weight": "trained"}},
               {"name": "tv-auto", "kind": "classical", "method": "tv",
                "params": {"alpha": "auto", "max_iter": TV_ITERS}}]
    res = evaluate(methods, [head], tmp_path / "out", progress=False, figures=False)
    nrmse = {r["method"]: r["nrmse"] for r in res.rows}
    # gain 0: the model's map is its TV estimate, so "by-input" (the default) measures TV with
    # the per-scan weight, exactly as dlqsm infer runs it from a local field
    assert nrmse["res"] == pytest.approx(nrmse["tv-auto"], abs=1e-3)
    assert abs(nrmse["res"] - nrmse["res-trained"]) > 0.05
    rec = json.loads((tmp_path / "out" / "record.json").read_text())
    by = {m["name"]: m for m in rec["methods"]}
    auto, trained = by["res"]["initial_estimate"], by["res-trained"]["initial_estimate"]
    assert auto["estimate_weight"] == "by-input" and auto["params"] == {"alpha": "auto"}
    assert trained["estimate_weight"] == "trained" and trained["params"] == "as trained"
    f = torch.as_tensor(head.local_field, dtype=torch.float32)
    m = torch.as_tensor(head.mask).bool()
    alpha, record = regularization.auto_tv_alpha(f * m, m, voxel_size=head.voxel_size,
                                                 b0_dir=head.b0_dir)
    (case,) = auto["per_case"]
    assert case["case"] == head.name and case["auto"] is True
    assert case["alpha"] == pytest.approx(alpha, rel=1e-6)
    assert case["lam_gcv_mm2"] == pytest.approx(record["lam_gcv_mm2"], rel=1e-6)
    assert trained["per_case"][0]["alpha"] == regularization.TV_ALPHA_FIXED
    assert "auto" not in trained["per_case"][0]
    assert "initial_estimate" not in by["tv-auto"]


def test_estimate_weight_option_and_config_key(tmp_path, monkeypatch):
    from dlqsm.cli import evaluate as cli
    from dlqsm.evaluation import runner

    seen = {}

    def fake(methods, device="cpu", estimate_weight="by-input"):
        seen["estimate_weight"] = estimate_weight
        raise InputError("stop here")

    monkeypatch.setattr(runner, "method_runners", fake)
    for argv, expect in (([], "by-input"), (["--estimate-weight", "trained"], "trained")):
        assert main(["evaluate", "--methods", "tkd", "--heads", "1", "-o", str(tmp_path / "o"),
                     "-q", *argv]) != 0
        assert seen.pop("estimate_weight") == expect
    monkeypatch.undo()
    parser = cli.add_parser(argparse.ArgumentParser().add_subparsers())
    args = parser.parse_args(["-o", str(tmp_path / "o"), "--estimate-weight", "auto"])
    assert cli.build_config(args)["estimate_weight"] == "auto"
    with pytest.raises(InputError, match="estimate_weight 'sometimes'"):
        run_evaluation({"methods": ["tkd"], "estimate_weight": "sometimes",
                        "out_dir": str(tmp_path / "o2")})
    with pytest.raises(InputError, match="estimate_weight 'never'"):
        evaluate([{"name": "x", "kind": "learned", "checkpoint": None,
                   "options": {"estimate_weight": "never"}}], [], tmp_path / "o3")
    with pytest.raises(InputError, match="applies to --suite independent only"):
        cli.run(parser.parse_args(["-o", str(tmp_path / "o4"), "--suite-methods", "tfi"]))
    # the suite runs dlqsm's defaults: comparison flags given with it are refused, not ignored
    for extra in (["--estimate-weight", "auto"], ["--heads", "0"], ["--checkpoint", "x.ckpt"]):
        with pytest.raises(InputError, match=f"{extra[0]} do not apply to --suite"):
            cli.run(parser.parse_args(["-o", str(tmp_path / "o5"), "--suite", "independent",
                                       *extra]))
    assert not (tmp_path / "o5").exists()
