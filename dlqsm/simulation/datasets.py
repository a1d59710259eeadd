"""Torch datasets of simulated (susceptibility, field) pairs, optionally with GRE signal.

Sample contract (a dict of tensors, typed as :class:`dlqsm.simulation.sample.Sample` and checked
by :func:`dlqsm.simulation.sample.check_sample`; keys and shapes are relied on by the training
code):

================  ====================  =================================================
key               shape / dtype         meaning
================  ====================  =================================================
``chi``           (1, X, Y, Z) float32  ppm, demeaned inside ``mask``, zero outside
``field``         (1, X, Y, Z) float32  local field ppm = mask * D(mask * chi) (+ noise
                                        inside the mask), zero outside
``mask``          (1, X, Y, Z) float32  {0, 1}
``b0_dir``        (3,) float32          unit B0 vector in voxel coordinates
``voxel_size``    (3,) float32          mm
``labels``        (1, X, Y, Z) int64    head labels (:data:`dlqsm.simulation.head.LABELS`),
                                        0 where none (always 0 for "shapes")
================  ====================  =================================================

With ``signal=True`` also: ``magnitude`` and ``phase`` (E, X, Y, Z) float32 (wrapped phase,
rad), ``te`` (E,) s, ``b0_tesla`` () T and ``total_field`` (1, X, Y, Z) ppm: the field of all
sources (plus the shim residual) inside the region with signal (the head for heads, the
whole volume for shapes), zero elsewhere.

Sources: "shapes" (random geometric shapes and textures; the mask is the whole volume or,
with ``shape_mask``, a random smooth blob, in which case the shapes outside it act as
background sources), "head" (procedural head phantom, brain mask) and "hybrid" (head phantom
with random shapes added inside the brain). A dict {source: weight} mixes them.

Sample ``i`` of :class:`SimulatedQSMDataset` depends only on (seed, i), so data-loader
workers are reproducible. :meth:`SimulatedQSMDataset.generate_batch` generates a whole batch
directly on a device (vectorised shapes, batched FFTs), the fast path for training on GPU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from dlqsm.simulation.acquisition import (
    dipole_kernels,
    forward_field,
    local_field,
    reference_chi,
    sample_geometry,
    shim_field,
)
from dlqsm.simulation.anatomy import AIR_PPM, tissue_parameters
from dlqsm.simulation.phantom import head_phantom
from dlqsm.simulation.rng import (
    derive_seed,
    make_generator,
    rand,
    randn,
    random_b0_dirs,
    uniform,
    uniform_scalar,
)
from dlqsm.simulation.sample import Sample
from dlqsm.simulation.shapes import DEEPQSM_SHAPES, DEFAULT_SHAPES, ShapeSpec, random_shapes
from dlqsm.simulation.signal import (
    echo_times,
    multi_echo_signal,
    random_m0_r2star,
    random_phase_offset,
)
from dlqsm.simulation.textures import grid_coords, smooth_noise

SOURCES = ("shapes", "head", "hybrid")

HYBRID_SHAPES = [
    ShapeSpec(kind="ellipsoid", count=(3, 12), size_mm=(1.0, 8.0), value=(0.0, 0.08)),
    ShapeSpec(kind="box", count=(0, 6), size_mm=(1.0, 6.0), value=(0.0, 0.08)),
    ShapeSpec(kind="cylinder", count=(0, 4), size_mm=(0.5, 2.0), length_mm=(5.0, 25.0),
              distribution="uniform", value=(0.1, 0.5)),
]
"""Shapes added inside the brain of hybrid samples."""

_PRESETS = {"default": DEFAULT_SHAPES, "deepqsm": DEEPQSM_SHAPES, "hybrid": HYBRID_SHAPES}


@dataclass
class SimulationConfig:
    """All knobs of the simulator (see :class:`SimulatedQSMDataset` for their meaning)."""

    shape: Sequence[int] = (64, 64, 64)
    source: str | dict = "shapes"
    voxel_size: float | Sequence[float] | None = None
    voxel_size_range: Sequence[float] | None = None
    isotropic_prob: float = 0.0
    max_tilt_deg: float = 30.0
    padding: int | Sequence[int] = 0
    noise_std: float | Sequence[float] = 0.0
    lesion_prob: float = 0.4
    chi_multiplier: float | Sequence[float] = 1.0
    shapes: str | list | None = None
    shape_mode: str = "add"
    smooth_texture: float = 0.02
    fine_texture: float = 0.01
    shape_mask: str | float = "full"
    hybrid_shapes: str | list | None = "hybrid"
    head_scale: float | Sequence[float] | None = None
    head_rotation_deg: float = 5.0
    signal: bool = False
    n_echoes: int = 4
    first_te: float | Sequence[float] = (0.003, 0.006)
    delta_te: float | Sequence[float] = (0.003, 0.008)
    field_strength: float | Sequence[float] = 3.0
    snr: float | Sequence[float] | None = (20.0, 100.0)
    shim_ppm: float = 0.0
    phase_offset: bool = True
    extra: dict = field(default_factory=dict)
    chi_scale: float | Sequence[float] | None = None  # deprecated name of chi_multiplier
    b0_tesla: float | Sequence[float] | None = None  # deprecated name of field_strength

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) != 3:
            raise ValueError(f"shape must have three entries, got {self.shape}")
        self.source_weights = _source_weights(self.source)
        if self.chi_scale is not None:
            _deprecated("chi_scale", "chi_multiplier")
            self.chi_multiplier, self.chi_scale = self.chi_scale, None
        if self.b0_tesla is not None:
            _deprecated("b0_tesla", "field_strength")
            self.field_strength, self.b0_tesla = self.b0_tesla, None
        self.voxel_size, self.voxel_size_range = voxel_size_settings(self.voxel_size,
                                                                     self.voxel_size_range)

    @property
    def voxel_size_spec(self):
        """What :func:`~dlqsm.simulation.acquisition.sample_geometry` draws voxel sizes from."""
        return self.voxel_size if self.voxel_size_range is None else self.voxel_size_range

    def as_dict(self) -> dict:
        """Plain JSON-able dict of the settings (ShapeSpecs as dicts)."""
        d = asdict(self)
        return {k: v for k, v in d.items() if k not in ("extra", "chi_scale", "b0_tesla")}


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"the simulation setting {old!r} is deprecated; use {new!r}.",
                  DeprecationWarning, stacklevel=4)


def voxel_size_settings(voxel_size, voxel_size_range):
    """``(voxel_size, voxel_size_range)`` with exactly one of them set (mm).

    ``voxel_size`` is one or three numbers (a fixed size), ``voxel_size_range`` a (low, high)
    range each axis is drawn from. Neither: 1 mm. A two-number ``voxel_size`` is the deprecated
    spelling of a range.
    """
    if voxel_size is not None and np.asarray(voxel_size).size == 2:
        _deprecated("voxel_size with two numbers (a range)", "voxel_size_range")
        if voxel_size_range is None:
            voxel_size, voxel_size_range = None, voxel_size
    if voxel_size is not None and voxel_size_range is not None:
        raise ValueError(f"voxel_size {list(np.ravel(voxel_size))} and voxel_size_range "
                         f"{list(voxel_size_range)} are both set: give one (set the other to "
                         "null, e.g. simulation.voxel_size_range=null)")
    if voxel_size_range is not None:
        r = tuple(float(v) for v in voxel_size_range)
        if len(r) != 2 or r[0] <= 0 or r[1] < r[0]:
            raise ValueError(f"voxel_size_range must be (low, high) in mm, got {r}")
        return None, r
    v = (1.0, 1.0, 1.0) if voxel_size is None else np.ravel(np.asarray(voxel_size, float))
    if len(v) not in (1, 3) or min(v) <= 0:
        raise ValueError(f"voxel_size must be one or three positive numbers (mm), got {list(v)}")
    return tuple(float(x) for x in np.broadcast_to(v, (3,))), None


def _source_weights(source) -> dict[str, float]:
    if isinstance(source, str):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES} or a dict of weights, "
                             f"got {source!r}")
        return {source: 1.0}
    weights = {str(k): float(v) for k, v in dict(source).items() if float(v) > 0}
    bad = sorted(set(weights) - set(SOURCES))
    if bad or not weights:
        raise ValueError(f"source weights must name {SOURCES} with positive weights, got "
                         f"{source!r}")
    total = sum(weights.values())
    return {k: v / total for k, v in weights.items()}


def _specs(value, default):
    if value is None:
        return default
    if isinstance(value, str):
        if value not in _PRESETS:
            raise ValueError(f"unknown shape preset {value!r}; use one of {sorted(_PRESETS)}")
        return _PRESETS[value]
    return [ShapeSpec.coerce(s) for s in value]


class Simulator:
    """Generates batches of simulated samples from a :class:`SimulationConfig`."""

    def __init__(self, config: SimulationConfig):
        self.config = config
        self.shape_specs = _specs(config.shapes, DEFAULT_SHAPES)
        self.hybrid_specs = _specs(config.hybrid_shapes, HYBRID_SHAPES)

    def generate(self, batch: int, generator: torch.Generator, device=None, *,
                 with_meta: bool = False):
        """A batch as a dict of (B, ...) tensors on ``device`` (see the module docstring).

        With ``with_meta`` also a list of per-sample metadata dicts (source, b0_dir, ...).
        """
        cfg = self.config
        dev = torch.device("cpu") if device is None else torch.device(device)
        b0, vs = sample_geometry(generator, batch, voxel_size=cfg.voxel_size_spec,
                                 max_tilt_deg=cfg.max_tilt_deg, isotropic_prob=cfg.isotropic_prob)
        sources = self._draw_sources(generator, batch)
        parts = self._sources(sources, vs, generator, dev)
        chi_all, mask, labels, signal_mask, outside, meta = parts
        scale = torch.tensor([uniform_scalar(generator, cfg.chi_multiplier) for _ in range(batch)],
                             device=dev).view(batch, 1, 1, 1)
        m = mask.to(chi_all.dtype)
        full = bool(mask.all())  # whole-volume masks: skip the masking arithmetic
        if not torch.all(scale == 1):
            chi_all = chi_all * (scale if full else 1 + (scale - 1) * m)
        kernel = dipole_kernels(cfg.shape, vs, b0, padding=cfg.padding, device=dev)
        if full:
            chi = chi_all - chi_all.mean(dim=(-3, -2, -1), keepdim=True)
            field = forward_field(chi.unsqueeze(1), vs, b0, padding=cfg.padding, kernel=kernel)
            field = field + self._field_noise(generator, batch, dev)
        else:
            chi = reference_chi(chi_all, mask)
            field = local_field(chi.unsqueeze(1), m.unsqueeze(1), vs, b0, padding=cfg.padding,
                                kernel=kernel)
            field = field + self._field_noise(generator, batch, dev) * m.unsqueeze(1)
        out = {"chi": chi.unsqueeze(1), "field": field, "mask": m.unsqueeze(1),
               "b0_dir": b0.to(dev), "voxel_size": vs.to(dev), "labels": labels.unsqueeze(1)}
        if cfg.signal:
            out.update(self._signal(chi_all, outside, labels, signal_mask, sources, vs, b0,
                                    kernel, generator, meta))
        for i in range(batch):
            meta[i].update(source=sources[i], b0_dir=b0[i].tolist(), voxel_size=vs[i].tolist(),
                           chi_multiplier=float(scale.view(-1)[i]))
        return (out, meta) if with_meta else out

    def _draw_sources(self, generator, batch: int) -> list[str]:
        names = list(self.config.source_weights)
        w = torch.tensor([self.config.source_weights[n] for n in names])
        cum = torch.cumsum(w, 0)
        u = rand(generator, batch).cpu()
        return [names[min(int(torch.searchsorted(cum, x * cum[-1], right=True)), len(names) - 1)]
                for x in u]

    def _sources(self, sources, vs, generator, dev):
        cfg = self.config
        B = len(sources)
        X, Y, Z = cfg.shape
        chi = torch.zeros(B, X, Y, Z, device=dev)
        mask = torch.ones(B, X, Y, Z, dtype=torch.bool, device=dev)
        labels = torch.zeros(B, X, Y, Z, dtype=torch.int64, device=dev)
        signal_mask = torch.ones(B, X, Y, Z, dtype=torch.bool, device=dev)
        outside = torch.zeros(B, device=dev)
        meta = [{} for _ in range(B)]
        idx = [i for i, s in enumerate(sources) if s == "shapes"]
        if idx:
            chi[idx] = random_shapes(len(idx), cfg.shape, vs[idx], generator,
                                     specs=self.shape_specs, mode=cfg.shape_mode,
                                     smooth_texture=cfg.smooth_texture,
                                     fine_texture=cfg.fine_texture, device=dev)
            for i in idx:
                blob = self._blob(generator)
                if blob:
                    mask[i] = random_blob(cfg.shape, vs[i].tolist(), generator, device=dev)
                meta[i]["mask"] = "blob" if blob else "full"
        heads = [i for i, s in enumerate(sources) if s in ("head", "hybrid")]
        for i in heads:
            ph = head_phantom(cfg.shape, vs[i].tolist(), generator=generator,
                              scale=cfg.head_scale, max_rotation_deg=cfg.head_rotation_deg,
                              lesion_prob=cfg.lesion_prob, device=dev)
            chi[i], labels[i], mask[i], signal_mask[i] = (ph.chi, ph.labels, ph.brain_mask,
                                                         ph.head_mask)
            outside[i] = AIR_PPM
            meta[i].update(head_scale=ph.scale, lesions=ph.has_lesions)
        hyb = [i for i in heads if sources[i] == "hybrid"]
        if hyb:
            extra = random_shapes(len(hyb), cfg.shape, vs[hyb], generator,
                                  specs=self.hybrid_specs, mode="add", device=dev)
            chi[hyb] = chi[hyb] + extra * mask[hyb]
        return chi, mask, labels, signal_mask, outside, meta

    def _blob(self, generator) -> bool:
        sm = self.config.shape_mask
        if sm == "full":
            return False
        if sm == "blob":
            return True
        return bool(rand(generator, 1)[0] < float(sm))

    def _field_noise(self, generator, batch, dev) -> torch.Tensor:
        std = self.config.noise_std
        if isinstance(std, (int, float)) and std == 0:
            return torch.zeros((), device=dev)
        s = torch.tensor([uniform_scalar(generator, std) for _ in range(batch)], device=dev)
        return s.view(batch, 1, 1, 1, 1) * randn(generator, batch, 1, *self.config.shape,
                                                  device=dev)

    def _signal(self, chi_all, outside, labels, signal_mask, sources, vs, b0, kernel,
                generator, meta):
        cfg = self.config
        B = chi_all.shape[0]
        dev = chi_all.device
        total = forward_field((chi_all - outside.view(B, 1, 1, 1)).unsqueeze(1), vs, b0,
                              padding=cfg.padding, kernel=kernel)[:, 0]
        E = cfg.n_echoes
        mags = torch.empty(B, E, *cfg.shape, device=dev)
        phases = torch.empty(B, E, *cfg.shape, device=dev)
        tes, b0s = [], []
        for i in range(B):
            v = vs[i].tolist()
            if cfg.shim_ppm > 0:
                total[i] = total[i] + shim_field(cfg.shape, v, cfg.shim_ppm, generator,
                                                 device=dev)
            te = echo_times(generator, cfg.n_echoes, first_te=cfg.first_te,
                            delta_te=cfg.delta_te)
            b0t = _choice(generator, cfg.field_strength)
            if sources[i] == "shapes":
                m0, r2 = random_m0_r2star(cfg.shape, v, generator, chi=chi_all[i],
                                          b0_tesla=b0t, device=dev)
            else:
                m0, r2 = tissue_parameters(labels[i], b0t)
            phi0 = (random_phase_offset(cfg.shape, v, generator, device=dev)
                    if cfg.phase_offset else torch.zeros_like(m0))
            snr = None if cfg.snr is None else uniform_scalar(generator, cfg.snr)
            sig = multi_echo_signal(total[i], te, b0t, m0=m0, r2star=r2, phi0=phi0, snr=snr,
                                    signal_mask=signal_mask[i], generator=generator)
            mags[i], phases[i] = sig.magnitude, sig.phase
            tes.append(te)
            b0s.append(b0t)
            meta[i].update(te=te.tolist(), b0_tesla=b0t, snr=snr)
        return {"magnitude": mags, "phase": phases,
                "te": torch.stack(tes).to(dev), "b0_tesla": torch.tensor(b0s, device=dev),
                "total_field": (total * signal_mask).unsqueeze(1)}


def _choice(generator, value) -> float:
    """A number, or one element of a list chosen uniformly."""
    if isinstance(value, (int, float)):
        return float(value)
    vals = [float(v) for v in value]
    return vals[min(int(float(rand(generator, 1)[0]) * len(vals)), len(vals) - 1)]


def random_blob(shape: Sequence[int], voxel_size, generator, *, device=None) -> torch.Tensor:
    """A random smooth, brain-sized blob mask (X, Y, Z) bool: an ellipsoid with semi-axes
    35-48 % of the field of view whose surface is perturbed by a smooth random field."""
    x, y, z = grid_coords(shape, voxel_size, device=device)
    fov = [n * float(h) for n, h in zip(shape, voxel_size, strict=True)]
    axes = uniform(generator, 0.35, 0.48, 3).cpu().tolist()
    r2 = sum((c / (a * f)) ** 2 for c, a, f in zip((x, y, z), axes, fov, strict=True))
    noise = smooth_noise(shape, voxel_size, min(fov) / 4, generator, device=device)
    return torch.sqrt(r2) + 0.12 * noise < 1.0


class SeededDataset(Dataset):
    """Map-style dataset whose item ``i`` depends only on (``seed``, ``i``).

    Subclasses implement ``sample_with_meta(index) -> (sample, meta)``; ``__getitem__`` returns
    the sample.
    """

    length: int
    seed: int
    item_name = "samples"

    def __len__(self) -> int:
        return self.length

    def sample_seed(self, index: int) -> int:
        """The seed of item ``index``."""
        return derive_seed(self.seed, index)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} {self.item_name}")

    @staticmethod
    def _check_settings(config_cls, settings: dict, what: str) -> None:
        """Refuse keyword settings that are not fields of the dataclass ``config_cls``."""
        unknown = sorted(set(settings) - {f.name for f in fields(config_cls)})
        if unknown:
            raise TypeError(f"unknown {what} settings: {', '.join(unknown)}")

    def __getitem__(self, index: int) -> Sample:
        return self.sample_with_meta(int(index))[0]


class SimulatedQSMDataset(SeededDataset):
    """Map-style dataset of simulated QSM training pairs (deterministic per index).

    Args:
        length: number of samples.
        shape: (X, Y, Z) matrix.
        seed: dataset seed; sample i is generated from ``derive_seed(seed, i)``.
        source: "shapes", "head", "hybrid" or a dict of weights, e.g. {"shapes": 0.5,
            "head": 0.25, "hybrid": 0.25}.
        voxel_size: a fixed voxel size, one or three numbers (mm); default 1 mm.
        voxel_size_range: or a (low, high) range each axis is drawn from (mm); give one of the
            two (a two-number ``voxel_size`` is the deprecated spelling of this).
        isotropic_prob: with a range, the chance of isotropic voxels.
        max_tilt_deg: B0 is drawn uniformly within this angle of the z voxel axis.
        padding: zero padding (voxels per side) of the dipole convolution.
        noise_std: Gaussian noise (ppm) added to the local field inside the mask; a number or
            a (low, high) range drawn per sample.
        lesion_prob: probability of haemorrhages/calcifications in head samples.
        chi_multiplier: factor applied to the susceptibility inside the mask (a number or a
            (low, high) range drawn per sample; widens the value range). Formerly
            ``chi_scale``, still accepted with a DeprecationWarning (``chi_scale`` of a model
            is its output normalisation, another thing).
        shapes: shape families for "shapes" (list of ShapeSpec/dicts, or a preset name:
            "default", "deepqsm").
        shape_mode: "add" or "replace" overlaps.
        smooth_texture, fine_texture: maximum texture amplitudes (ppm) inside shapes.
        shape_mask: mask of "shapes" samples: "full" (the whole volume), "blob" (a random
            smooth blob), or a probability of a blob.
        hybrid_shapes: shapes added inside the brain for "hybrid" (list or preset name).
        head_scale: head size (None: fitted to the field of view; number or range).
        head_rotation_deg: random head rotation per axis (degrees).
        signal: also simulate multi-echo GRE magnitude/phase and the total field.
        n_echoes, first_te, delta_te: echo train (s; numbers or ranges).
        field_strength: B0 in T, a number or a list to choose from (formerly ``b0_tesla``,
            still accepted with a DeprecationWarning; samples keep the key ``b0_tesla``).
        snr: signal-to-noise ratio of M0 (number, range or None for no noise).
        shim_ppm: amplitude of a random second-order shim residual in the total field.
        phase_offset: add a smooth random phase offset.
    """

    def __init__(self, length: int = 1000, shape: Sequence[int] = (64, 64, 64), seed: int = 0,
                 source: str | dict = "shapes", **kwargs):
        self._check_settings(SimulationConfig, kwargs, "simulation")
        self.length = int(length)
        self.seed = int(seed)
        self.config = SimulationConfig(shape=shape, source=source, **kwargs)
        self.simulator = Simulator(self.config)
        self._batch_counter = 0

    def sample_with_meta(self, index: int):
        """Sample ``index`` and its metadata dict (seed, source, b0_dir, voxel size, ...)."""
        self._check_index(index)
        g = make_generator(self.sample_seed(index))
        batch, meta = self.simulator.generate(1, g, with_meta=True)
        sample = {k: v[0] for k, v in batch.items()}
        meta = dict(meta[0], index=int(index), seed=self.sample_seed(index))
        return sample, meta

    def generate_batch(self, batch_size: int, device=None,
                       generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A fresh batch (B, ...) generated directly on ``device`` in one vectorised pass.

        Without a generator, consecutive calls use seeds derive_seed(seed, -1, k), k = 0, 1,
        ... (reproducible, distinct from the indexed samples). A generator on the device keeps
        all random draws there.
        """
        if generator is None:
            generator = make_generator(derive_seed(self.seed, -1, self._batch_counter))
            self._batch_counter += 1
        return self.simulator.generate(int(batch_size), generator, device)


class SimulatedQSMIterableDataset(IterableDataset):
    """Streams ``length`` samples generated in vectorised chunks of ``chunk_size``.

    Chunk k is generated from ``derive_seed(seed, -2, k)`` and chunks are shared round-robin
    between data-loader workers, so the set of samples does not depend on the number of
    workers. Accepts the same settings as :class:`SimulatedQSMDataset`.
    """

    def __init__(self, length: int = 1000, shape: Sequence[int] = (64, 64, 64), seed: int = 0,
                 source: str | dict = "shapes", *, chunk_size: int = 8, device=None, **kwargs):
        self.base = SimulatedQSMDataset(length, shape, seed, source, **kwargs)
        self.chunk_size = int(chunk_size)
        self.device = device

    def __len__(self) -> int:
        return self.base.length

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        n_chunks = math.ceil(self.base.length / self.chunk_size)
        for k in range(wid, n_chunks, nw):
            n = min(self.chunk_size, self.base.length - k * self.chunk_size)
            g = make_generator(derive_seed(self.base.seed, -2, k))
            batch = self.base.simulator.generate(n, g, self.device)
            for i in range(n):
                yield {key: v[i] for key, v in batch.items()}


def generate_batch(batch_size: int, device=None, generator: torch.Generator | None = None,
                   **settings) -> dict[str, torch.Tensor]:
    """One batch from settings (as for :class:`SimulatedQSMDataset`) without a dataset."""
    seed = settings.pop("seed", 0)
    ds = SimulatedQSMDataset(1, seed=seed, **settings)
    return ds.generate_batch(batch_size, device, generator)


@dataclass
class HeadCaseConfig:
    """Settings of :class:`HeadCaseDataset` (stored in ``dataset.json`` by ``dlqsm simulate``)."""

    shape: tuple[int, int, int] = (164, 205, 205)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise_std: float | tuple[float, float] = 0.0
    padding_fraction: float = 0.25
    head_scale: float | tuple[float, float] | None = None
    lesion_prob: float = 0.4
    max_tilt_deg: float = 0.0
    padding: float | None = None  # deprecated name of padding_fraction

    def __post_init__(self):
        if self.padding is not None:
            _deprecated("padding (a fraction of the matrix)", "padding_fraction")
            self.padding_fraction, self.padding = float(self.padding), None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("padding")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


class HeadCaseDataset(SeededDataset):
    """Whole simulated heads on a scanner-sized grid, built exactly like the evaluation heads.

    Item ``i`` is :func:`dlqsm.simulation.head.simulate_head_case` (no signal) with the seed
    ``derive_seed(seed, i)``: a 63-bit seed, so a training head equals a held-out evaluation head
    (:func:`dlqsm.evaluation.cases.simulated_heads`, seeds 10**6 + k) only by coincidence. The
    local field is ``mask * D(mask * chi)`` with zero padding of ``padding_fraction`` times the
    matrix on each side, plus Gaussian noise (``noise_std`` ppm, a number or a range drawn per head)
    inside the mask; B0 is along z, or uniform on the cap within ``max_tilt_deg`` of z (as in
    :class:`SimulatedQSMDataset`). Keys follow the sample contract of this module.

    Use it to train on realistic, adult-sized anatomy (e.g. random patches of whole heads
    written by ``dlqsm simulate simulation=head_cases``) rather than heads shrunk into a small
    field of view.

    Args:
        length: number of heads. seed: dataset seed.
        shape, voxel_size: grid (voxels, mm).
        noise_std: field noise, ppm (number or (low, high)).
        padding_fraction: zero padding of the dipole convolution, a fraction of each matrix
            size per side (formerly ``padding``, still accepted with a DeprecationWarning).
        head_scale: head size (None: fitted to the field of view, at most adult size).
        lesion_prob: probability of haemorrhages / calcifications.
        max_tilt_deg: largest angle between B0 and the voxel z axis (degrees).
    """

    item_name = "heads"

    def __init__(self, length: int = 16, seed: int = 0, **settings):
        self._check_settings(HeadCaseConfig, settings, "head-case")
        if "shape" in settings:
            settings["shape"] = tuple(int(s) for s in settings["shape"])
        if "voxel_size" in settings:
            settings["voxel_size"] = tuple(float(v) for v in settings["voxel_size"])
        for key in ("noise_std", "head_scale"):
            if isinstance(settings.get(key), list | tuple):
                settings[key] = tuple(float(v) for v in settings[key])
        self.length = int(length)
        self.seed = int(seed)
        self.config = HeadCaseConfig(**settings)

    def sample_with_meta(self, index: int):
        """Head ``index`` (sample contract, unbatched) and its metadata dict."""
        from dlqsm.simulation.head import simulate_head_case

        self._check_index(index)
        cfg = self.config
        seed = self.sample_seed(index)
        kwargs = {"lesion_prob": cfg.lesion_prob}
        if cfg.head_scale is not None:
            kwargs["scale"] = cfg.head_scale
        g = make_generator(derive_seed(seed, 1))
        b0 = (0.0, 0.0, 1.0)
        if cfg.max_tilt_deg > 0:  # no draw at 0: the noise of untilted heads stays the same
            b0 = tuple(random_b0_dirs(g, 1, cfg.max_tilt_deg)[0].tolist())
        case = simulate_head_case(cfg.shape, cfg.voxel_size, b0, seed=seed, signal=False,
                                  padding=tuple(int(n * cfg.padding_fraction)
                                                for n in cfg.shape),
                                  **kwargs)
        std = uniform_scalar(g, cfg.noise_std)
        mask = case.mask.float()
        fld = case.local_field.float()
        if std > 0:
            fld = (fld + std * randn(g, *cfg.shape)) * mask
        sample = {"chi": case.chi.float()[None], "field": fld[None], "mask": mask[None],
                  "b0_dir": torch.tensor(case.b0_dir, dtype=torch.float32),
                  "voxel_size": torch.tensor(case.voxel_size, dtype=torch.float32),
                  "labels": case.labels.long()[None]}
        meta = {"index": int(index), "seed": seed, "source": "head_case",
                "head_scale": float(case.phantom.scale), "lesions": bool(case.phantom.has_lesions),
                "noise_std": std}
        return sample, meta


from dlqsm.simulation.disk import DiskQSMDataset  # noqa: E402  (re-exported for configs)

__all__ = ["SOURCES", "SimulationConfig", "Simulator", "SimulatedQSMDataset", "HeadCaseDataset",
           "SimulatedQSMIterableDataset", "DiskQSMDataset", "generate_batch", "random_blob"]
