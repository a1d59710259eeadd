"""Brain-like training data from real anatomy: warped MNI152 tissue maps with literature values.

dlqsm's procedural heads (:mod:`dlqsm.simulation.phantom`) are piecewise constant with
voxel-sharp edges; a network trained only on them learns to correct exactly that. This module
builds susceptibility maps from a real brain's anatomy instead, and simulates them the way a
scanner sees them.

Anatomy. The MNI152 2009a symmetric template (Fonov et al., NeuroImage 2011;54:313-327 and
NeuroImage 2009;47:S102) at 1 mm, 197 x 233 x 189 voxels, as shipped in nilearn's package data
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``; read from
the installed package, never downloaded): T1, grey- and white-matter probability maps. The
brain mask is the (skull-stripped) T1's support; CSF is ``mask - GM - WM``; ventricles are CSF
more than :data:`VENTRICLE_DEPTH_MM` below the brain surface. Deep grey nuclei come from the
structure table of the procedural head (:data:`dlqsm.simulation.anatomy.BILATERAL_STRUCTURES`,
one source of truth) mapped back to MNI coordinates (:data:`MNI_FROM_HEAD`): caudate head
(+-16, 14, 8), putamen (+-26, 3, 2), globus pallidus (+-19, -4, -1), thalamus (+-11, -18, 7),
substantia nigra (+-11, -16, -12), red nucleus (+-5, -20, -9) and dentate (+-15, -57, -34) mm,
consistent with the Harvard-Oxford subcortical atlas centroids (Desikan et al., NeuroImage
2006;31:968-980), the 7 T ATAG midbrain atlas (Keuken et al., NeuroImage 2014;94:40-46) and the
deep cerebellar nuclei atlas (Diedrichsen et al., NeuroImage 2011;54:1786-1794). Each nucleus
is its ellipsoid (enlarged by :data:`NUCLEUS_SEARCH_SCALE`) *restricted to where the maps say
so*: GM probability >= 0.4 for caudate, putamen, thalamus, substantia nigra and dentate (grey
in T1), tissue (GM + WM >= 0.8) for the globus pallidus and red nucleus, whose iron and myelin
make them WM-like in T1 (GM probability ~0.2 at their centroids).

Susceptibility (ppm relative to CSF) per sample: every tissue and nucleus value drawn from
:data:`dlqsm.simulation.anatomy.CHI_RANGES` (literature values, cited there) with a small
left/right difference, tissue fractions mixed linearly (partial volumes of the probability
maps), smooth random textures in GM and WM, vessel trees (cortical veins a few mm under the
surface with medullary branches running inward, 0.3-0.5 ppm), lesions in ``lesion_prob`` of the
samples (haemorrhages +0.4..1.2, calcifications -0.2..-0.3 ppm) and a global scale
(``chi_multiplier``).

Geometry. Each sample maps its voxel grid into MNI space by a random affine (rotation, per-axis
scaling) plus a smooth random elastic displacement (:func:`elastic_displacement`, limited so the
map never folds: Jacobian determinant > 0), at a random or central position in the brain.

Physics like a scanner's: maps are built on a grid ``fine_factor`` times finer than the
output and box-averaged to it (partial volumes; :func:`box_average` conserves the mean); the
voxel size and the B0 direction are drawn per sample; the local field is ``mask * D(mask *
chi)`` (the project's dipole operator, zero-padded) plus noise shaped like the echo-fit noise
map (:func:`echo_fit_noise_ppm`: higher where the multi-echo magnitude is low); and, as an
option (``background=``), the local field is what dlqsm's background removal leaves of a total
field with skull, scalp and air around the brain (residual background, rim errors, eroded mask).
Optionally (``anisotropy_ppm=``, off by default) white matter's susceptibility is a
cylindrically symmetric tensor (:mod:`dlqsm.physics.anisotropy`) with fibre directions
approximated from the template's WM map (:func:`load_fibres`); the truth stays the mean
susceptibility, the field includes the anisotropic part.

Samples follow the contract of :mod:`dlqsm.simulation.datasets` (:class:`BrainDataset`);
:class:`SourceMixture` mixes them with the procedural heads and shapes.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dlqsm.errors import InputError
from dlqsm.simulation.anatomy import (
    AIR_PPM,
    AIR_SPACES,
    BILATERAL_STRUCTURES,
    BRAINSTEM,
    CHI_RANGES,
    DGM_LABELS,
    LABELS,
    tissue_parameters,
)
from dlqsm.simulation.datasets import SeededDataset
from dlqsm.simulation.rng import (
    bernoulli,
    int_scalar,
    make_generator,
    rand,
    randn,
    random_b0_dirs,
    random_rotations,
    random_voxel_sizes,
    small_rotation,
    uniform_scalar,
)

TEMPLATE_NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
"""File name pattern of the MNI152 2009a symmetric maps in nilearn's package data."""
MNI_FROM_HEAD = (0.0, -17.0, -1.0)
"""Head-frame mm (:mod:`dlqsm.simulation.anatomy`) + this = MNI mm."""
NUCLEUS_SEARCH_SCALE = 1.25
"""Nucleus ellipsoids are enlarged by this factor and then restricted by the tissue maps."""
GREY_NUCLEI = ("caudate", "putamen", "thalamus", "substantia_nigra", "dentate")
"""Nuclei restricted to GM probability >= 0.4; the others (globus pallidus, red nucleus) to
GM + WM >= 0.8."""
VENTRICLE_DEPTH_MM = 8.0
"""CSF deeper than this below the brain surface is labelled ventricle."""
BRAIN_CENTRE_MNI = (0.0, -18.0, 8.0)
"""Centre of the MNI brain's bounding box (mm), the default centre of whole-brain samples."""


# --------------------------------------------------------------------------------------------
# the template atlas (loaded once per process)
# --------------------------------------------------------------------------------------------


def template_dir() -> str:
    """Folder of nilearn's package data holding the MNI152 2009a maps.

    Raises:
        InputError: nilearn is not installed (it is the optional ``anatomy`` extra).
    """
    try:
        import nilearn
    except ImportError as exc:
        raise InputError(
            "brain-like simulation needs nilearn's MNI152 template maps, and "
            "nilearn is not installed.",
            fix='pip install "dlqsm[anatomy]" (or pip install nilearn).',
        ) from exc
    return os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data")


@dataclass(frozen=True)
class BrainAtlas:
    """The MNI152 template as simulation input, all (X, Y, Z) float32 tensors on the 1 mm grid.

    Attributes:
        gm, wm, csf: tissue fractions in [0, 1] (sum = ``mask``).
        mask: brain (intracranial) mask {0, 1}.
        depth: mm below the brain surface (distance to the mask's outside; 0 outside).
        labels: int64 :data:`LABELS` (0 outside; gm / wm / csf by the largest fraction,
            ventricles, brainstem and the deep grey nuclei).
        nucleus_weight: soft membership of the deep grey nuclei in [0, 1] (blurred union).
        nucleus_index: int64 index into :attr:`nucleus_names` of the nearest nucleus where
            ``nucleus_weight`` > 0, else -1.
        nucleus_names: (label name, side) per index; side +1 right (x > 0), -1 left.
        origin: MNI mm of voxel (0, 0, 0) (unit voxels, axes along x, y, z).
    """

    gm: torch.Tensor
    wm: torch.Tensor
    csf: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor
    labels: torch.Tensor
    nucleus_weight: torch.Tensor
    nucleus_index: torch.Tensor
    nucleus_names: tuple
    origin: tuple


def _load_map(folder: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    path = os.path.join(folder, TEMPLATE_NAME.format(name))
    if not os.path.exists(path):
        raise InputError(
            "nilearn's MNI152 2009a template map is missing.",
            path=path,
            fix='install nilearn 0.14 or newer: pip install "dlqsm[anatomy]".',
        )
    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float32) / 255.0, img.affine


def _ellipsoid(coords, centre, axes, euler_deg) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("xyz", euler_deg, degrees=True).as_matrix()
    local = (coords - np.asarray(centre)) @ rot  # coordinates along the rotated axes
    return ((local / np.asarray(axes)) ** 2).sum(-1) <= 1.0


def _nuclei(gm, wm, mask, labels, origin) -> tuple[np.ndarray, tuple]:
    """Paint the deep grey nuclei into ``labels``; return their side-resolved index map
    (int8, -1 elsewhere) and the (name, side) of each index."""
    names, index = [], np.full(gm.shape, -1, dtype=np.int8)
    for name, centre, axes, euler in BILATERAL_STRUCTURES:
        if name not in DGM_LABELS:
            continue
        for side in (1.0, -1.0):
            c = np.add(centre, MNI_FROM_HEAD) * np.array([side, 1.0, 1.0])
            ang = np.asarray(euler) * np.array([1.0, side, side])  # mirror x -> -x
            ax = np.asarray(axes) * NUCLEUS_SEARCH_SCALE
            lo = np.maximum(np.floor(c - ax.max() - np.asarray(origin)).astype(int), 0)
            hi = np.minimum(np.ceil(c + ax.max() - np.asarray(origin)).astype(int) + 1, gm.shape)
            box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
            idx = np.stack(
                np.meshgrid(
                    *[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi, strict=True)],
                    indexing="ij",
                ),
                -1,
            )
            allowed = gm[box] >= 0.4 if name in GREY_NUCLEI else gm[box] + wm[box] >= 0.8
            region = (
                _ellipsoid(idx + np.asarray(origin, dtype=np.float32), c, ax, ang)
                & allowed
                & (index[box] < 0)
                & (labels[box] != LABELS["ventricles"])
                & (mask[box] > 0)
            )
            key = (name, int(side))
            if key not in names:
                names.append(key)
            index[box][region] = names.index(key)
            labels[box][region] = LABELS[name]
    return index, tuple(names)


@functools.lru_cache(maxsize=1)
def load_atlas() -> BrainAtlas:
    """The :class:`BrainAtlas` from nilearn's MNI152 2009a maps (cached; a few s the first
    time)."""
    from scipy import ndimage

    folder = template_dir()
    t1, aff = _load_map(folder, "t1")
    gm, _ = _load_map(folder, "gm")
    wm, _ = _load_map(folder, "wm")
    mask = ndimage.binary_fill_holes((t1 > 0.0) | (gm + wm > 0.5))
    gm, wm = gm * mask, wm * mask
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    depth = ndimage.distance_transform_edt(mask).astype(np.float32)
    origin = tuple(float(v) for v in aff[:3, 3])
    labels = np.where(
        gm >= np.maximum(wm, csf), LABELS["gm"], np.where(wm >= csf, LABELS["wm"], LABELS["csf"])
    ).astype(np.int64)
    labels[~mask] = LABELS["background"]
    labels[(csf > 0.5) & (depth > VENTRICLE_DEPTH_MM)] = LABELS["ventricles"]
    _, c, a, e = BRAINSTEM
    lo = [int(v) for v in np.asarray(c) + MNI_FROM_HEAD - max(a) - np.asarray(origin)]
    box = tuple(slice(max(v, 0), v + 2 * int(max(a)) + 1) for v in lo)
    idx = np.stack(
        np.meshgrid(
            *[
                np.arange(s.start, min(s.stop, n), dtype=np.float32)
                for s, n in zip(box, gm.shape, strict=True)
            ],
            indexing="ij",
        ),
        -1,
    )
    stem = _ellipsoid(
        idx + np.asarray(origin, dtype=np.float32), np.add(c, MNI_FROM_HEAD), a, e
    ) & (labels[box] == LABELS["wm"])
    labels[box][stem] = LABELS["brainstem"]
    index, names = _nuclei(gm, wm, mask, labels, origin)
    # Soft membership: the union blurred (partial volumes), each voxel taking the value of
    # the nearest nucleus.
    union = index >= 0
    box = tuple(slice(max(int(i.min()) - 4, 0), int(i.max()) + 5) for i in np.nonzero(union))
    soft = np.zeros_like(gm)
    soft[box] = np.minimum(ndimage.gaussian_filter(union[box].astype(np.float32), 0.6), mask[box])
    near = ndimage.distance_transform_edt(~union[box], return_distances=False, return_indices=True)
    index[box] = np.where(soft[box] > 1e-3, index[box][tuple(near)], -1)
    t = torch.from_numpy
    return BrainAtlas(
        gm=t(gm),
        wm=t(wm),
        csf=t(csf.astype(np.float32)),
        mask=t(mask.astype(np.float32)),
        depth=t(depth),
        labels=t(labels),
        nucleus_weight=t(soft.astype(np.float32)),
        nucleus_index=t(index.astype(np.int64)),
        nucleus_names=names,
        origin=origin,
    )


FIBRE_SMOOTH_MM = 1.0
"""Gaussian sigma (mm) of the WM map before the structure tensor of :func:`load_fibres`."""
FIBRE_TENSOR_MM = 3.0
"""Gaussian sigma (mm) over which :func:`load_fibres` averages the structure tensor."""
ANISOTROPY_STREAM = 0xA115
"""Key of the random stream (derived from the sample's seed) that draws the anisotropy, so
that switching it on changes no other draw of a sample."""


@functools.lru_cache(maxsize=1)
def load_fibres() -> torch.Tensor:
    """Approximate white-matter fibre directions (3, X, Y, Z) float32 on the template's 1 mm grid
    (components along MNI x, y, z; zero where WM probability <= 0.05): the direction of least
    change of the smoothed WM probability (:func:`dlqsm.simulation.fibres.fibre_directions`,
    which states the approximation; cached, a few s the first time). On the MNI152 maps it
    runs left-right in the genu and splenium of the corpus callosum and mostly
    inferior-superior in the internal capsule; in the callosal body (a flat sheet) it runs
    anterior-posterior, not left-right."""
    from dlqsm.simulation.fibres import fibre_directions

    wm = load_atlas().wm.numpy()
    dirs = fibre_directions(wm, smooth_mm=FIBRE_SMOOTH_MM, tensor_mm=FIBRE_TENSOR_MM)
    return torch.from_numpy(dirs)


# --------------------------------------------------------------------------------------------
# geometry: elastic deformation, sampling, averaging
# --------------------------------------------------------------------------------------------


def elastic_control(
    fov_mm: Sequence[float],
    generator,
    *,
    amplitude_mm: float = 3.0,
    spacing_mm: float = 20.0,
    max_gradient: float = 0.5,
) -> torch.Tensor:
    """Control points (3, a, b, c) of a smooth random displacement (mm) spanning ``fov_mm``.

    Gaussian displacements (std ``amplitude_mm`` per component) on a grid of about
    ``spacing_mm`` whose ends lie on the edges of the field of view; the displacement anywhere
    is their trilinear interpolation (:func:`elastic_displacement`). The derivative of a
    trilinear interpolant along an axis is a convex combination of the control differences
    along that axis, so with ``L_j`` the largest |difference| / spacing along axis j,
    ``||grad u||_F <= sqrt(sum_j L_j^2)``. The field is scaled down until that bound is at most
    ``max_gradient`` (< 1): then ``I + grad u`` is invertible everywhere and its determinant
    (the Jacobian of the map x -> x + u(x)) >= (1 - max_gradient)^3 > 0: no folding.
    """
    fov = [float(f) for f in fov_mm]
    coarse = [max(2, int(math.ceil(f / float(spacing_mm))) + 1) for f in fov]
    ctrl = randn(generator, 3, *coarse).cpu() * float(amplitude_mm)
    bound = 0.0
    for axis in range(3):
        step = fov[axis] / (coarse[axis] - 1)
        diff = torch.diff(ctrl, dim=axis + 1) / step
        bound += float(torch.linalg.vector_norm(diff, dim=0).max()) ** 2
    bound = math.sqrt(bound)
    if bound > max_gradient:
        ctrl = ctrl * (max_gradient / bound)
    return ctrl


def elastic_displacement(
    shape: Sequence[int],
    voxel_size,
    generator,
    *,
    amplitude_mm=3.0,
    spacing_mm=20.0,
    max_gradient: float = 0.5,
) -> torch.Tensor:
    """A smooth random displacement field (3, X, Y, Z) in mm that never folds the grid.

    The control points of :func:`elastic_control` over the field of view (``shape`` times
    ``voxel_size``), interpolated at the voxel centres (see there for the no-folding bound).

    Args:
        shape: (X, Y, Z) voxels. voxel_size: (3,) mm. generator: torch.Generator.
        amplitude_mm, spacing_mm: std of the control displacements and their spacing (mm).
        max_gradient: bound on ||grad u||_F (dimensionless, < 1).
    """
    fov = [int(n) * float(h) for n, h in zip(shape, voxel_size, strict=True)]
    ctrl = elastic_control(
        fov, generator, amplitude_mm=amplitude_mm, spacing_mm=spacing_mm, max_gradient=max_gradient
    )
    return _interp_control(ctrl, _grid_points(shape, voxel_size), fov)


def jacobian_determinant(displacement: torch.Tensor, voxel_size) -> torch.Tensor:
    """det(I + grad u) of a displacement field (3, X, Y, Z) in mm, central differences.

    Returns (X-2, Y-2, Z-2): > 0 everywhere for a map that does not fold.
    """
    vox = [float(v) for v in voxel_size]
    u = displacement
    core = (slice(1, -1),) * 3
    jac = torch.empty(*u.shape[1:], 3, 3)[core]
    for j in range(3):
        fwd = [slice(1, -1)] * 3
        bwd = [slice(1, -1)] * 3
        fwd[j], bwd[j] = slice(2, None), slice(None, -2)
        for i in range(3):
            jac[..., i, j] = (u[i][tuple(fwd)] - u[i][tuple(bwd)]) / (2 * vox[j])
    jac = jac + torch.eye(3)
    return torch.linalg.det(jac)


def box_average(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average non-overlapping ``factor``^3 blocks of (X, Y, Z) or (C, X, Y, Z): the signal
    of voxels ``factor`` times larger (partial volumes). Sizes must be multiples of ``factor``;
    the mean is conserved."""
    if factor == 1:
        return x
    squeeze = x.ndim == 3
    y = F.avg_pool3d((x[None] if squeeze else x)[None].float(), int(factor))[0]
    return y[0] if squeeze else y


def _sample(volume: torch.Tensor, coords_mm: torch.Tensor, origin, mode: str) -> torch.Tensor:
    """Sample template volumes (C, X, Y, Z) (unit voxels from ``origin``) at MNI points
    (..., 3) mm; zero outside. Returns (C, ...)."""
    shape = volume.shape[-3:]
    idx = coords_mm - torch.tensor(origin, dtype=coords_mm.dtype)
    scale = torch.tensor([2.0 / (n - 1) for n in shape], dtype=coords_mm.dtype)
    grid = (idx * scale - 1).flip(-1).reshape(1, -1, 1, 1, 3)
    out = F.grid_sample(volume[None], grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out[0].reshape(volume.shape[0], *coords_mm.shape[:-1])


# --------------------------------------------------------------------------------------------
# noise like an echo fit's
# --------------------------------------------------------------------------------------------


def echo_fit_noise_ppm(
    m0: torch.Tensor, r2star: torch.Tensor, te, b0_tesla: float, sigma: float
) -> torch.Tensor:
    """Std (ppm) of the field fitted to multi-echo phase with complex noise of std ``sigma``.

    The magnitude of echo n is ``m0 exp(-r2star TE_n)``; the phase noise of echo n has std
    sigma / |S_n|, and the weighted line fit (weights |S_n|^2, with a phase offset; the model
    of :func:`dlqsm.pipeline.echoes.fit_echoes`) has slope variance sigma^2 sum(w) / det,
    det = sum(w) sum(w TE^2) - sum(w TE)^2, converted from rad/s to ppm. Infinite where the
    magnitude is 0.

    Args:
        m0, r2star: (X, Y, Z) proton density (a.u.) and R2* (1/s). te: (E,) s, E >= 2.
        b0_tesla: T. sigma: complex noise std per real/imaginary part, in m0 units.
    """
    from dlqsm.physics.units import hz_to_ppm

    t = torch.as_tensor(te, dtype=torch.float32).reshape(-1, 1, 1, 1)
    w = (m0[None] * torch.exp(-r2star[None] * t)).square()
    sw, swt, swt2 = w.sum(0), (w * t).sum(0), (w * t * t).sum(0)
    det = sw * swt2 - swt.square()
    var = torch.where(det > 0, sigma**2 * sw / det.clamp_min(1e-30), torch.inf)
    hz = torch.sqrt(var) / (2 * math.pi)
    return hz_to_ppm(hz, float(b0_tesla))


# --------------------------------------------------------------------------------------------
# one sample
# --------------------------------------------------------------------------------------------


@dataclass
class BrainConfig:
    """Settings of :func:`simulate_brain` (see :class:`BrainDataset` for their meaning)."""

    shape: Sequence[int] = (64, 64, 64)
    fov_mm: Sequence[float] | None = None
    voxel_size: float | Sequence[float] = (0.8, 1.2)
    isotropic_prob: float = 0.5
    fine_factor: int = 2
    centre: str = "random"
    scale: float | Sequence[float] = (0.9, 1.1)
    anisotropic_scale: float = 0.05
    rotation_deg: float = 15.0
    elastic_mm: float | Sequence[float] = (0.0, 4.0)
    elastic_spacing_mm: float = 24.0
    max_tilt_deg: float = 30.0
    chi_multiplier: float | Sequence[float] = (0.8, 1.4)
    side_difference: float = 0.1
    texture_ppm: float | Sequence[float] = (0.0, 0.015)
    texture_mm: float | Sequence[float] = (1.5, 5.0)
    n_veins: int | Sequence[int] = (10, 40)
    lesion_prob: float = 0.4
    padding_fraction: float = 0.25
    snr: float | Sequence[float] | None = (20.0, 100.0)
    n_echoes: int = 4
    first_te: float | Sequence[float] = (0.003, 0.006)
    delta_te: float | Sequence[float] = (0.003, 0.008)
    field_strength: float | Sequence[float] = 3.0
    background: str | None = None
    background_params: dict | None = None
    shim_ppm: float = 0.05
    anisotropy_ppm: float | Sequence[float] | None = None
    b0_tesla: float | Sequence[float] | None = None  # deprecated name of field_strength

    def __post_init__(self):
        self.shape = tuple(int(s) for s in self.shape)
        if self.fov_mm is not None:
            self.fov_mm = tuple(float(v) for v in self.fov_mm)
        if self.centre not in ("random", "brain"):
            raise ValueError(f"centre must be 'random' or 'brain', got {self.centre!r}")
        if int(self.fine_factor) < 1:
            raise ValueError(f"fine_factor must be >= 1, got {self.fine_factor}")
        self.background_params = dict(self.background_params or {})
        a = self.anisotropy_ppm
        if a is not None and not isinstance(a, (int, float)) and len(a) != 2:
            raise ValueError(f"anisotropy_ppm must be None, a number or a (low, high) range in "
                             f"ppm, got {a!r}")
        if self.b0_tesla is not None:
            warnings.warn("the brain simulation setting 'b0_tesla' is deprecated; use "
                          "'field_strength'.", DeprecationWarning, stacklevel=3)
            self.field_strength, self.b0_tesla = self.b0_tesla, None

    def as_dict(self) -> dict:
        """Plain JSON-able settings."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
                if k != "b0_tesla"}


def _choice(generator, value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    vals = [float(v) for v in value]
    return vals[min(int(float(rand(generator, 1)[0]) * len(vals)), len(vals) - 1)]


def _interp_control(ctrl: torch.Tensor, points_mm: torch.Tensor, fov) -> torch.Tensor:
    """Trilinear interpolation of control values (C, a, b, c) spanning the field of view
    ``fov`` (mm, centred) at points (..., 3) mm. Returns (C, ...)."""
    half = torch.tensor([f / 2 for f in fov], dtype=points_mm.dtype)
    grid = (points_mm / half).flip(-1).reshape(1, -1, 1, 1, 3)
    out = F.grid_sample(
        ctrl[None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[0].reshape(ctrl.shape[0], *points_mm.shape[:-1])


def _grid_points(shape, voxel_size, xs: slice | None = None) -> torch.Tensor:
    from dlqsm.simulation.textures import grid_coords

    x, y, z = grid_coords(shape, voxel_size)
    if xs is not None:
        x = x[xs]
    return torch.stack(torch.broadcast_tensors(x, y, z), -1)


@dataclass
class _Geometry:
    shape: tuple
    vox: torch.Tensor
    b0: torch.Tensor
    rot: torch.Tensor
    scale: torch.Tensor
    centre: torch.Tensor
    ctrl: torch.Tensor

    @property
    def fov(self):
        return [n * float(h) for n, h in zip(self.shape, self.vox, strict=True)]

    def to_mni(self, points_mm: torch.Tensor) -> torch.Tensor:
        """MNI mm of points (..., 3) given in the sample's grid mm (centred)."""
        lin = (points_mm / self.scale) @ self.rot.T + self.centre
        return lin + _interp_control(self.ctrl, points_mm, self.fov).movedim(0, -1)

    def from_mni_affine(self, mni: torch.Tensor) -> torch.Tensor:
        """Grid mm of MNI points, ignoring the elastic part."""
        return ((mni - self.centre) @ self.rot) * self.scale


def _draw_geometry(cfg: BrainConfig, g, atlas: BrainAtlas) -> _Geometry:
    vox = random_voxel_sizes(g, 1, cfg.voxel_size, isotropic_prob=cfg.isotropic_prob)[0]
    shape = cfg.shape
    if cfg.fov_mm is not None:
        shape = tuple(
            2 * max(8, round(f / float(h) / 2)) for f, h in zip(cfg.fov_mm, vox, strict=True)
        )
    b0 = random_b0_dirs(g, 1, cfg.max_tilt_deg)[0]
    rot = small_rotation(g, cfg.rotation_deg)
    scale = uniform_scalar(g, cfg.scale) * (1 + cfg.anisotropic_scale * (2 * rand(g, 3).cpu() - 1))
    if cfg.centre == "brain":
        centre = torch.tensor(BRAIN_CENTRE_MNI) + 5.0 * (2 * rand(g, 3).cpu() - 1)
    else:
        inside = torch.nonzero(atlas.depth > 3.0)
        k = int(float(rand(g, 1)[0]) * len(inside))
        centre = inside[min(k, len(inside) - 1)].float() + torch.tensor(atlas.origin)
    fov = [n * float(h) for n, h in zip(shape, vox, strict=True)]
    ctrl = elastic_control(
        fov, g, amplitude_mm=uniform_scalar(g, cfg.elastic_mm), spacing_mm=cfg.elastic_spacing_mm
    )
    return _Geometry(shape=shape, vox=vox, b0=b0, rot=rot, scale=scale, centre=centre, ctrl=ctrl)


def _draw_values(cfg: BrainConfig, g) -> dict[str, float]:
    return {name: uniform_scalar(g, rng) for name, rng in CHI_RANGES.items()}


def _template_chi(atlas: BrainAtlas, box, vals, cfg: BrainConfig, g) -> torch.Tensor:
    """Susceptibility (ppm rel. CSF) on the template voxels inside ``box`` (three slices)."""
    from dlqsm.simulation.textures import smooth_noise

    gm, wm, lab = atlas.gm[box], atlas.wm[box], atlas.labels[box]
    shape = gm.shape
    tex = []
    for _ in range(2):
        amp, corr = uniform_scalar(g, cfg.texture_ppm), uniform_scalar(g, cfg.texture_mm)
        tex.append(amp * smooth_noise(shape, (1.0, 1.0, 1.0), corr, g))
    v_wm = torch.where(lab == LABELS["brainstem"], vals["brainstem"], vals["wm"])
    chi = gm * (vals["gm"] + tex[0]) + wm * (v_wm + tex[1])
    table = torch.tensor(
        [
            vals[name] * (1 + cfg.side_difference * (2 * float(rand(g, 1)[0]) - 1))
            for name, _side in atlas.nucleus_names
        ]
        + [0.0]
    )
    w = atlas.nucleus_weight[box]
    return chi * (1 - w) + w * (table[atlas.nucleus_index[box]] + 0.5 * tex[0])


def _bounding_box(geom: _Geometry, atlas: BrainAtlas, margin: float = 3.0):
    """Template slices covering the sample's field of view (for cropping the composition)."""
    corners = (
        torch.tensor(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)],
            dtype=torch.float32,
        )
        * torch.tensor(geom.fov)
        / 2
    )
    mni = (corners / geom.scale) @ geom.rot.T + geom.centre
    shift = float(geom.ctrl.abs().max()) + margin
    idx_lo = torch.floor(mni.min(0).values - shift - torch.tensor(atlas.origin)).long()
    idx_hi = torch.ceil(mni.max(0).values + shift - torch.tensor(atlas.origin)).long() + 1
    n = atlas.gm.shape
    lo = [int(min(max(v, 0), s - 1)) for v, s in zip(idx_lo, n, strict=True)]
    hi = [int(min(max(v, lo_ + 1), s)) for v, lo_, s in zip(idx_hi, lo, n, strict=True)]
    origin = tuple(o + lo_ for o, lo_ in zip(atlas.origin, lo, strict=True))
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), origin


def _fine_coords(geom: _Geometry, f: int, xs: slice) -> torch.Tensor:
    """MNI coordinates (fx, fY, fZ, 3) of the fine-grid voxels in the output x-slab ``xs``.

    The map is evaluated exactly at the output voxel centres (plus a one-voxel margin) and
    trilinearly interpolated to the fine grid: exact for the affine part, and the elastic part
    varies over ~20 mm, so interpolating it over one voxel changes it by a negligible amount.
    """
    shape = geom.shape
    vox = geom.vox.tolist()
    ext = (shape[0] + 2, shape[1] + 2, shape[2] + 2)
    pts = _grid_points(ext, vox, slice(xs.start, xs.stop + 2))
    mni = geom.to_mni(pts).permute(3, 0, 1, 2)[None]
    fine = F.interpolate(mni, scale_factor=f, mode="trilinear", align_corners=False)[0]
    return fine[:, f:-f, f:-f, f:-f].permute(1, 2, 3, 0)


def _warp(
    geom: _Geometry,
    atlas: BrainAtlas,
    chi_t: torch.Tensor,
    box,
    origin,
    f: int,
    slab_voxels: int = 4_000_000,
):
    """Sample the template: chi and mask fraction on the fine grid (fX, fY, fZ), depth (mm)
    and labels (int64) at the output voxel centres (X, Y, Z); in slabs along x (memory)."""
    fshape = tuple(n * f for n in geom.shape)
    lin = torch.stack([chi_t, atlas.mask[box]])
    coarse = torch.stack([atlas.depth[box], atlas.labels[box].float()])
    out = torch.empty(2, *fshape)
    step = max(1, slab_voxels // (fshape[1] * fshape[2] * f))
    for x0 in range(0, geom.shape[0], step):
        xs = slice(x0, min(x0 + step, geom.shape[0]))
        out[:, xs.start * f : xs.stop * f] = _sample(
            lin, _fine_coords(geom, f, xs), origin, "bilinear"
        )
    mni = geom.to_mni(_grid_points(geom.shape, geom.vox.tolist()))
    depth = _sample(coarse[:1], mni, origin, "bilinear")[0]
    labels = _sample(coarse[1:], mni, origin, "nearest")[0].long()
    return out[0], out[1], depth, labels


def _lookup(vol: torch.Tensor, points_mm: torch.Tensor, vox) -> torch.Tensor:
    """Nearest-voxel values of (X, Y, Z) ``vol`` at points (N, 3) mm (centred grid); 0 outside."""
    shape = torch.tensor(vol.shape)
    idx = torch.round(points_mm / torch.as_tensor(vox) + (shape - 1) / 2).long()
    ok = ((idx >= 0) & (idx < shape)).all(-1)
    idx = torch.minimum(idx.clamp(min=0), shape - 1)
    return torch.where(ok, vol[idx[:, 0], idx[:, 1], idx[:, 2]], torch.zeros(()))


def _depth_gradient(depth, p, vox, h: float = 1.0) -> torch.Tensor:
    """Unit gradient of the depth map (pointing inward) at points (N, 3)."""
    grad = torch.stack(
        [
            (_lookup(depth, p + h * e, vox) - _lookup(depth, p - h * e, vox)) / 2
            for e in torch.eye(3)
        ],
        -1,
    )
    return grad / torch.linalg.vector_norm(grad, dim=-1, keepdim=True).clamp_min(1e-3)


def _seed_points(g, depth, vox, lo: float, hi: float, n: int) -> torch.Tensor:
    """``n`` random voxel centres (mm) with depth in [lo, hi]."""
    cand = torch.nonzero((depth >= lo) & (depth <= hi))
    if len(cand) == 0 or n == 0:
        return torch.zeros(0, 3)
    pick = (rand(g, n).cpu() * len(cand)).long().clamp(max=len(cand) - 1)
    shape = torch.tensor(depth.shape)
    return (cand[pick].float() - (shape - 1) / 2) * torch.as_tensor(vox)


def _vein_trees(g, depth, vox, cfg: BrainConfig, fov_volume_mm3: float):
    """Capsule chains: cortical veins 1-4 mm under the surface (random walks along it) with
    medullary branches running inward. Returns primitives (or None)."""
    from dlqsm.simulation.phantom import polyline_capsules
    from dlqsm.simulation.shapes import make_primitives

    n = int_scalar(g, cfg.n_veins)
    n = int(round(n * min(1.0, fov_volume_mm3 / 1.4e6)))
    parts = []

    def add(points, radius, value):
        keep = torch.ones(len(points), dtype=torch.bool)
        keep[1:] = torch.linalg.vector_norm(torch.diff(points, dim=0), dim=1) > 0.1
        points = points[keep]
        if len(points) < 2:
            return
        c, a, r, p = polyline_capsules(points, torch.tensor(float(radius)))
        parts.append((c, a, r, p, torch.full((len(c),), float(value))))

    for p0 in _seed_points(g, depth, vox, 1.0, 4.0, n):
        value = uniform_scalar(g, CHI_RANGES["veins"])
        target = float(_lookup(depth, p0[None], vox)[0])
        pts, d = [p0], randn(g, 3).cpu()
        for _ in range(int_scalar(g, (3, 7))):
            p = pts[-1]
            nrm = _depth_gradient(depth, p[None], vox)[0]
            d = d + 0.5 * randn(g, 3).cpu()
            d = d - (d @ nrm) * nrm
            d = d / torch.linalg.vector_norm(d).clamp_min(1e-6)
            q = p + uniform_scalar(g, (3.0, 6.0)) * d
            q = q + (target - _lookup(depth, q[None], vox)[0]) * nrm
            pts.append(q)
            if bernoulli(g, 0.4):  # a medullary branch running inward
                length = uniform_scalar(g, (8.0, 25.0))
                inward = _depth_gradient(depth, q[None], vox)[0]
                bend = 0.15 * randn(g, 3).cpu()
                add(
                    torch.stack([q, q + 0.5 * length * inward, q + length * (inward + bend)]),
                    uniform_scalar(g, (0.25, 0.5)),
                    value,
                )
        add(torch.stack(pts), uniform_scalar(g, (0.4, 1.2)), value)
    if not parts:
        return None
    c, a, r, p, v = (torch.cat(x) for x in zip(*parts, strict=True))
    return make_primitives("capsule", c, a, r, v, param=p)


def _lesions(g, depth, vox, cfg: BrainConfig):
    """1-3 haemorrhages and/or 1-4 calcifications inside the brain, in ``lesion_prob`` of the
    samples. Returns (primitives, label per primitive) or (None, None)."""
    from dlqsm.simulation.shapes import make_primitives

    if not bernoulli(g, cfg.lesion_prob):
        return None, None
    kinds = []
    if bernoulli(g, 0.7):
        kinds += ["haemorrhage"] * int_scalar(g, (1, 3))
    if not kinds or bernoulli(g, 0.5):
        kinds += ["calcification"] * int_scalar(g, (1, 4))
    size = torch.stack(
        [
            torch.full((3,), 1.0) + 2.0 * rand(g, 1).cpu()
            if k == "calcification"
            else 2.0 + 8.0 * rand(g, 3).cpu()
            for k in kinds
        ]
    )
    centres = torch.cat([_seed_points(g, depth, vox, float(s.max()) + 1.0, 1e9, 1) for s in size])
    if len(centres) < len(kinds):
        return None, None
    vals = torch.tensor([uniform_scalar(g, CHI_RANGES[k]) for k in kinds])
    rots = random_rotations(g, len(kinds)).cpu()
    labels = torch.tensor([LABELS[k] for k in kinds])
    return make_primitives("ellipsoid", centres, size, rots, vals), labels


def _paint(chi, labels, inside, prims, plabels, fvox, f: int):
    """Paint primitives into the fine ``chi`` where ``inside``, and their labels into the
    output-grid ``labels`` (at the fine voxel nearest each output voxel's centre)."""
    from dlqsm.simulation.shapes import rasterize

    if prims is None:
        return
    _, ids = rasterize(prims, 1, chi.shape, fvox, mode="replace", return_ids=True)
    ids = torch.where(inside, ids[0], -1)
    hit = ids >= 0
    chi[hit] = prims.value[ids[hit]]
    ids_c = ids[f // 2 :: f, f // 2 :: f, f // 2 :: f]
    labels[ids_c >= 0] = plabels[ids_c[ids_c >= 0]].to(labels.dtype)


def _noise_map(labels, mask, vox, te, b0_tesla, snr, g) -> torch.Tensor:
    """Echo-fit noise std (ppm) for the labels' M0 / R2*, with a smooth receive bias."""
    from dlqsm.simulation.textures import smooth_noise

    m0, r2 = tissue_parameters(labels.long(), b0_tesla)
    m0 = m0 * torch.exp(0.25 * smooth_noise(labels.shape, vox, 60.0, g))
    sigma = float(m0[mask].mean()) / float(snr)
    return echo_fit_noise_ppm(m0, r2, te, b0_tesla, sigma)


def _head_around(chi, labels, mask, geom: _Geometry, g):
    """chi_all (ppm rel. CSF) and labels with CSF, skull, scalp, air and air spaces around the
    brain, built from the distance to the brain mask (output grid)."""
    from scipy import ndimage

    from dlqsm.simulation.head import partial_volume
    from dlqsm.simulation.shapes import rasterize

    vox = geom.vox.tolist()
    dist = torch.from_numpy(
        ndimage.distance_transform_edt(~mask.numpy(), sampling=vox).astype(np.float32)
    )
    csf = uniform_scalar(g, (1.0, 3.0))
    skull = csf + uniform_scalar(g, (4.0, 8.0))
    scalp = skull + uniform_scalar(g, (4.0, 8.0))
    lab = labels.long().clone()
    lab[~mask & (dist <= csf)] = LABELS["csf"]
    lab[(dist > csf) & (dist <= skull)] = LABELS["skull"]
    lab[(dist > skull) & (dist <= scalp)] = LABELS["soft_tissue"]
    lab[dist > scalp] = LABELS["background"]
    centres, axes = [], []
    for c, a in AIR_SPACES:
        for side in (1.0, -1.0) if c[0] != 0 else (1.0,):
            centres.append([side * c[0], c[1], c[2]])
            axes.append(a)
    mni = torch.tensor(centres) + torch.tensor(MNI_FROM_HEAD)
    from dlqsm.simulation.shapes import make_primitives

    prims = make_primitives(
        "ellipsoid",
        geom.from_mni_affine(mni),
        torch.tensor(axes) * geom.scale.mean(),
        geom.rot.T.expand(len(mni), 3, 3),
    )
    _, ids = rasterize(prims, 1, mask.shape, vox, mode="replace", return_ids=True)
    lab[(ids[0] >= 0) & (dist > csf + 1.0)] = LABELS["air"]
    vals = torch.zeros(max(LABELS.values()) + 1)
    vals[LABELS["skull"]] = uniform_scalar(g, CHI_RANGES["skull"])
    vals[LABELS["soft_tissue"]] = uniform_scalar(g, CHI_RANGES["soft_tissue"])
    vals[LABELS["air"]] = vals[LABELS["background"]] = AIR_PPM
    chi_all = torch.where(mask, chi, vals[lab])
    return partial_volume(chi_all, lab, (0.0, 0.8)), lab


def _anisotropy_field(cfg: BrainConfig, g, geom: _Geometry, atlas: BrainAtlas, box, origin,
                      mask, pad, meta: dict):
    """Field (ppm, (X, Y, Z)) of the white-matter anisotropy dchi * wm * (n n^T - I / 3), or
    None when ``cfg.anisotropy_ppm`` is None or 0.

    dchi is drawn from a stream derived from the sample's seed (:data:`ANISOTROPY_STREAM`).
    The source wm (n (n . h) - h / 3) is built on the template voxels in MNI axes, with B0
    turned into them by the sample's rotation, sampled (bilinear: the voxel average of
    n n^T) at the output voxel centres, where the field is computed, and turned back into the
    voxel axes. The affine's small per-axis scalings and the elastic part do not turn the
    fibres. Only sources inside ``mask`` count for the exact local field (``background`` None).
    """
    value = cfg.anisotropy_ppm
    if value is None or (isinstance(value, (int, float)) and float(value) == 0.0):
        return None
    from dlqsm.physics.anisotropy import anisotropic_source, vector_source_field
    from dlqsm.physics.dipole import DipoleOperator
    from dlqsm.simulation.rng import derive_seed

    dchi = uniform_scalar(make_generator(derive_seed(g.initial_seed(), ANISOTROPY_STREAM)), value)
    src = anisotropic_source(atlas.wm[box], load_fibres()[(slice(None), *box)], geom.rot @ geom.b0)
    src = _sample(src, geom.to_mni(_grid_points(geom.shape, geom.vox.tolist())), origin, "bilinear")
    src = dchi * torch.einsum("ji,jxyz->ixyz", geom.rot, src)
    if cfg.background is None:
        src = src * mask
    op = DipoleOperator(geom.shape, geom.vox.tolist(), geom.b0, padding=pad)
    field = vector_source_field(src, op)
    meta["anisotropy_ppm"] = dchi
    meta["anisotropy_rms_ppm"] = float(field[mask].square().mean().sqrt())
    return field


def simulate_brain(config: BrainConfig, generator: torch.Generator) -> tuple[dict, dict]:
    """One brain-like sample (dataset contract of :mod:`dlqsm.simulation.datasets`) and meta.

    Returns:
        (sample, meta): ``chi`` (1, X, Y, Z) ppm demeaned in ``mask``, ``field`` (1, X, Y, Z)
        ppm local field (``mask * D(mask * chi)`` plus echo-fit-shaped noise, or what
        background removal left with ``background``), ``mask`` (1, X, Y, Z) {0, 1},
        ``b0_dir`` (3,), ``voxel_size`` (3,) mm, ``labels`` (1, X, Y, Z) int64; meta holds the
        drawn geometry, values, noise and timings.
    """
    import time

    from dlqsm.simulation.acquisition import forward_field, local_field, reference_chi
    from dlqsm.simulation.signal import echo_times

    t0 = time.perf_counter()
    cfg, g = config, generator
    atlas = load_atlas()
    geom = _draw_geometry(cfg, g, atlas)
    f = int(cfg.fine_factor)
    vals = _draw_values(cfg, g)
    box, origin = _bounding_box(geom, atlas)
    chi_t = _template_chi(atlas, box, vals, cfg, g)
    chi_f, mask_f, depth, labels = _warp(geom, atlas, chi_t, box, origin, f)
    fvox, vox = (geom.vox / f).tolist(), geom.vox.tolist()
    inside = mask_f > 0.5
    veins = _vein_trees(g, depth, vox, cfg, float(np.prod(geom.fov)))
    if veins is not None:
        _paint(chi_f, labels, inside, veins, torch.full((len(veins),), LABELS["veins"]), fvox, f)
    prims, plabels = _lesions(g, depth, vox, cfg)
    _paint(chi_f, labels, inside, prims, plabels, fvox, f)
    scale = uniform_scalar(g, cfg.chi_multiplier)
    chi_c = box_average(chi_f, f) * scale
    mask = box_average(mask_f, f) >= 0.5
    labels = torch.where(mask & (labels == 0), LABELS["csf"], labels) * mask
    del chi_f, mask_f, inside
    vox, b0 = geom.vox, geom.b0
    pad = tuple(int(n * cfg.padding_fraction) for n in geom.shape)
    te = echo_times(g, cfg.n_echoes, first_te=cfg.first_te, delta_te=cfg.delta_te)
    b0t = _choice(g, cfg.field_strength)
    snr = None if cfg.snr is None else uniform_scalar(g, cfg.snr)
    meta = {
        "source": "brain",
        "voxel_size": vox.tolist(),
        "b0_dir": b0.tolist(),
        "shape": list(geom.shape),
        "centre_mni": geom.centre.tolist(),
        "scale": geom.scale.tolist(),
        "chi_multiplier": scale,
        "te": te.tolist(),
        "b0_tesla": b0t,
        "snr": snr,
        "lesions": prims is not None,
        "values": {k: vals[k] for k in ("gm", "wm", *DGM_LABELS)},
    }
    if not bool(mask.any()):
        mask = torch.ones_like(mask)  # no brain in the field of view: a whole-volume sample
    noise = torch.zeros(geom.shape)
    if snr is not None:
        noise = _noise_map(labels, mask, vox.tolist(), te, b0t, snr, g)
        noise = torch.where(torch.isfinite(noise), noise, torch.zeros(()))
        meta["noise_ppm_median"] = float(noise[mask].median())
        noise = noise * randn(g, *geom.shape).cpu()
    aniso = _anisotropy_field(cfg, g, geom, atlas, box, origin, mask, pad, meta)
    if aniso is None:
        aniso = torch.zeros(())  # isotropic susceptibility (the default)
    if cfg.background is None:
        chi = reference_chi(chi_c, mask)
        field = local_field(chi, mask, vox, b0, padding=pad) + (noise + aniso) * mask
    else:
        from dlqsm.pipeline.background import remove_background
        from dlqsm.simulation.acquisition import shim_field

        chi_all, lab_all = _head_around(chi_c, labels, mask, geom, g)
        total = forward_field(chi_all - AIR_PPM, vox, b0, padding=pad) + noise + aniso
        if cfg.shim_ppm > 0:
            total = total + shim_field(geom.shape, vox.tolist(), cfg.shim_ppm, g)
        res = remove_background(
            total,
            mask,
            method=cfg.background,
            voxel_size=vox.tolist(),
            b0_dir=b0.tolist(),
            **cfg.background_params,
        )
        meta["background"] = {
            "method": cfg.background,
            "eroded_voxels": int(mask.sum() - res.mask.sum()),
        }
        mask = res.mask
        chi = reference_chi(chi_c, mask)
        field = res.local_field * mask
        labels = labels * mask
    sample = {
        "chi": chi.float()[None],
        "field": field.float()[None],
        "mask": mask.float()[None],
        "b0_dir": b0.float(),
        "voxel_size": vox.float(),
        "labels": labels.long()[None],
    }
    meta["seconds"] = time.perf_counter() - t0
    return sample, meta


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


class BrainDataset(SeededDataset):
    """Seeded dataset of brain-like samples (:func:`simulate_brain`); item ``i`` depends only on
    (``seed``, ``i``).

    Args:
        length: number of samples. seed: dataset seed.
        shape: output matrix (voxels), or ``fov_mm`` (mm; the matrix follows each sample's
            voxel size, rounded to even sizes) for whole brains of a fixed physical size.
        voxel_size: a number, three numbers or a (low, high) range per axis (mm);
            isotropic_prob: with a range, the chance of isotropic voxels.
        fine_factor: maps are built this many times finer and box-averaged (partial volumes).
        centre: "random" (a random point inside the brain: patches) or "brain" (the brain's
            centre +-5 mm: whole brains).
        scale, anisotropic_scale, rotation_deg: random affine (global size factor, per-axis
            relative spread, rotation about each axis in +-degrees).
        elastic_mm, elastic_spacing_mm: elastic deformation (std of control displacements,
            number or range; control spacing).
        max_tilt_deg: B0 uniform on the cap within this angle of the voxel z axis.
        chi_multiplier: global susceptibility scale (number or range).
        side_difference: relative left/right difference of nucleus values (+-).
        texture_ppm, texture_mm: amplitude and correlation length of GM / WM textures.
        n_veins: cortical vein trees per whole brain (scaled by the field of view).
        lesion_prob: share of samples with haemorrhages / calcifications.
        padding_fraction: zero padding of the dipole convolution, fraction of the matrix per side.
        snr: mean M0 in the brain / complex noise std (number, range, or None: no noise);
            n_echoes, first_te, delta_te, field_strength (T; formerly ``b0_tesla``, still
            accepted with a DeprecationWarning): the multi-echo acquisition behind the
            echo-fit noise map (:func:`echo_fit_noise_ppm`).
        background: None (the local field exactly) or a background removal method of
            :func:`dlqsm.pipeline.background.remove_background` (e.g. "pdf", "vsharp") run on
            a total field with skull, scalp and air; background_params: its parameters;
            shim_ppm: a second-order shim residual in that total field.
        anisotropy_ppm: white-matter susceptibility anisotropy chi_parallel - chi_perpendicular
            (ppm; number or (low, high) range drawn per sample; None or 0: off, the default).
            The field then includes the anisotropic part of the tensor
            ``chi I + dchi * wm * (n n^T - I / 3)`` (:mod:`dlqsm.physics.anisotropy`; fibre
            directions n from the template, :func:`load_fibres`); ``chi`` (the truth) stays
            the mean susceptibility; dchi is not scaled by ``chi_multiplier``. Drawn from its
            own stream of the sample's seed, so switching it on changes no other draw; meta
            records ``anisotropy_ppm`` (dchi) and ``anisotropy_rms_ppm`` (its field's RMS).
    """

    item_name = "brains"

    def __init__(self, length: int = 16, seed: int = 0, **settings):
        self._check_settings(BrainConfig, settings, "brain simulation")
        self.length, self.seed = int(length), int(seed)
        self.config = BrainConfig(**settings)

    def sample_with_meta(self, index: int):
        """Sample ``index`` (dataset contract, unbatched) and its metadata dict."""
        self._check_index(index)
        sample, meta = simulate_brain(self.config, make_generator(self.sample_seed(index)))
        return sample, dict(meta, index=int(index), seed=self.sample_seed(index))


class SourceMixture(SeededDataset):
    """A seeded mixture of datasets with the sample contract (e.g. brains, heads, shapes).

    Item ``i`` draws its source from (``seed``, ``i``) with the given weights and returns item
    ``i`` of that source's dataset, which is built with ``length`` and its own seed
    ``derive_seed(seed, k)`` (k: the source's position in ``sources``). ``dlqsm simulate``
    writes it like any other dataset (``meta.json`` records the source).

    Args:
        sources: {name: dataset or factory (length=, seed=) -> dataset}; each dataset has
            ``sample_with_meta`` and ``config.as_dict()`` (e.g. :class:`BrainDataset`,
            :class:`~dlqsm.simulation.datasets.HeadCaseDataset`,
            :class:`~dlqsm.simulation.datasets.SimulatedQSMDataset`).
        weights: {name: weight} (default: equal).
        length, seed: items and mixture seed.
    """

    item_name = "samples"

    def __init__(self, sources: dict, weights: dict | None = None, length: int = 16, seed: int = 0):
        from dlqsm.simulation.rng import derive_seed

        if not sources:
            raise ValueError("a mixture needs at least one source")
        self.length, self.seed = int(length), int(seed)
        self.names = list(sources)
        weights = {n: 1.0 for n in self.names} if weights is None else dict(weights)
        unknown = sorted(set(weights) - set(self.names))
        if unknown or any(float(weights.get(n, 0.0)) < 0 for n in self.names):
            raise ValueError(
                f"weights must be non-negative and name sources {self.names}, got {weights!r}"
            )
        w = torch.tensor([float(weights.get(n, 0.0)) for n in self.names])
        if float(w.sum()) <= 0:
            raise ValueError(f"mixture weights sum to zero: {weights!r}")
        self.weights = w / w.sum()
        self.datasets = {}
        for k, name in enumerate(self.names):
            src = sources[name]
            if callable(src) and not hasattr(src, "sample_with_meta"):
                src = src(length=self.length, seed=derive_seed(self.seed, k))
            self.datasets[name] = src
        self.config = self

    def as_dict(self) -> dict:
        """Settings for ``dataset.json``: each source's weight and settings."""
        return {
            "mixture": {
                n: {
                    "weight": float(w),
                    "seed": int(self.datasets[n].seed),
                    "settings": self.datasets[n].config.as_dict(),
                }
                for n, w in zip(self.names, self.weights, strict=True)
            }
        }

    def source_of(self, index: int) -> str:
        """The source name of item ``index``."""
        u = float(rand(make_generator(self.sample_seed(index)), 1)[0])
        k = int(torch.searchsorted(torch.cumsum(self.weights, 0), torch.tensor(u), right=True))
        return self.names[min(k, len(self.names) - 1)]

    def sample_with_meta(self, index: int):
        """Item ``index`` of the chosen source, its meta with ``mixture_source``."""
        self._check_index(index)
        name = self.source_of(index)
        sample, meta = self.datasets[name].sample_with_meta(index % len(self.datasets[name]))
        return sample, dict(meta, index=int(index), mixture_source=name)
