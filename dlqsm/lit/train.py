"""The training job: compose ``configs/train.yaml``, build everything with Hydra, fit.

Entry points (all call :func:`train`):

* ``python scripts/train.py [overrides]`` -- the Hydra main of the repository;
* ``dlqsm train [overrides]`` -- the console script (:func:`run_hydra` with the located configs);
* ``train(cfg)`` from Python with a composed config (as the tests do).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig, OmegaConf

from dlqsm.configs import CONFIG_ENV, find_config_dir  # noqa: F401  (CONFIG_ENV: its old home)
from dlqsm.errors import InputError
from dlqsm.lit.callbacks import SlurmRequeue, hpc_checkpoints
from dlqsm.models.loading import load_weights, resolve_checkpoint

log = logging.getLogger(__name__)

DEPRECATED_OPTIONS: dict[str, dict[str, str]] = {
    "model": {"resunet": "tkd_resunet"},
    "experiment": {"resunet": "tkd_resunet"},
}
"""Config group options kept as aliases for one release: group -> {old: new}."""


def config_dir() -> Path:
    """The Hydra config folder holding ``train.yaml`` (:func:`dlqsm.configs.find_config_dir`)."""
    return find_config_dir("train.yaml")


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry with a ``_target_`` of a dict-like group (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def resolve_ckpt_path(ckpt_path, trainer: L.Trainer) -> str | None:
    """``ckpt_path`` override -> a checkpoint file (or None to start from scratch).

    ``null``: fresh start; ``last``: the newest of this run's ``last.ckpt`` and SLURM
    ``hpc_ckpt_N.ckpt`` (:func:`newest_checkpoint`; a fresh start, with a warning, when none);
    a run folder: its ``checkpoints/last.ckpt``; otherwise a checkpoint file, which must exist.
    """
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        last = newest_checkpoint(trainer)
        if last is not None:
            log.info("Resuming from %s", last)
            return str(last)
        log.warning("ckpt_path=last but no last.ckpt in %s: starting from scratch",
                    getattr(trainer.checkpoint_callback, "dirpath", None))
        return None
    p = Path(ckpt_path)
    if p.is_dir():
        for cand in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if cand.is_file():
                return str(cand)
        raise InputError("no last.ckpt in this run folder.", path=p,
                         fix="give the checkpoint file itself or ckpt_path=null.")
    if not p.is_file():
        raise InputError("checkpoint not found.", path=p, fix="check ckpt_path.")
    return str(p)


def newest_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newer of this run's ``checkpoints/last.ckpt`` and its latest ``hpc_ckpt_N.ckpt``
    (written on SLURM's time-limit signal or SIGTERM by :class:`SlurmRequeue`), or None."""
    cands = hpc_checkpoints(trainer.default_root_dir)[-1:]
    cb = trainer.checkpoint_callback
    if cb is not None and cb.dirpath and (Path(cb.dirpath) / "last.ckpt").is_file():
        cands.append(Path(cb.dirpath) / "last.ckpt")
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


def slurm_resume_path(trainer: L.Trainer) -> str | None:
    """The checkpoint a requeued SLURM job resumes from, or None outside one.

    A job that SLURM restarted (``SLURM_RESTART_COUNT`` >= 1: requeued after the time-limit
    signal, preemption, ``scontrol requeue`` or a node failure) continues from
    :func:`newest_checkpoint`.
    """
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
    newest = newest_checkpoint(trainer)
    if newest is None:
        log.warning("Requeued SLURM job without a checkpoint in %s: starting from scratch",
                    trainer.default_root_dir)
        return None
    log.info("Requeued SLURM job (restart %s): resuming from %s",
             os.environ["SLURM_RESTART_COUNT"], newest)
    return str(newest)


def build(cfg: DictConfig) -> dict:
    """Instantiate datamodule, network, LightningModule, callbacks, loggers and trainer."""
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    if cfg.get("cpu_threads"):
        torch.set_num_threads(int(cfg.cpu_threads))
    datamodule = instantiate(cfg.data, _convert_="all")
    net = instantiate(cfg.model)
    if cfg.get("init_weights"):  # warm start: weights only (optimizer and step start afresh)
        init = cfg.init_weights
        src = load_weights(net, resolve_checkpoint(None if init == "default" else init))
        log.info("Network weights initialised from %s", src)
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    # a partial, then called: objects given to instantiate() as kwargs would be instantiated
    make_module = instantiate(cfg.module, _partial_=True, _convert_="all")
    module = make_module(net=net, loss=instantiate(cfg.loss),
                         optimizer=instantiate(cfg.optimizer), scheduler=scheduler,
                         net_config=OmegaConf.to_container(cfg.model, resolve=True))
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if cfg.trainer.get("enable_progress_bar") is False:  # the Trainer refuses both
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if SLURMEnvironment.detect() and not any(isinstance(c, SlurmRequeue) for c in callbacks):
        callbacks.append(SlurmRequeue())  # checkpoint + requeue on SLURM's time-limit signal
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(module.run_config)
    return {"cfg": cfg, "datamodule": datamodule, "net": net, "module": module,
            "callbacks": callbacks, "loggers": loggers, "trainer": trainer}


def train(cfg: DictConfig) -> dict:
    """Train as configured; returns the final metrics (floats) and ``best_model_path``.

    Resumes when ``cfg.ckpt_path`` is set (see :func:`resolve_ckpt_path`) or when SLURM
    restarted the job (see :func:`slurm_resume_path`).
    """
    objs = build(cfg)
    trainer, module = objs["trainer"], objs["module"]
    log.info("Network %s with %d parameters; output dir %s", type(objs["net"]).__name__,
             sum(p.numel() for p in objs["net"].parameters()), trainer.default_root_dir)
    ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), trainer) or slurm_resume_path(trainer)
    trainer.fit(module, datamodule=objs["datamodule"], ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    cb = trainer.checkpoint_callback
    if cb is not None and cb.best_model_score is not None:
        metrics["best_score"] = float(cb.best_model_score)
        metrics["best_model_path"] = cb.best_model_path
    metrics["global_step"] = trainer.global_step
    log.info("Finished: %s", {k: v for k, v in metrics.items() if k.startswith("val/")})
    return metrics


def warn_deprecated_options(choices) -> list[str]:
    """Warn (DeprecationWarning and the log) for every deprecated group option in ``choices``
    (Hydra's ``runtime.choices``: group -> option); returns the messages."""
    messages = []
    for group, renamed in DEPRECATED_OPTIONS.items():
        new = renamed.get(str((choices or {}).get(group)))
        if new:
            messages.append(f"{group}={choices[group]} is deprecated; use {group}={new}.")
    for m in messages:
        warnings.warn(m, DeprecationWarning, stacklevel=2)
        log.warning(m)
    return messages


def task(cfg: DictConfig) -> float | None:
    """Hydra task: train, return ``cfg.optimized_metric`` (for the Optuna sweeper)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        warn_deprecated_options(HydraConfig.get().runtime.choices)
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if not name:
        return None
    cb_monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor")
    if name == cb_monitor and "best_score" in metrics:
        return metrics["best_score"]
    if name not in metrics:
        raise InputError(f"optimized_metric {name!r} was not logged; logged: {sorted(metrics)}")
    return metrics[name]


def run_hydra(overrides: list[str], script: str | None = None) -> None:
    """Run the Hydra app over the located configs with command-line ``overrides``.

    ``script`` becomes ``sys.argv[0]`` during the run: Lightning's DDP launcher re-executes it
    (with the same overrides) for the other processes, so it must be a runnable Python file.
    """
    main = hydra.main(version_base="1.3", config_path=str(config_dir()),
                      config_name="train")(task)
    saved = sys.argv
    sys.argv = [script or saved[0], *overrides]
    try:
        main()
    finally:
        sys.argv = saved
