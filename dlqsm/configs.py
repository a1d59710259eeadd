"""Where the Hydra configs are: ``$DLQSM_CONFIG_DIR``, else ``configs/`` of the dlqsm checkout,
else ``configs/`` of the current folder (used by ``dlqsm train`` and ``dlqsm simulate``; no
Hydra import here, so locating them stays cheap)."""

from __future__ import annotations

import os
from pathlib import Path

import dlqsm
from dlqsm.errors import InputError

CONFIG_ENV = "DLQSM_CONFIG_DIR"
"""Environment variable naming the config folder (for installs without the repository)."""


def find_config_dir(required: str = "train.yaml") -> Path:
    """The first candidate folder that holds ``required`` (e.g. ``train.yaml``).

    Raises:
        InputError: when none does (e.g. a wheel install without the repository).
    """
    candidates = []
    if os.environ.get(CONFIG_ENV):
        candidates.append(Path(os.environ[CONFIG_ENV]))
    candidates += [Path(dlqsm.__file__).resolve().parents[1] / "configs", Path.cwd() / "configs"]
    for c in candidates:
        if (c / required).is_file():
            return c.resolve()
    raise InputError(f"cannot find the Hydra configs (configs/{required}).",
                     fix=f"run from a dlqsm checkout or set {CONFIG_ENV}=/path/to/dlqsm/configs.")
