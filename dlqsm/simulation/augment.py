"""Augmentations that keep the physics right.

Axis flips, 90-degree rotations and axis permutations are *signed permutations* of the voxel
axes: output axis a is input axis ``perm[a]``, reversed when ``flips[a]``. Positions transform
as p'_a = s_a p_{perm[a]}, and so does the B0 vector: b'_a = s_a b_{perm[a]}; voxel sizes are
permuted. The dipole kernel is invariant under this joint change (D depends on (k . b)^2 and
|k|^2 only), so ``forward(T chi, T b0) == T forward(chi, b0)`` exactly, for anisotropic voxels
too. Intensity scaling multiplies chi and the fields together. Random crops cut patches: the
field of a patch still holds the contributions of sources outside it (as in patch-based
training), so a cropped pair is not closed under the dipole operator on the patch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from dlqsm.simulation.rng import derive_seed, make_generator, rand, randint, uniform_scalar

VOLUME_KEYS = ("chi", "field", "mask", "labels", "magnitude", "phase", "total_field")
"""Keys holding (..., X, Y, Z) volumes in a sample dict."""

SCALED_KEYS = ("chi", "field", "total_field")
"""Keys multiplied by an intensity scale (ppm quantities)."""

_PERMS = list(itertools.permutations(range(3)))


def _perm_sign(perm) -> int:
    inv = sum(1 for i in range(3) for j in range(i + 1, 3) if perm[i] > perm[j])
    return -1 if inv % 2 else 1


def transform_volume(x: torch.Tensor, perm: Sequence[int], flips: Sequence[bool]) -> torch.Tensor:
    """Apply a signed axis permutation to the last three dimensions of ``x``."""
    nd = x.ndim
    lead = list(range(nd - 3))
    y = x.permute(*lead, *(nd - 3 + int(p) for p in perm))
    dims = [nd - 3 + a for a in range(3) if flips[a]]
    return y.flip(dims) if dims else y


def transform_vector(v: torch.Tensor, perm: Sequence[int], flips: Sequence[bool]) -> torch.Tensor:
    """Transform (..., 3) vectors (B0 directions) like positions: v'_a = s_a v_{perm[a]}."""
    sign = torch.tensor([-1.0 if f else 1.0 for f in flips], dtype=v.dtype, device=v.device)
    return v[..., list(perm)] * sign


def apply_axis_transform(sample: dict, perm: Sequence[int], flips: Sequence[bool]) -> dict:
    """Apply a signed axis permutation to a sample dict (single or batched).

    Volumes (keys in :data:`VOLUME_KEYS`) are permuted/flipped, ``b0_dir`` transformed as a
    vector, ``voxel_size`` permuted; other keys are kept.
    """
    out = dict(sample)
    for k in VOLUME_KEYS:
        if k in out:
            out[k] = transform_volume(out[k], perm, flips)
    if "b0_dir" in out:
        out["b0_dir"] = transform_vector(out["b0_dir"], perm, flips)
    if "voxel_size" in out:
        out["voxel_size"] = out["voxel_size"][..., list(perm)]
    return out


def rot90_transform(k: int, axes: tuple[int, int]) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """(perm, flips) equal to ``torch.rot90(x, k, dims=axes)`` on the spatial axes (0, 1, 2)."""
    perm, flips = [0, 1, 2], [False, False, False]
    a, b = axes
    for _ in range(k % 4):  # rot90 once = flip(b) then swap(a, b) = swap(a, b) then flip(a)
        perm[a], perm[b] = perm[b], perm[a]
        flips[a], flips[b] = flips[b], flips[a]
        flips[a] = not flips[a]
    return tuple(perm), tuple(flips)


def random_axis_transform(generator, *, rotations_only: bool = False,
                          permute: bool = True) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """A random signed permutation: one of 48 (24 proper rotations with ``rotations_only``;
    flips only when ``permute`` is False, e.g. to keep anisotropic voxel order)."""
    perm = _PERMS[int(randint(generator, 0, 5, 1)[0])] if permute else (0, 1, 2)
    flips = [bool(f) for f in (rand(generator, 3) < 0.5).tolist()]
    if rotations_only and _perm_sign(perm) * (-1) ** sum(flips) < 0:
        flips[2] = not flips[2]
    return tuple(perm), tuple(flips)


def scale_intensity(sample: dict, factor: float) -> dict:
    """Multiply chi and the fields (:data:`SCALED_KEYS`) by ``factor`` (linear physics).

    Raises:
        ValueError: for samples with GRE signal, whose wrapped phase cannot be rescaled.
    """
    if "phase" in sample:
        raise ValueError("cannot rescale a sample with a wrapped phase; scale chi before "
                         "simulating the signal (SimulatedQSMDataset(chi_multiplier=...)).")
    out = dict(sample)
    for k in SCALED_KEYS:
        if k in out:
            out[k] = out[k] * factor
    return out


def random_crop(sample: dict, size: Sequence[int], generator) -> dict:
    """Crop every volume of a sample to ``size`` (X, Y, Z) at one random position."""
    ref = next(sample[k] for k in VOLUME_KEYS if k in sample)
    shape = ref.shape[-3:]
    size = [int(s) for s in size]
    if any(s > n for s, n in zip(size, shape, strict=True)):
        raise ValueError(f"crop size {tuple(size)} exceeds the volume {tuple(shape)}")
    start = [int(randint(generator, 0, n - s, 1)[0]) for n, s in zip(shape, size, strict=True)]
    sl = tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))
    out = dict(sample)
    for k in VOLUME_KEYS:
        if k in out:
            out[k] = out[k][(..., *sl)]
    return out


class Augment:
    """Random physics-preserving augmentation of a sample dict.

    Args:
        flip_rotate: apply a random signed axis permutation (B0 and voxel size follow).
        rotations_only: restrict to proper rotations (no mirror images).
        permute: allow axis permutations (else flips only).
        scale: (low, high) intensity scale range for chi and fields, or None.
        crop: patch size (X, Y, Z), or None.
    """

    def __init__(self, *, flip_rotate: bool = True, rotations_only: bool = False,
                 permute: bool = True, scale: Sequence[float] | None = None,
                 crop: Sequence[int] | None = None):
        self.flip_rotate = flip_rotate
        self.rotations_only = rotations_only
        self.permute = permute
        self.scale = scale
        self.crop = crop

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        if self.crop is not None:
            sample = random_crop(sample, self.crop, generator)
        if self.flip_rotate:
            perm, flips = random_axis_transform(generator, rotations_only=self.rotations_only,
                                                permute=self.permute)
            sample = apply_axis_transform(sample, perm, flips)
        if self.scale is not None:
            sample = scale_intensity(sample, uniform_scalar(generator, self.scale))
        return {k: v.contiguous() if isinstance(v, torch.Tensor) else v
                for k, v in sample.items()}


class AugmentedDataset(Dataset):
    """Wraps a dataset with an :class:`Augment`; item i is augmented with seed (seed, i)."""

    def __init__(self, dataset, augment: Augment, seed: int = 0):
        self.dataset = dataset
        self.augment = augment
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        g = make_generator(derive_seed(self.seed, 7919, index))
        return self.augment(self.dataset[index], g)
