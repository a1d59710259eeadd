"""Tiny data and config helpers for the training tests (no files, CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from dlqsm.lit.train import config_dir
from dlqsm.physics.dipole import DipoleOperator


class TinyQSMDataset(torch.utils.data.Dataset):
    """Random spheres in a spherical mask; field = D chi (1 mm, B0 tilted per sample).

    Deterministic per (seed, index). Follows the dlqsm sample contract.
    """

    def __init__(self, length: int = 4, shape=(16, 16, 16), seed: int = 0, **_):
        self.length, self.shape, self.seed = int(length), tuple(shape), int(seed)

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        rng = np.random.default_rng([self.seed, i])
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in self.shape], indexing="ij"), -1)
        center = np.array(self.shape) / 2
        mask = (np.linalg.norm(grid - center, axis=-1) < min(self.shape) * 0.45).astype(np.float32)
        chi = np.zeros(self.shape, np.float32)
        for _ in range(6):
            c = rng.uniform(0.25, 0.75, 3) * np.array(self.shape)
            r = rng.uniform(1.5, min(self.shape) / 5)
            chi[np.linalg.norm(grid - c, axis=-1) < r] += rng.normal(0, 0.1)
        chi *= mask
        b0 = np.array([rng.normal(0, 0.2), rng.normal(0, 0.2), 1.0])
        b0 /= np.linalg.norm(b0)
        chi_t, mask_t = torch.from_numpy(chi), torch.from_numpy(mask)
        field = DipoleOperator(self.shape, (1.0, 1.0, 1.0), b0).forward(chi_t) * mask_t
        labels = torch.from_numpy((chi != 0).astype(np.int64))
        return {"chi": chi_t[None], "field": field[None].float(), "mask": mask_t[None],
                "b0_dir": torch.tensor(b0, dtype=torch.float32), "voxel_size": torch.ones(3),
                "labels": labels[None]}


def sim_overrides(size: int = 16, train_len: int = 4, val_len: int = 2,
                  recipe: str = "deepqsm") -> list[str]:
    """Overrides for tiny on-the-fly simulated data (the real SimulatedQSMDataset)."""
    return [f"simulation={recipe}", f"simulation.shape=[{size},{size},{size}]",
            f"data.train_dataset.length={train_len}", f"data.val_dataset.length={val_len}",
            "data.num_workers=0", "data.batch_size=2"]


def compose_train(overrides: list[str], out: Path):
    """Compose configs/train.yaml as a Hydra run would, with the run folder ``out``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(out)
        cfg.paths.output_dir = str(out)
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.runtime.cwd = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


