"""``dlqsm train [OVERRIDES]``: the Hydra training job (same as ``python scripts/train.py``).

Everything after ``train`` is handed to Hydra: ``group=option``, ``key=value``, ``-m`` for
multirun, ``--cfg job`` to print the composed config. The configs are found in the dlqsm
checkout (``configs/``) or in ``$DLQSM_CONFIG_DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlqsm.cli.common import HelpFormatter

EPILOG = """examples:
  dlqsm train debug=fast                          seconds on a CPU
  dlqsm train experiment=quickstart_cpu           a small model in a couple of minutes on a CPU
  dlqsm train model=unrolled loss=l1_physics trainer=gpu_bf16
  dlqsm train run_name=myrun ckpt_path=last       resume the run folder logs/train/runs/myrun
  dlqsm train -m hparams_search=optuna            hyper-parameter search
  dlqsm train --cfg job                           print the composed config and exit

groups: data={sim,disk,mixture,heads,brains}
        simulation={hybrid_axial,hybrid,head,shapes,deepqsm,mixture,head_cases,brains,
                    brains_cases}
        model={unet,basicunet,tkd_resunet,tv_resunet,unrolled}
        loss={l1,l2,l1_gdl,l1_physics,physics} optimizer={adamw,adam}
        scheduler={cosine,plateau,none} trainer={cpu,gpu,gpu_bf16,gpu_16,ddp,ddp_cpu,default}
        logger={wandb,csv,tensorboard,none}
        callbacks={default,minimal,none,model_checkpoint,metadata,lr_monitor,progress_bar,
                   slice_panels,early_stopping}
        experiment={quickstart_cpu,quickstart_residual,default_model,brains_model,
                    deepqsm_shapes,hybrid_unet,tkd_resunet,unrolled}
        debug={fast,fdr,default,overfit} hparams_search={optuna} hydra/launcher={slurm}
        (tests/test_configs.py checks these lists against the configs/ folders)
See docs/training.md."""


HYDRA_FLAGS = {"-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p",
               "--package", "-r", "--run", "-m", "--multirun", "-sc", "--shell-completion",
               "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir",
               "--experimental-rerun", "-i", "--info"}
"""The flags Hydra's own command line accepts; every other argument is an override."""

FLAG_KEYS = {"max_epochs": "trainer.max_epochs", "max_steps": "trainer.max_steps",
             "accelerator": "trainer.accelerator", "devices": "trainer.devices",
             "precision": "trainer.precision", "batch_size": "data.batch_size",
             "lr": "optimizer.lr", "learning_rate": "optimizer.lr", "seed": "seed",
             "num_workers": "data.num_workers", "ckpt_path": "ckpt_path"}
"""Config keys of flags that users of other tools type (``--max-epochs 1``)."""

PLUGINS = {"hydra/launcher=slurm": ("hydra_plugins.hydra_submitit_launcher",
                                    "hydra-submitit-launcher"),
           "hparams_search=optuna": ("hydra_plugins.hydra_optuna_sweeper",
                                     "hydra-optuna-sweeper")}
"""Overrides that need a Hydra plugin from the ``cluster`` extra."""


def check_overrides(overrides: list[str]) -> None:
    """Refuse ``--flags`` Hydra does not know (naming the override to write instead) and
    overrides whose Hydra plugin is not installed (naming the extra that installs it).

    Raises:
        InputError: one line, with the fix.
    """
    import importlib.util

    from dlqsm.cli.common import refuse_flags
    from dlqsm.errors import InputError

    refuse_flags(overrides, command="train", allowed=HYDRA_FLAGS, keys=FLAG_KEYS)
    for arg in overrides:
        for override, (module, package) in PLUGINS.items():
            if arg.replace(" ", "") == override:
                try:
                    found = importlib.util.find_spec(module) is not None
                except ModuleNotFoundError:
                    found = False
                if not found:
                    raise InputError(f"{override} needs the Hydra plugin {package}, which is "
                                     "not installed.", fix='pip install "dlqsm[cluster]".')


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``dlqsm train``; unknown arguments are passed on as Hydra overrides."""
    p = subparsers.add_parser(
        "train", help="train a network (Hydra overrides follow)",
        usage="dlqsm train [-h] [-m] [--cfg job] [OVERRIDE ...]",
        description="Train a QSM network with the Hydra config configs/train.yaml. "
                    "Arguments are Hydra overrides (group=option, key=value).",
        epilog=EPILOG, formatter_class=HelpFormatter)
    p.set_defaults(func=run, accepts_overrides=True)
    return p


def run(args) -> int:
    """Compose configs/train.yaml with ``args.overrides`` and train (see dlqsm.lit.train)."""
    check_overrides(list(getattr(args, "overrides", []) or []))  # before importing Lightning
    from dlqsm.lit.train import config_dir, run_hydra

    config_dir()  # fail early, with a clear message, when the configs cannot be found
    run_hydra(list(getattr(args, "overrides", []) or []), script=str(Path(__file__).resolve()))
    return 0


if __name__ == "__main__":
    # Lightning's DDP launcher re-executes this file for ranks > 0 (see dlqsm.lit.train.run_hydra)
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    from dlqsm.lit.train import run_hydra

    run_hydra(sys.argv[1:], script=str(Path(__file__).resolve()))
