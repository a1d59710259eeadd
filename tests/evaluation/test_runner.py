"""Evaluation end to end on two tiny held-out heads, the method list and its errors."""

import csv
import json

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from dlqsm.errors import InputError, OutputExistsError
from dlqsm.evaluation import evaluate, parse_methods, run_evaluation, simulated_heads
from dlqsm.evaluation.report import score

METHODS = [{"name": "tkd", "kind": "classical", "method": "tkd", "params": {"threshold": 0.19}},
           {"name": "tv", "kind": "classical", "method": "tv", "params": {"max_iter": 20}}]


@pytest.fixture(scope="module")
def heads(tiny_heads):
    return tiny_heads


@pytest.fixture(scope="module")
def result(heads, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "out"
    return evaluate(METHODS, heads, out, progress=False)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_writes_tables_and_figures(result):
    out = result.out_dir
    rows = _csv(out / "metrics.csv")
    assert [(r["case"], r["method"]) for r in rows] == [
        ("head1000000", "tkd"), ("head1000000", "tv"), ("head1000001", "tkd"),
        ("head1000001", "tv")]
    for col in ("nrmse", "dnrmse", "hfen", "ssim", "xsim", "dgm_linearity", "roi_mae",
                "roi_error_caudate", "roi_error_globus_pallidus", "time_s"):
        assert all(r[col] != "" for r in rows), col
    summary = _csv(out / "summary.csv")
    assert [s["method"] for s in summary] == ["tkd", "tv"] and summary[0]["cases"] == "2"
    md = (out / "summary.md").read_text()
    assert "| tkd | classical | 2 |" in md and "globus_pallidus" in md and "XSIM" in md
    rois = _csv(out / "roi_means.csv")
    assert {r["name"] for r in rois} >= {"caudate", "putamen", "globus_pallidus", "thalamus"}
    for name in ("head1000000_montage", "head1000000_error", "head1000001_montage",
                 "roi_scatter"):
        img = mpimg.imread(out / "figures" / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0.01
    rec = json.loads((out / "record.json").read_text())
    assert rec["cases"][0]["seed"] == 1000000 and rec["methods"][1]["params"] == {"max_iter": 20}
    assert not list(out.glob(".*")) and not list((out / "figures").glob(".*"))


def test_values_are_sane(result):
    by = {(r["case"], r["method"]): r for r in result.rows}
    for r in by.values():
        assert 5 < r["nrmse"] < 100 and 0 < r["xsim"] <= 1 and r["time_s"] > 0
        assert abs(r["pearson"]) <= 1
    for case in ("head1000000", "head1000001"):  # TV beats TKD on noise-free heads
        assert by[(case, "tv")]["nrmse"] < by[(case, "tkd")]["nrmse"]
        assert by[(case, "tv")]["dgm_linearity"] < by[(case, "tkd")]["dgm_linearity"]
    s = {x["method"]: x for x in result.summary}
    assert s["tkd"]["nrmse"] == pytest.approx(np.mean([by[(c, "tkd")]["nrmse"]
                                                       for c in ("head1000000", "head1000001")]))


def test_score_of_the_truth_is_perfect(heads):
    c = heads[0]
    m, rois = score(c.reference + 0.05 * c.mask, c)  # an offset does not count
    assert m["nrmse"] == pytest.approx(0, abs=1e-6) and m["xsim"] == pytest.approx(1)
    assert m["dgm_linearity"] == pytest.approx(0, abs=1e-9)
    assert all(abs(r["error_ppm"]) < 1e-9 for r in rois)
    m2, _ = score(0.5 * c.reference, c)  # halved contrast: slope 0.5
    assert m2["dgm_linearity"] == pytest.approx(0.5, abs=1e-6)
    assert m2["nrmse"] == pytest.approx(50, abs=1e-3)


def test_refuses_to_overwrite(heads, result):
    with pytest.raises(OutputExistsError, match="--force"):
        evaluate(METHODS[:1], heads[:1], result.out_dir, progress=False, figures=False)


def test_learned_method_from_a_checkpoint(heads, tmp_path):
    from dlqsm.models import build_from_config

    cfg = {"_target_": "dlqsm.models.NormalizedNet", "pad_multiple": 2,
           "backbone": {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3,
                        "in_channels": 1, "out_channels": 1, "channels": [4, 8],
                        "strides": [2], "num_res_units": 0}}
    net = build_from_config(cfg)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "dlqsm": {"net_config": cfg, "metadata": {"network": "NormalizedNet"}}},
               tmp_path / "tiny.ckpt")
    res = evaluate(["tkd", f"tiny={tmp_path / 'tiny.ckpt'}"], heads[:1], tmp_path / "out",
                   progress=False, figures=False, save_maps=True)
    kinds = {r["method"]: r["kind"] for r in res.rows}
    assert kinds == {"tkd": "classical", "tiny": "learned"}
    assert np.isfinite(res.rows[1]["nrmse"])
    assert (tmp_path / "out" / "maps" / "head1000000" / "tiny.nii.gz").exists()
    rec = json.loads((tmp_path / "out" / "record.json").read_text())
    assert rec["methods"][1]["model"]["network"] == "NormalizedNet"


def test_method_errors(tmp_path):
    with pytest.raises(InputError, match="unknown inversion method 'nope'"):
        parse_methods(["nope"])
    with pytest.raises(InputError, match="unknown parameter"):
        parse_methods([{"name": "tv", "method": "tv", "params": {"lambda": 1}}])
    with pytest.raises(InputError, match="must be a number"):
        parse_methods([{"name": "tv", "method": "tv", "params": {"alpha": "much"}}])
    # the per-scan weight is accepted where the method has one, refused elsewhere
    (spec,) = parse_methods([{"name": "tv", "method": "tv", "params": {"alpha": "auto"}}])
    assert spec.params == {"alpha": "auto"}
    with pytest.raises(InputError):
        parse_methods([{"name": "tkd", "method": "tkd", "params": {"threshold": "auto"}}])
    with pytest.raises(InputError, match="unknown kind"):
        parse_methods([{"name": "x", "kind": "magic"}])
    with pytest.raises(InputError, match="duplicate"):
        parse_methods(["tkd", "tkd"])
    with pytest.raises(InputError, match="checkpoint does not exist"):
        parse_methods([str(tmp_path / "missing.ckpt")])
    with pytest.raises(InputError, match="no methods"):
        parse_methods([])
    specs = parse_methods(["tkd", {"name": "tv-strong", "method": "tv",
                                   "params": {"alpha": 1e-3}}])
    assert [(s.name, s.method) for s in specs] == [("tkd", "tkd"), ("tv-strong", "tv")]


def test_case_and_config_errors(heads, tmp_path):
    bad = simulated_heads(1, (24, 28, 26), 8.0)[0]
    bad.reference = bad.reference[:-1]
    with pytest.raises(InputError, match="reference grid"):
        evaluate(["tkd"], [bad], tmp_path / "o1", progress=False)
    with pytest.raises(InputError, match="no test cases"):
        evaluate(["tkd"], [], tmp_path / "o2", progress=False)
    with pytest.raises(InputError, match="unknown configuration keys"):
        run_evaluation({"methods": ["tkd"], "outptu": "x"})
    assert not (tmp_path / "o1").exists()
