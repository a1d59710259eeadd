"""Write simulated datasets to disk (NIfTI per sample, resumable) and stream them back.

Layout of an output folder::

    OUT/
      dataset.json            settings, seed, number of samples, software versions
      manifest.json           per-sample metadata (rebuilt at the end of every run)
      sample_00000/
        chi.nii.gz            ppm, referenced to the mask mean, 0 outside       (X, Y, Z)
        field.nii.gz          local field, ppm, 0 outside the mask              (X, Y, Z)
        mask.nii.gz           uint8 {0, 1}                                      (X, Y, Z)
        labels.nii.gz         int16 head labels (0 where none)                  (X, Y, Z)
        chi_init.nii.gz       optional classical estimate of chi, ppm           (X, Y, Z)
        magnitude.nii.gz      with signal: echoes on the 4th axis               (X, Y, Z, E)
        phase.nii.gz          with signal: wrapped phase, rad                   (X, Y, Z, E)
        total_field.nii.gz    with signal: ppm                                  (X, Y, Z)
        meta.json             index, seed, source, b0_dir, voxel_size, te, b0_tesla, ...

Affines carry the voxel size and the B0 direction (``b0_dir_from_affine(affine) == b0_dir``
with world B0 = +z), so the files can be read by any NIfTI-based tool. Each sample is written
into a hidden temporary folder and renamed when complete: an interrupted run leaves only
whole samples, and re-running the same command skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dlqsm.errors import InputError
from dlqsm.io.atomic import default_dir_mode
from dlqsm.io.nifti import save_nifti
from dlqsm.io.outputs import software_versions, write_json_atomic
from dlqsm.simulation.acquisition import affine_for

SAMPLE_FMT = "sample_{:05d}"
_TMP_PREFIX = ".tmp-sample_"


def _ext(compress: bool) -> str:
    return ".nii.gz" if compress else ".nii"


def write_sample(folder, sample: dict, meta: dict, *, compress: bool = True) -> Path:
    """Write one sample dict (dataset contract, unbatched) and its metadata into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shape = tuple(sample["chi"].shape[-3:])
    aff = affine_for(shape, sample["voxel_size"].tolist(), sample["b0_dir"].tolist())
    ext = _ext(compress)
    save_nifti(folder / f"chi{ext}", sample["chi"][0], aff)
    save_nifti(folder / f"field{ext}", sample["field"][0], aff)
    save_nifti(folder / f"mask{ext}", sample["mask"][0], aff, dtype=np.uint8)
    save_nifti(folder / f"labels{ext}", sample["labels"][0], aff, dtype=np.int16)
    if "chi_init" in sample:
        save_nifti(folder / f"chi_init{ext}", sample["chi_init"][0], aff)
    if "phase" in sample:
        save_nifti(folder / f"magnitude{ext}", sample["magnitude"].permute(1, 2, 3, 0), aff)
        save_nifti(folder / f"phase{ext}", sample["phase"].permute(1, 2, 3, 0), aff)
        save_nifti(folder / f"total_field{ext}", sample["total_field"][0], aff)
    record = dict(meta, shape=list(shape), b0_dir=sample["b0_dir"].tolist(),
                  voxel_size=sample["voxel_size"].tolist(), files_ext=ext)
    if "te" in sample:
        record.update(te=sample["te"].tolist(), b0_tesla=float(sample["b0_tesla"]))
    write_json_atomic(folder / "meta.json", record)
    return folder


class _WithMeta(Dataset):
    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset.sample_with_meta(self.indices[i])


RENAMED_SETTINGS = {"chi_scale": "chi_multiplier", "padding": "padding_fraction",
                    "b0_tesla": "field_strength"}
"""Settings stored under an older name in ``dataset.json`` (old -> new), for resuming."""


def _upgrade_settings(old: dict, new: dict) -> dict:
    """``old`` stored settings with renamed keys spelled as in ``new`` (a two-number
    ``voxel_size`` was a range: now ``voxel_size_range``)."""
    old = dict(old)
    for was, now in RENAMED_SETTINGS.items():
        if now in new and now not in old and was in old and was not in new:
            old[now] = old.pop(was)
    if "voxel_size_range" in new and "voxel_size_range" not in old and "voxel_size" in old:
        two = isinstance(old["voxel_size"], list) and len(old["voxel_size"]) == 2
        old["voxel_size_range"] = old["voxel_size"] if two else None
        old["voxel_size"] = None if two else old["voxel_size"]
    return old


def _check_settings(out: Path, settings: dict, force: bool) -> None:
    path = out / "dataset.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read {path.name} ({exc}).", path=path,
                         fix="delete the file or choose another output folder.") from exc
    new = {k: json.loads(json.dumps(settings[k])) for k in ("seed", "settings")}
    stored = {"seed": old.get("seed"),
              "settings": _upgrade_settings(old.get("settings") or {}, new["settings"])}
    same = stored == new
    if not same and not force:
        raise InputError("the folder holds a dataset simulated with different settings, so "
                         "resuming would mix them.", path=out,
                         fix="choose another out_dir, delete it, or pass force=true to "
                             "overwrite its samples.")


def write_dataset(dataset, out_dir, *, indices=None, compress: bool = True,
                  progress: bool = True, num_workers: int = 0, force: bool = False) -> dict:
    """Simulate ``dataset`` (a :class:`SimulatedQSMDataset`) into ``out_dir``, resumably.

    Args:
        indices: sample indices to write (default: all).
        compress: write ``.nii.gz`` (else ``.nii``).
        progress: show a tqdm progress bar.
        num_workers: data-loader workers that simulate in parallel (writing stays in this
            process); results do not depend on it.
        force: overwrite existing samples and accept changed settings.

    Returns:
        {"written": n, "skipped": n, "out_dir": str, "manifest": str}.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"seed": dataset.seed, "length": len(dataset),
                "settings": dataset.config.as_dict()}
    _check_settings(out, settings, force)
    write_json_atomic(out / "dataset.json", dict(settings, versions=software_versions(),
                                                 format="dlqsm-simulated-v1"))
    for stale in out.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    indices = range(len(dataset)) if indices is None else indices
    done = {i for i in indices if (out / SAMPLE_FMT.format(i) / "meta.json").exists()}
    todo = [i for i in indices if force or i not in done]
    loader = DataLoader(_WithMeta(dataset, todo), batch_size=None, num_workers=num_workers)
    written = 0
    try:
        for sample, meta in tqdm(loader, total=len(todo), disable=not progress,
                                 desc="simulate", unit="sample"):
            _write_atomic(out, sample, meta, compress)
            written += 1
    finally:
        manifest = write_manifest(out)
    return {"written": written, "skipped": len(list(indices)) - len(todo), "out_dir": str(out),
            "manifest": str(manifest)}


def _write_atomic(out: Path, sample: dict, meta: dict, compress: bool) -> None:
    write_folder_atomic(out / SAMPLE_FMT.format(meta["index"]),
                        lambda tmp: write_sample(tmp, sample, meta, compress=compress))


def write_folder_atomic(final: Path, fill) -> Path:
    """Create the folder ``final`` whole or not at all: ``fill(tmp)`` writes its files into a
    hidden temporary folder beside it, which then replaces ``final`` (an existing one is
    removed first). An interruption leaves only a ``.tmp-sample_*`` folder, which
    :func:`write_dataset` clears on its next run."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_TMP_PREFIX))
    os.chmod(tmp, default_dir_mode())  # mkdtemp makes 0700 folders
    try:
        fill(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_manifest(out_dir) -> Path:
    """Rebuild ``manifest.json`` from the per-sample ``meta.json`` files."""
    out = Path(out_dir)
    entries = []
    for folder in sorted(out.glob("sample_*")):
        meta_path = folder / "meta.json"
        if folder.is_dir() and meta_path.exists():
            entries.append(dict(json.loads(meta_path.read_text()), folder=folder.name))
    return write_json_atomic(out / "manifest.json", {"n_samples": len(entries),
                                                      "samples": entries})


class DiskQSMDataset(Dataset):
    """Reads a folder written by :func:`write_dataset`: whole samples or random patches of them.

    Items follow the :class:`~dlqsm.simulation.datasets.SimulatedQSMDataset` contract (signal
    keys when present on disk and ``signal`` is not False; ``chi_init`` when written).

    Args:
        root: the output folder.
        signal: None loads the signal when present; False never loads it.
        patch_size: None returns whole samples; voxels (one or three ints) returns patches of
            that size, cropped at a random position whose centre lies in the brain's bounding
            box (volumes smaller than the patch are zero-padded). Patches are read from
            uncompressed files without loading the whole volume (``dlqsm simulate
            compress=false``); ``.nii.gz`` works but decompresses every time.
        patches_per_volume: items per stored sample in patch mode (the epoch length is
            ``len(samples) * patches_per_volume``).
        flips: in patch mode, flip each patch along random axes (with B0 along an axis, a flip
            leaves the dipole kernel unchanged, so the field stays consistent with chi; only
            applied to samples whose B0 is along z).
        seed: None draws new patch positions and flips at every access (training); an integer
            makes item ``i`` depend only on (seed, i), so validation patches are the same in
            every epoch and run.
    """

    def __init__(self, root, *, signal: bool | None = None, patch_size=None,
                 patches_per_volume: int = 1, flips: bool = False, seed: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError("simulated dataset folder does not exist.", path=self.root,
                             fix="run `dlqsm simulate out_dir=...` first.")
        manifest = self.root / "manifest.json"
        if manifest.exists():
            entries = json.loads(manifest.read_text())["samples"]
            self.entries = [e for e in entries if (self.root / e["folder"]).is_dir()]
        else:
            self.entries = [dict(json.loads((f / "meta.json").read_text()), folder=f.name)
                            for f in sorted(self.root.glob("sample_*"))
                            if (f / "meta.json").exists()]
        if not self.entries:
            raise InputError("no simulated samples found.", path=self.root,
                             fix="run `dlqsm simulate out_dir=...` into this folder.")
        self.signal = signal
        if patch_size is not None:
            ps = [int(patch_size)] * 3 if isinstance(patch_size, int) else \
                [int(p) for p in patch_size]
            if len(ps) != 3 or min(ps) < 1:
                raise ValueError(f"patch_size must be one or three positive ints, got "
                                 f"{patch_size!r}")
            patch_size = tuple(ps)
        self.patch_size = patch_size
        self.patches_per_volume = max(1, int(patches_per_volume)) if patch_size else 1
        self.flips = bool(flips)
        self.seed = None if seed is None else int(seed)
        self._bbox: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.entries) * self.patches_per_volume

    def meta(self, index: int) -> dict:
        """Metadata of the stored sample behind item ``index`` (from its meta.json)."""
        return self.entries[index // self.patches_per_volume]

    def _proxy(self, folder: Path, name: str, ext: str):
        path = folder / f"{name}{ext}"
        try:
            return nib.load(str(path)).dataobj
        except Exception as exc:  # nibabel raises several types for broken files
            raise InputError(f"cannot read simulated sample file ({exc}).", path=path,
                             fix="re-run the `dlqsm simulate` command that wrote it "
                                 "(force=true rewrites it).") from exc

    def _read(self, folder: Path, name: str, ext: str, window, dtype=np.float32):
        proxy = self._proxy(folder, name, ext)
        arr = proxy[window] if window is not None else proxy
        return torch.from_numpy(np.ascontiguousarray(np.asarray(arr, dtype=dtype)))

    def _mask_bbox(self, vol: int, folder: Path, ext: str) -> tuple:
        if vol not in self._bbox:
            m = np.asarray(self._proxy(folder, "mask", ext)) > 0
            idx = [np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != d)))
                   for d in range(3)]
            self._bbox[vol] = tuple((int(i[0]), int(i[-1])) if i.size else (0, n - 1)
                                    for i, n in zip(idx, m.shape, strict=True))
        return self._bbox[vol]

    def _window(self, index: int, vol: int, folder: Path, ext: str, shape):
        """(slices into the stored volume, zero-padding per side, flip axes) of item index."""
        from dlqsm.simulation.rng import derive_seed

        rng = np.random.default_rng(None if self.seed is None else derive_seed(self.seed, index))
        bbox = self._mask_bbox(vol, folder, ext)
        slices, pads = [], []
        for (lo, hi), n, p in zip(bbox, shape, self.patch_size, strict=True):
            if n <= p:
                start = 0
            else:
                centre = int(rng.integers(lo, hi + 1))
                start = min(max(centre - p // 2, 0), n - p)
            stop = min(start + p, n)
            slices.append(slice(start, stop))
            pads.append(p - (stop - start))
        flips = [d for d in range(3) if self.flips and rng.random() < 0.5]
        return tuple(slices), pads, flips

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        vol = index // self.patches_per_volume
        e = self.entries[vol]
        folder = self.root / e["folder"]
        ext = e.get("files_ext", ".nii.gz")
        window, pads, flips = None, [0, 0, 0], []
        if self.patch_size is not None:
            window, pads, flips = self._window(index, vol, folder, ext, e["shape"])
            if any(abs(b) > 1e-6 for b in np.asarray(e["b0_dir"][:2], dtype=float)):
                flips = []  # B0 off the z axis: a flip would change the dipole kernel
        names = [("chi", np.float32), ("field", np.float32), ("mask", np.float32),
                 ("labels", np.int64)]
        if (folder / f"chi_init{ext}").exists():
            names.append(("chi_init", np.float32))
        out = {name: self._read(folder, name, ext, window, dtype)[None]
               for name, dtype in names}
        if self.signal is not False and (folder / f"phase{ext}").exists():
            if window is not None:
                raise ValueError("patches of samples with signal are not supported; pass "
                                 "signal=False")
            out["magnitude"] = self._read(folder, "magnitude", ext, None).permute(3, 0, 1, 2)
            out["phase"] = self._read(folder, "phase", ext, None).permute(3, 0, 1, 2)
            out["te"] = torch.tensor(e["te"], dtype=torch.float32)
            out["b0_tesla"] = torch.tensor(float(e["b0_tesla"]), dtype=torch.float32)
            out["total_field"] = self._read(folder, "total_field", ext, None)[None]
        if any(pads):
            pad = []
            for p in reversed(pads):
                pad += [0, p]
            out = {k: torch.nn.functional.pad(v, pad) for k, v in out.items()}
        if flips:
            out = {k: torch.flip(v, [d + 1 for d in flips]) for k, v in out.items()}
        out["b0_dir"] = torch.tensor(e["b0_dir"], dtype=torch.float32)
        out["voxel_size"] = torch.tensor(e["voxel_size"], dtype=torch.float32)
        return {k: v.contiguous() for k, v in out.items()}
