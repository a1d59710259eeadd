"""End-to-end training on CPU with tiny volumes: every model, resume, load_model, metadata."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from dlqsm.lit.datamodule import collate
from dlqsm.lit.train import build, train
from dlqsm.models import export_model, load_model
from tests.lit.helpers import TinyQSMDataset, sim_overrides

REPO = Path(__file__).resolve().parents[2]
SMALL_UNET = ["model.backbone.channels=[4,8,16]", "model.backbone.strides=[2,2]",
              "model.pad_multiple=4"]
QUICK = ["logger=csv", "callbacks=minimal", "trainer.log_every_n_steps=1",
         "trainer.num_sanity_val_steps=0", *sim_overrides(), *SMALL_UNET]


@pytest.mark.parametrize("model", ["unet", "basicunet", "tkd_resunet", "unrolled"])
def test_fast_dev_run_each_model(compose_cfg, model):
    cfg = compose_cfg([f"model={model}", "debug=fdr", *sim_overrides()])
    metrics = train(cfg)
    assert metrics["global_step"] == 1
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


def test_bf16_mixed_precision_run(compose_cfg):
    cfg = compose_cfg(["model=unrolled", "model.features=8", "loss=l1_physics", "debug=fdr",
                       "trainer.precision=bf16-mixed", *sim_overrides()])
    assert torch.isfinite(torch.tensor(train(cfg)["val/loss"]))


def test_checkpoints_metadata_and_load_model(compose_cfg, tmp_path):
    cfg = compose_cfg([*QUICK, "trainer.max_epochs=2", "callbacks=default"])
    metrics = train(cfg)
    ckpts = tmp_path / "checkpoints"
    assert {"best.ckpt", "last.ckpt", "metadata.json"} <= {p.name for p in ckpts.iterdir()}
    assert sorted(p.name for p in (tmp_path / "panels").iterdir()) == ["epoch0000.png",
                                                                        "epoch0001.png"]
    meta = json.loads((ckpts / "metadata.json").read_text())
    assert meta["units"]["output"].startswith("susceptibility, ppm")
    assert meta["input_normalization"]["field_scale"] == 10.0
    assert meta["training_geometry"]["voxel_size_min"] == [1.0, 1.0, 1.0]
    assert meta["config"]["model"]["backbone"]["channels"] == [4, 8, 16]
    assert meta["global_step"] == 4 and "val/loss" in meta["metrics"]
    assert meta["git"]["commit"] is None or len(meta["git"]["commit"]) == 40
    assert metrics["best_model_path"].endswith("best.ckpt")

    net, meta2 = load_model(ckpts / "best.ckpt")
    raw = torch.load(ckpts / "best.ckpt", weights_only=False)
    assert raw["dlqsm"]["config"]["seed"] == 12345
    batch = collate([TinyQSMDataset(seed=99)[i] for i in range(2)])
    module = build(cfg)["module"]
    module.load_state_dict(raw["state_dict"])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(batch["field"], batch["mask"]), module(batch))
    assert meta2["checkpoint"].endswith("best.ckpt")

    exported = export_model(tmp_path, tmp_path / "export")  # run folder -> best.ckpt
    net3, meta3 = load_model(exported)
    assert meta3["network"] == "NormalizedNet"
    with torch.no_grad():
        torch.testing.assert_close(net3(batch["field"], batch["mask"]),
                                   net(batch["field"], batch["mask"]))
    assert (exported / "model.pt").stat().st_size < (ckpts / "best.ckpt").stat().st_size


def test_resume_continues_the_global_step(compose_cfg, tmp_path):
    assert train(compose_cfg([*QUICK, "trainer.max_epochs=2"]))["global_step"] == 4
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    resumed = train(compose_cfg([*QUICK, "trainer.max_epochs=3", "ckpt_path=last"]))
    assert resumed["global_step"] == 6  # 4 restored + 2 new, not 2
    resumed = train(compose_cfg([*QUICK, "trainer.max_epochs=4", f"ckpt_path={tmp_path}"]))
    assert resumed["global_step"] == 8


def test_init_weights_warm_starts_from_a_trained_model(compose_cfg, tmp_path):
    """init_weights copies the weights (the step starts afresh); a wrong architecture is refused."""
    from dlqsm.errors import InputError

    train(compose_cfg([*QUICK, "trainer.max_epochs=1"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    trained, _ = load_model(last)
    objs = build(compose_cfg([*QUICK, f"init_weights={last}"]))
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(objs["net"].state_dict()[name], value)
    fresh = build(compose_cfg(QUICK))["net"].state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in trained.state_dict().items())
    with pytest.raises(InputError, match="do not fit the configured network"):
        build(compose_cfg([*QUICK, "model.backbone.channels=[4,8,32]", f"init_weights={last}"]))


def test_gradient_accumulation_counts_optimizer_steps(compose_cfg):
    cfg = compose_cfg([*QUICK, "trainer.max_epochs=1", "trainer.accumulate_grad_batches=2",
                       "data.train_dataset.length=8"])
    assert train(cfg)["global_step"] == 2  # 4 batches, one optimizer step per 2


@pytest.mark.slow
def test_short_training_lowers_the_validation_loss(compose_cfg):
    """~100 steps at 16^3 must beat the untrained net and the zero map (NRMSE 100%)."""
    cfg = compose_cfg([*QUICK, "model.backbone.channels=[8,16,32]", "loss=l2",
                       "optimizer.lr=3e-3", "scheduler=none", "trainer.max_epochs=8",
                       "data.batch_size=4", "data.train_dataset.length=48",
                       "data.val_dataset.length=4"])
    objs = build(cfg)
    before = objs["trainer"].validate(objs["module"], datamodule=objs["datamodule"],
                                      verbose=False)[0]
    after = train(cfg)
    print(f"val/loss {before['val/loss']:.5f} -> {after['val/loss']:.5f}, "
          f"val/nrmse {before['val/nrmse']:.1f} -> {after['val/nrmse']:.1f} %")
    assert after["val/loss"] < 0.75 * before["val/loss"]
    assert after["val/nrmse"] < 90.0  # predicting zero everywhere scores 100 %


def test_dlqsm_train_cli(tmp_path):
    from dlqsm.cli.main import main

    run = tmp_path / "run"
    argv = ["train", "debug=fdr", *sim_overrides(), f"hydra.run.dir={run}"]
    GlobalHydra.instance().clear()
    try:
        assert main(argv) == 0
    finally:
        GlobalHydra.instance().clear()
    assert (run / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """scripts/train.py with trainer=ddp_cpu: two gloo processes share the epoch."""
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "trainer=ddp_cpu", *QUICK,
           "trainer.max_epochs=1", "data.train_dataset.length=8", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2  # 8 samples / (2 processes x batch 2)
    assert "member: 2/2" in (proc.stdout + proc.stderr).lower()  # rank 1 joined


def test_default_model_experiment_trains_on_head_patches(compose_cfg, tmp_path):
    """experiment=default_model at reduced size: patches of stored heads with their TV estimate;
    the module hands the stored estimate to the network (no inversion per training step)."""
    from dlqsm.models import InversionResidualNet
    from dlqsm.simulation.datasets import HeadCaseDataset
    from dlqsm.simulation.disk import write_dataset
    from dlqsm.simulation.wrappers import WithInitialEstimate

    for split, seed, n in (("train", 0, 2), ("val", 1, 1)):
        ds = WithInitialEstimate(HeadCaseDataset(n, seed=seed, shape=(32, 40, 32)),
                                 method="tv", params={"max_iter": 5})
        write_dataset(ds, tmp_path / "data" / "heads" / split, compress=False, progress=False)
    cfg = compose_cfg(["experiment=default_model", "callbacks=minimal", "trainer.max_epochs=1",
                       "data.train_dataset.patch_size=[16,16,16]",
                       "data.val_dataset.patch_size=[16,16,16]",
                       "data.train_dataset.patches_per_volume=2", "data.num_workers=0",
                       "data.batch_size=2", "+model.params.max_iter=5",
                       "model.backbone.channels=[4,8,16]", "model.backbone.strides=[2,2]",
                       "model.pad_multiple=4", "trainer.num_sanity_val_steps=0",
                       "trainer.precision=bf16-mixed"])
    calls = []
    original = InversionResidualNet.initial_estimate

    def spy(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    InversionResidualNet.initial_estimate = spy
    try:
        metrics = train(cfg)
    finally:
        InversionResidualNet.initial_estimate = original
    assert metrics["global_step"] == 2 and not calls
    assert torch.isfinite(torch.tensor(metrics["val/nrmse"]))
    net, meta = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert isinstance(net, InversionResidualNet) and net.params == {"max_iter": 5}
    assert meta["input_normalization"]["initial_estimate"]["method"] == "tv"
