"""``dlqsm simulate [OVERRIDES]``: write a simulated dataset to disk (configs/simulate.yaml).

Everything after ``simulate`` is a Hydra override (``key=value``, ``simulation=head``). The
same job runs as ``python scripts/simulate.py``. Configs come from ``$DLQSM_CONFIG_DIR`` or
the ``configs/`` folder of the dlqsm checkout (editable install).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dlqsm.cli.common import HelpFormatter
from dlqsm.configs import CONFIG_ENV, find_config_dir  # noqa: F401  (CONFIG_ENV: its old home)
from dlqsm.errors import InputError

EPILOG = """examples:
  dlqsm simulate out_dir=data/sim/train n_samples=1000
  dlqsm simulate simulation=head out_dir=data/sim/heads simulation.signal=true
  dlqsm simulate simulation=deepqsm simulation.shape=[96,96,96] num_workers=2
  dlqsm simulate simulation=mixture seed=1 out_dir=data/sim/val n_samples=50

groups: simulation={shapes,deepqsm,head,hybrid,hybrid_axial,mixture,head_cases,brains,
                    brains_cases}
Re-running a command skips finished samples; force=true overwrites them."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``dlqsm simulate``; unknown arguments are passed on as Hydra overrides."""
    p = subparsers.add_parser(
        "simulate", help="simulate a QSM dataset to disk (Hydra overrides follow)",
        description="Simulate (susceptibility, field[, multi-echo signal]) samples into a "
                    "folder of NIfTI files with configs/simulate.yaml. Arguments are Hydra "
                    "overrides (group=option, key=value).",
        epilog=EPILOG, formatter_class=HelpFormatter)
    p.set_defaults(func=run, accepts_overrides=True)
    return p


def config_dir() -> Path:
    """The Hydra config folder holding ``simulate.yaml`` (:func:`dlqsm.configs.find_config_dir`)."""
    return find_config_dir("simulate.yaml")


def compose_config(overrides: list[str]):
    """The composed simulate config (an OmegaConf DictConfig) for Hydra ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="simulate", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        raise InputError(f"invalid simulate overrides: {first}",
                         fix="use key=value (e.g. n_samples=10) and simulation=OPTION "
                             "(the files in configs/simulation).") from exc


def simulate_from_config(cfg) -> dict:
    """Build the dataset of ``cfg.simulation`` and write ``cfg.n_samples`` samples to
    ``cfg.out_dir`` (see :func:`dlqsm.simulation.disk.write_dataset`). Returns its summary."""
    from hydra.utils import instantiate

    from dlqsm.simulation.disk import write_dataset

    if cfg.out_dir is None or str(cfg.out_dir) == "":
        raise InputError("no output folder given.", fix="pass out_dir=PATH.")
    if int(cfg.n_samples) < 1:
        raise InputError(f"n_samples must be >= 1, got {cfg.n_samples}.")
    try:
        dataset = instantiate(cfg.simulation, length=int(cfg.n_samples), seed=int(cfg.seed))
    except Exception as exc:  # hydra wraps the constructor's TypeError/ValueError
        raise InputError(f"invalid simulation settings: {exc}",
                         fix="see `SimulatedQSMDataset` for the accepted settings.") from exc
    summary = write_dataset(dataset, cfg.out_dir, compress=bool(cfg.compress),
                            progress=bool(cfg.progress), num_workers=int(cfg.num_workers),
                            force=bool(cfg.force))
    print(f"dlqsm simulate: wrote {summary['written']} sample(s), skipped "
          f"{summary['skipped']} finished one(s) -> {summary['out_dir']}")
    return summary


def run(args) -> int:
    """Compose configs/simulate.yaml with ``args.overrides`` and write the dataset."""
    from dlqsm.cli.common import refuse_flags

    overrides = list(getattr(args, "overrides", []) or [])
    refuse_flags(overrides, command="simulate")
    cfg = compose_config(overrides)
    simulate_from_config(cfg)
    return 0
