"""Datasets built from other datasets (plain torch ``Dataset``s, no Lightning).

* :class:`MixtureDataset`: a deterministic weighted mixture (e.g. on-the-fly simulation and
  samples on disk, ``data=mixture``);
* :class:`WithInitialEstimate`: adds a classical inversion ``chi_init`` of each whole sample
  (``simulation=head_cases``), for networks that refine it
  (:class:`dlqsm.models.InversionResidualNet`);
* :func:`reestimate_dataset`: a copy of a dataset on disk whose ``chi_init`` comes from another
  classical inversion (other files hard-linked, not copied), e.g. to train a refining network
  on estimates with the per-scan TV weight (``{"alpha": "auto"}``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from dlqsm.pipeline.batched import INIT_KEY, classical_estimate

__all__ = ["MixtureDataset", "WithInitialEstimate", "reestimate_dataset"]


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


def reestimate_dataset(src, dst, *, method: str = "tv", params: dict | None = None,
                       force: bool = False, progress: bool = True) -> dict:
    """Copy the dataset folder ``src`` (written by ``dlqsm simulate``) to ``dst`` with a new
    ``chi_init`` per sample: ``method`` with ``params`` on the stored local field and mask, in
    the sample's own geometry (voxel size, B0 direction from meta.json).

    Every other file is hard-linked when ``src`` and ``dst`` share a file system (copied
    otherwise), so a copy costs only its new estimates. Each sample is written into a temporary
    folder and renamed when complete: an interrupted run resumes where it stopped (samples
    already present are skipped unless ``force``). ``dataset.json`` and each ``meta.json``
    record the new ``initial_estimate``; ``manifest.json`` is rebuilt.

    Returns:
        {"written": n, "skipped": n, "out_dir": str}.

    Raises:
        InputError: ``src`` is not a dataset folder; ``dst`` holds estimates made with other
            settings (pass ``force=True`` to replace them).
    """
    import nibabel as nib
    import torch
    from tqdm.auto import tqdm

    from dlqsm.errors import InputError
    from dlqsm.io.nifti import save_nifti
    from dlqsm.io.outputs import write_json_atomic
    from dlqsm.simulation.disk import (
        _TMP_PREFIX,
        DiskQSMDataset,
        write_folder_atomic,
        write_manifest,
    )

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise InputError("the re-estimated dataset must go to another folder.", path=dst,
                         fix="choose a new output folder (other files are hard-linked).")
    data = DiskQSMDataset(src, signal=False)
    estimate = {"method": str(method), "params": dict(params or {})}
    info_path = src / "dataset.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    info["settings"] = dict(info.get("settings") or {}, initial_estimate=estimate)
    dst.mkdir(parents=True, exist_ok=True)
    old_path = dst / "dataset.json"
    if old_path.exists() and not force:
        old = json.loads(old_path.read_text()).get("settings", {}).get("initial_estimate")
        if old != json.loads(json.dumps(estimate)):
            raise InputError(f"the folder holds estimates made with {old}, not {estimate}.",
                             path=dst, fix="choose another folder or pass force=True.")
    write_json_atomic(old_path, info)
    for stale in dst.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    written = skipped = 0
    for entry in tqdm(data.entries, disable=not progress, desc="re-estimate", unit="sample"):
        final = dst / entry["folder"]
        if final.exists() and (final / "meta.json").exists() and not force:
            skipped += 1
            continue
        ext = entry.get("files_ext", ".nii.gz")
        folder = src / entry["folder"]
        # only the field and mask are read (not chi, labels or the old estimate)
        field_img = nib.load(str(folder / f"field{ext}"))
        field, mask = (torch.from_numpy(np.asarray(img.dataobj, dtype=np.float32))[None, None]
                       for img in (field_img, nib.load(str(folder / f"mask{ext}"))))
        chi0 = classical_estimate(field, mask, torch.tensor(entry["b0_dir"]),
                                  torch.tensor(entry["voxel_size"]), **estimate)[0, 0]

        def fill(tmp: Path, folder=folder, entry=entry, ext=ext, chi0=chi0,
                 affine=field_img.affine) -> None:
            for f in folder.iterdir():
                if f.name in (f"{INIT_KEY}{ext}", "meta.json") or not f.is_file():
                    continue
                try:
                    os.link(f, tmp / f.name)
                except OSError:  # another file system
                    shutil.copy2(f, tmp / f.name)
            save_nifti(tmp / f"{INIT_KEY}{ext}", chi0, affine)
            meta = {k: v for k, v in entry.items() if k != "folder"}
            write_json_atomic(tmp / "meta.json", dict(meta, initial_estimate=estimate))

        write_folder_atomic(final, fill)
        written += 1
    write_manifest(dst)
    return {"written": written, "skipped": skipped, "out_dir": str(dst)}
