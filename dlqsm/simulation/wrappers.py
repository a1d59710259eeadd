"""Datasets built from other datasets (plain torch ``Dataset``s, no Lightning).

* :class:`MixtureDataset`: a deterministic weighted mixture (e.g. on-the-fly simulation and
  samples on disk, ``data=mixture``);
* :class:`WithInitialEstimate`: adds a classical inversion ``chi_init`` of each whole sample
  (``simulation=head_cases``), for networks that refine it
  (:class:`dlqsm.models.InversionResidualNet`).
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset

from dlqsm.pipeline.batched import INIT_KEY, classical_estimate

__all__ = ["MixtureDataset", "WithInitialEstimate"]


class MixtureDataset(Dataset):
    """Deterministic weighted mixture of datasets: item i comes from dataset j with prob w_j.

    Args:
        datasets: list of map-style datasets with the same sample contract.
        weights: relative sampling weights (default: equal).
        length: number of items (default: the sum of the dataset lengths).
        seed: the choice of (dataset, index) for item i depends only on (seed, i).
    """

    def __init__(self, datasets, weights=None, length: int | None = None, seed: int = 0):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("MixtureDataset needs at least one dataset")
        w = np.ones(len(self.datasets)) if weights is None else np.asarray(weights, float)
        if w.shape != (len(self.datasets),) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"need one non-negative weight per dataset, got {weights!r}")
        self.cum = np.cumsum(w / w.sum())
        self.length = int(length) if length is not None else sum(len(d) for d in self.datasets)
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, int(i)])
        j = min(int(np.searchsorted(self.cum, rng.random(), side="right")), len(self.cum) - 1)
        ds = self.datasets[j]
        return ds[int(rng.integers(len(ds)))]


class WithInitialEstimate(Dataset):
    """Adds ``chi_init`` (a classical inversion of the whole sample) to a simulated dataset.

    Wraps a dataset with ``sample_with_meta``, ``seed`` and ``config`` (e.g.
    :class:`dlqsm.simulation.datasets.HeadCaseDataset`), so that ``dlqsm simulate`` writes the
    estimate next to each sample and :class:`InversionResidualNet` trains on patches of it.

    Args:
        dataset: the dataset, or a callable ``(length=, seed=) -> dataset`` (a Hydra partial).
        method, params: the classical inversion (must match the model's).
        length, seed, **settings: passed to a callable ``dataset`` (e.g. ``shape``).
    """

    def __init__(self, dataset, method: str = "tv", params: dict | None = None,
                 length: int | None = None, seed: int | None = None, **settings):
        if callable(dataset) and not isinstance(dataset, Dataset):
            kwargs = {k: v for k, v in (("length", length), ("seed", seed)) if v is not None}
            dataset = dataset(**kwargs, **settings)
        elif settings:
            raise TypeError(f"settings {sorted(settings)} need a dataset factory, not a dataset")
        self.dataset = dataset
        self.method = str(method)
        self.params = dict(params or {})
        self.seed = dataset.seed
        self.config = self

    def as_dict(self) -> dict:
        """Settings for ``dataset.json``: the wrapped dataset's and the inversion."""
        return dict(self.dataset.config.as_dict(),
                    initial_estimate={"method": self.method, "params": self.params})

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_with_meta(self, index: int):
        sample, meta = self.dataset.sample_with_meta(index)
        b = {k: v[None] for k, v in sample.items() if k in ("field", "mask", "b0_dir",
                                                             "voxel_size")}
        sample[INIT_KEY] = classical_estimate(b["field"], b["mask"], b["b0_dir"],
                                              b["voxel_size"], method=self.method,
                                              params=self.params)[0]
        meta = dict(meta, initial_estimate={"method": self.method, "params": self.params})
        return sample, meta

    def __getitem__(self, index: int):
        return self.sample_with_meta(int(index))[0]
