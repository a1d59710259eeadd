"""LightningDataModule over map-style QSM datasets (simulated on the fly, on disk, or a mixture).

Samples are dicts with "chi" (1, X, Y, Z) ppm, "field" (1, X, Y, Z) ppm, "mask" (1, X, Y, Z),
"b0_dir" (3,), "voxel_size" (3,) and optionally "labels" (1, X, Y, Z) int64. The validation set is
a separate dataset built with its own fixed seed (distinct from the training seed), so the same
volumes are scored every epoch and in every run.
"""

from __future__ import annotations

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from dlqsm.simulation.sample import Batch, Sample
from dlqsm.simulation.wrappers import MixtureDataset  # noqa: F401  (its former home)


def simulated_dataset(simulation, length: int, seed: int, **overrides):
    """A :class:`dlqsm.simulation.datasets.SimulatedQSMDataset` from a ``configs/simulation``
    node (the recipe shared with ``dlqsm simulate``), with its own length and seed.

    Used from YAML with ``_recursive_: false`` so that the recipe reaches this function
    uninstantiated::

        train_dataset:
          _target_: dlqsm.lit.datamodule.simulated_dataset
          _recursive_: false
          simulation: ${simulation}
          length: 2000
          seed: ${seed}
    """
    from hydra.utils import instantiate

    return instantiate(simulation, length=int(length), seed=int(seed), **overrides)


class CachedDataset(Dataset):
    """Materialise a (small, deterministic) dataset once, e.g. the validation set."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def collate(samples: list[Sample]) -> Batch:
    """Stack a list of sample dicts into a batch dict (tensors stacked, other values listed)."""
    out = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], np.ndarray | float | int):
            out[key] = torch.as_tensor(np.stack(vals))
        else:
            out[key] = vals
    return out


class QSMDataModule(LightningDataModule):
    """Train/val loaders over ready-made datasets (built by Hydra from ``configs/data``).

    Args:
        train_dataset, val_dataset: map-style datasets following the sample contract.
        batch_size: per-process batch size (DDP multiplies it by the number of processes).
        num_workers: loader worker processes; workers persist between epochs when > 0.
        pin_memory: pin host memory (useful with CUDA).
        cache_val: generate the validation samples once and keep them in memory.
        val_batch_size: defaults to ``batch_size``.
    """

    def __init__(self, train_dataset, val_dataset, batch_size: int = 2, num_workers: int = 0,
                 pin_memory: bool = False, cache_val: bool = True,
                 val_batch_size: int | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["train_dataset", "val_dataset"], logger=False)
        seeds = (getattr(train_dataset, "seed", None), getattr(val_dataset, "seed", None))
        if seeds[0] is not None and seeds[0] == seeds[1]:
            raise ValueError("the validation set must use a seed distinct from the training one "
                             f"(both {seeds[0]})")
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self._val = None

    def setup(self, stage: str | None = None) -> None:
        if self._val is None:
            self._val = CachedDataset(self.val_dataset) if self.hparams.cache_val \
                else self.val_dataset

    def _loader(self, dataset, batch_size, shuffle):
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                          pin_memory=self.hparams.pin_memory, persistent_workers=workers > 0,
                          collate_fn=collate, drop_last=shuffle and len(dataset) >= batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        bs = self.hparams.val_batch_size or self.hparams.batch_size
        return self._loader(self._val, bs, shuffle=False)
