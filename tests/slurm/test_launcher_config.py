"""The SLURM launcher configs and checkpoint choice, without a cluster (fast, always run)."""

import os
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from dlqsm.lit.callbacks import hpc_checkpoints
from dlqsm.lit.train import config_dir

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def launcher(*overrides):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    # resolved as a multirun resolves it: before Hydra's runtime config exists
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_launcher_resolves_and_sends_the_requeue_signal():
    gpu = launcher(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
        "hydra.launcher.signal_delay_s=300",
    )
    assert (gpu["nodes"], gpu["tasks_per_node"], gpu["gpus_per_node"]) == (2, 4, 4)
    assert gpu["additional_parameters"]["signal"] == "USR1@300"  # SlurmRequeue's signal
    assert gpu["submitit_folder"].startswith("./logs/train/multiruns/")


def test_slurm_cpu_launcher_asks_for_no_gpus():
    cpu = launcher("hydra/launcher=slurm_cpu", "trainer=ddp_cpu")
    assert cpu["gpus_per_node"] is None and cpu["tasks_per_node"] == 2


def test_hpc_checkpoints_in_numeric_order(tmp_path):
    for n in (10, 9, 1):
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_bytes(b"")
    (tmp_path / "hpc_ckpt_x.ckpt").write_bytes(b"")
    assert [p.name for p in hpc_checkpoints(tmp_path)] == [
        "hpc_ckpt_1.ckpt",
        "hpc_ckpt_9.ckpt",
        "hpc_ckpt_10.ckpt",
    ]
    assert hpc_checkpoints(tmp_path / "missing") == []


def test_requeued_job_resumes_from_the_newest_checkpoint(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from dlqsm.lit.train import resolve_ckpt_path, slurm_resume_path

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    last, hpc = ckpts / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"")
    hpc.write_bytes(b"")
    now = time.time()
    os.utime(last, (now - 60, now - 60))
    trainer = SimpleNamespace(
        default_root_dir=str(tmp_path), checkpoint_callback=SimpleNamespace(dirpath=str(ckpts))
    )
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert slurm_resume_path(trainer) is None  # a first start never resumes by itself
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert slurm_resume_path(trainer) == str(hpc)
    os.utime(last, (now + 60, now + 60))  # e.g. an epoch ended after the hpc checkpoint
    assert slurm_resume_path(trainer) == str(last)
    assert resolve_ckpt_path("last", trainer) == str(last)
