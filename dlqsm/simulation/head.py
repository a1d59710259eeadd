"""A procedural, head-like susceptibility phantom.

The anatomy is defined in a *head frame* in millimetres for an adult head (scale 1): x from
left to right, y from posterior to anterior, z from inferior to superior (RAS, like the voxel
axes of an axial NIfTI). Positions of deep grey nuclei and ventricles follow approximate MNI
coordinates shifted by (0, +17, +1) mm (the MNI origin sits 17 mm anterior and 1 mm inferior
of the centre of our cerebrum). The head frame is mapped to the voxel grid by a scale (fitted to
the field of view by default, at most 1 = adult size), a small random rotation and an offset,
so the same anatomy appears at any matrix size and (anisotropic) voxel size.

Structures:

* head (soft tissue) ellipsoid, skull shell (~7 mm), scalp, outside air;
* intracranial cavity: a super-ellipsoidal cerebrum on a sloping anterior cranial floor plus a
  posterior fossa ellipsoid (cerebellum, brainstem); outer CSF of 1.5-3.5 mm;
* cortex (GM) with random sulci (ridges of a smooth random field) and gyral white matter,
  cerebellar folia, interhemispheric fissure, tentorium;
* lateral, third and fourth ventricles;
* bilateral caudate, putamen, globus pallidus, thalamus, red nucleus, substantia nigra and
  dentate nucleus;
* venous sinuses and random cortical / medullary veins (capsule chains);
* optional lesions (haemorrhages and calcifications, in ``lesion_prob`` of the samples);
* air in the paranasal sinuses, nasal cavity, mastoids and ear canals.

Susceptibility values (ppm, relative to CSF = 0; drawn uniformly per sample from the ranges in
:data:`CHI_RANGES`) are rounded literature values:

* deep grey matter, GM and WM relative to CSF: Deistung et al., NeuroImage 2013;65:299-314
  (7 T, e.g. GP ~0.2, SN ~0.15, RN ~0.1, dentate ~0.1 ppm); Lim et al., NeuroImage
  2013;82:449-469 (DGM atlas values at 3 T: GP ~0.15-0.2, putamen ~0.05-0.1, caudate
  ~0.05-0.07, thalamus ~0.0-0.03 ppm); Marques et al., MRM 2021;86:526-542 (QSM challenge 2.0
  phantom: WM ~ -0.03, GM ~ +0.02 ppm);
* veins: deoxygenated blood, dchi = Hct (1 - Y) 3.39 ppm (Spees et al., MRM 2001;45:533-542),
  ~0.3-0.5 ppm for Hct 0.4 and Y 0.6-0.75 (cf. Fan et al., MRM 2014;72:149-159);
* calcifications -0.2..-0.3 ppm and haemorrhages +0.4..+1.2 ppm, in ~40 % of the samples, as
  in the iQSM training recipe (Gao et al., NeuroImage 2022;259:119410; cf. Chen et al.,
  Radiology 2014;270:496-505);
* cortical bone about -2 ppm relative to water/soft tissue (-1.6..-2.4; Buch et al., MRM
  2015;73:2185-2194);
* air +9.4 ppm relative to tissue (air +0.36 ppm, water -9.05 ppm SI; Schenck, Med Phys
  1996;23:815-850).

These are approximate, population-level values for a training/test phantom, not an atlas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dlqsm.simulation.random import (
    bernoulli,
    int_scalar,
    make_generator,
    rand,
    random_rotations,
    small_rotation,
    uniform_scalar,
)
from dlqsm.simulation.shapes import Primitives, make_primitives, rasterize
from dlqsm.simulation.textures import grid_coords, smooth_noise

LABELS: dict[str, int] = {
    "background": 0,
    "csf": 1,
    "ventricles": 2,
    "gm": 3,
    "wm": 4,
    "brainstem": 5,
    "caudate": 6,
    "putamen": 7,
    "globus_pallidus": 8,
    "thalamus": 9,
    "red_nucleus": 10,
    "substantia_nigra": 11,
    "dentate": 12,
    "veins": 13,
    "calcification": 14,
    "haemorrhage": 15,
    "skull": 16,
    "soft_tissue": 17,
    "air": 18,
}
"""Label values of the head phantom (0 = air outside the head). Left and right share a label."""

DGM_LABELS: dict[str, int] = {k: LABELS[k] for k in (
    "caudate", "putamen", "globus_pallidus", "thalamus", "red_nucleus", "substantia_nigra",
    "dentate")}
"""The deep grey matter nuclei (for DGM linearity metrics)."""

AIR_PPM = 9.4
"""Susceptibility of air relative to tissue water (ppm)."""

CHI_RANGES: dict[str, tuple[float, float]] = {
    "background": (AIR_PPM, AIR_PPM),
    "csf": (0.0, 0.0),
    "ventricles": (0.0, 0.0),
    "gm": (0.01, 0.04),
    "wm": (-0.045, -0.015),
    "brainstem": (-0.04, -0.01),
    "caudate": (0.04, 0.08),
    "putamen": (0.04, 0.10),
    "globus_pallidus": (0.13, 0.22),
    "thalamus": (0.0, 0.03),
    "red_nucleus": (0.08, 0.15),
    "substantia_nigra": (0.10, 0.17),
    "dentate": (0.07, 0.14),
    "veins": (0.3, 0.5),
    "calcification": (-0.3, -0.2),
    "haemorrhage": (0.4, 1.2),
    "skull": (-2.4, -1.6),
    "soft_tissue": (-0.03, 0.03),
    "air": (AIR_PPM, AIR_PPM),
}
"""Per-sample susceptibility ranges in ppm relative to CSF (see the module docstring)."""

# Head-frame geometry (mm, adult, scale 1).
HEAD_CENTER = (0.0, 0.0, -10.0)
HEAD_AXES = (82.0, 100.0, 110.0)
CEREBRUM_CENTER = (0.0, 0.0, 18.0)
CEREBRUM_AXES = (66.0, 84.0, 66.0)
CEREBRUM_POWER = 2.4
FOSSA_CENTER = (0.0, -38.0, -33.0)
FOSSA_AXES = (52.0, 36.0, 26.0)
SKULL_MM = 7.0
FRAME_SHIFT_Z = -12.5
"""World z of the head frame origin: centres the z-range [-75, 100] mm (posterior fossa to
vertex) in the field of view."""
FIT_HALF_EXTENT = (83.0, 101.0, 88.5)
"""Half extents (mm, scale 1) that must fit in the field of view for the automatic scale."""


@dataclass
class HeadPhantom:
    """A head-like susceptibility phantom on a voxel grid.

    Attributes:
        chi: (X, Y, Z) float32 susceptibility in ppm relative to CSF (air +9.4 ppm, skull about
            -2 ppm). Not referenced to the brain: see :func:`reference_chi`.
        labels: (X, Y, Z) int64 label map with the values of :data:`LABELS`.
        brain_mask: (X, Y, Z) bool, the intracranial region a brain-extraction tool would keep
            (brain, sulcal and most outer CSF, ventricles, veins inside it).
        head_mask: (X, Y, Z) bool, head tissue that gives MR signal: inside the head, not air.
        voxel_size: mm. scale: head size relative to an adult head.
        values: the susceptibility (ppm) drawn for each label name in this sample.
        has_lesions: whether haemorrhages / calcifications were inserted.
    """

    chi: torch.Tensor
    labels: torch.Tensor
    brain_mask: torch.Tensor
    head_mask: torch.Tensor
    voxel_size: tuple[float, float, float]
    scale: float
    values: dict[str, float] = field(default_factory=dict)
    has_lesions: bool = False


def fit_scale(shape: Sequence[int], voxel_size) -> float:
    """Largest head scale (<= 1) whose head fits the field of view ``shape * voxel_size``."""
    fov_half = [n * float(h) / 2 for n, h in zip(shape, voxel_size, strict=True)]
    return float(min(1.0, *(f / e for f, e in zip(fov_half, FIT_HALF_EXTENT, strict=True))))


class _Frame:
    """Maps head-frame mm to world mm: x_world = scale * R @ x_head + offset."""

    def __init__(self, scale: float, rot: torch.Tensor, offset):
        self.scale = float(scale)
        self.rot = rot.to(torch.float32)
        self.offset = torch.as_tensor(offset, dtype=torch.float32)

    def head_coords(self, shape, voxel_size, device):
        """Head-frame coordinates (three (X, Y, Z) tensors, mm at scale 1) of every voxel."""
        x, y, z = grid_coords(shape, voxel_size, device=device)
        o = self.offset.tolist()
        x, y, z = x - o[0], y - o[1], z - o[2]
        r = (self.rot.T / self.scale).tolist()  # inverse of scale * R
        return tuple(r[i][0] * x + r[i][1] * y + r[i][2] * z for i in range(3))

    def primitives(self, kind, center, axes, rot=None, value=0.0, param=0.0) -> Primitives:
        """Primitives given in the head frame, mapped to world mm."""
        c = torch.as_tensor(center, dtype=torch.float32).reshape(-1, 3)
        a = torch.as_tensor(axes, dtype=torch.float32).reshape(-1, 3).expand(c.shape[0], 3)
        r = (torch.eye(3).expand(c.shape[0], 3, 3) if rot is None
             else torch.as_tensor(rot, dtype=torch.float32).reshape(-1, 3, 3))
        cw = self.scale * c @ self.rot.T + self.offset
        return make_primitives(kind, cw, a * self.scale, self.rot @ r, value, param=param)


def _ellipsoid_depth(x, y, z, center, axes, power: float = 2.0):
    """Approximate depth (mm) below the surface of a (super-)ellipsoid; negative outside.

    The distance to the surface along the ray from the centre: |p - c| (1/r - 1), with r the
    normalised radius (exact on the axes, a good approximation for near-spherical shapes).
    """
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    if power == 2.0:
        r = torch.sqrt((dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2)
    else:
        r = ((dx / axes[0]).abs() ** power + (dy / axes[1]).abs() ** power
             + (dz / axes[2]).abs() ** power) ** (1.0 / power)
    dist = torch.sqrt(dx * dx + dy * dy + dz * dz)
    return dist * (1.0 / r.clamp_min(1e-3) - 1.0)


def _rot_z(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


# Bilateral structures: (label, centre of the right one (x > 0), semi-axes, rotation of the
# right one as (about_x, about_y, about_z) degrees). Painted in this order (later on top).
_BILATERAL = [
    ("ventricles", (17.0, 5.0, 23.0), (5.0, 21.0, 4.5), (0.0, 0.0, 0.0)),  # body
    ("ventricles", (9.0, 36.0, 14.0), (4.0, 11.0, 7.0), (0.0, 15.0, 0.0)),  # frontal horn
    ("ventricles", (25.0, -25.0, 13.0), (6.0, 14.0, 8.0), (0.0, 0.0, -30.0)),  # atrium
    ("ventricles", (32.0, -3.0, -11.0), (3.0, 14.0, 4.0), (0.0, 0.0, 10.0)),  # temporal horn
    ("caudate", (16.0, 31.0, 9.0), (5.0, 9.0, 8.0), (0.0, 0.0, 0.0)),  # head
    ("caudate", (21.0, 12.0, 19.0), (3.0, 12.0, 3.5), (20.0, 0.0, 0.0)),  # body
    ("putamen", (26.0, 20.0, 3.0), (6.0, 15.0, 10.0), (0.0, 0.0, 10.0)),
    ("globus_pallidus", (19.0, 13.0, 0.0), (4.0, 8.0, 5.5), (0.0, 0.0, 10.0)),
    ("thalamus", (11.0, -1.0, 8.0), (8.0, 15.0, 9.0), (0.0, 0.0, 10.0)),
    ("substantia_nigra", (11.0, 1.0, -11.0), (3.0, 9.0, 3.5), (-15.0, 0.0, 35.0)),
    ("red_nucleus", (5.0, -3.0, -8.0), (3.2, 3.8, 3.8), (0.0, 0.0, 0.0)),
    ("dentate", (15.0, -40.0, -33.0), (8.0, 10.0, 6.0), (0.0, 0.0, 20.0)),
    ("wm", (15.0, -40.0, -33.0), (4.5, 5.5, 3.2), (0.0, 0.0, 20.0)),  # dentate hilum
]
_MIDLINE = [
    ("ventricles", (0.0, 3.0, 5.0), (1.5, 14.0, 9.0), (0.0, 0.0, 0.0)),  # third
    ("ventricles", (0.0, -28.0, -29.0), (6.0, 4.0, 7.0), (0.0, 0.0, 0.0)),  # fourth
]
_BRAINSTEM = ("brainstem", (0.0, -11.0, -27.0), (12.0, 13.0, 30.0), (-20.0, 0.0, 0.0))
_AIR = [  # (centre, semi-axes), right-side ones mirrored when x != 0
    ((0.0, 86.0, -8.0), (14.0, 5.0, 10.0)),  # frontal sinus
    ((0.0, 30.0, -42.0), (12.0, 11.0, 10.0)),  # sphenoid sinus
    ((28.0, 58.0, -62.0), (13.0, 16.0, 17.0)),  # maxillary sinuses
    ((0.0, 75.0, -55.0), (6.0, 22.0, 18.0)),  # nasal cavity
    ((62.0, -12.0, -40.0), (7.0, 8.0, 7.0)),  # mastoid air cells
    ((74.0, -5.0, -40.0), (4.0, 10.0, 4.0)),  # ear canals
    ((0.0, 55.0, -95.0), (20.0, 20.0, 8.0)),  # oral cavity
]


def _euler(angles) -> torch.Tensor:
    ax, ay, az = angles
    return _rot_z(az) @ _rot_y(ay) @ _rot_x(ax)


def _draw_values(generator, variation: bool, overrides) -> dict[str, float]:
    values = {}
    for name, (lo, hi) in CHI_RANGES.items():
        values[name] = uniform_scalar(generator, (lo, hi)) if variation else (lo + hi) / 2
    values.update(overrides or {})
    return values


def head_phantom(shape: Sequence[int] = (164, 205, 205), voxel_size=(1.0, 1.0, 1.0),
                 seed: int = 0, *, generator: torch.Generator | None = None, scale=None,
                 offset_mm=None, max_rotation_deg: float = 5.0, lesion_prob: float = 0.4,
                 n_veins: int | Sequence[int] = (8, 20), variation: bool = True,
                 values: dict[str, float] | None = None, texture_ppm: float = 0.005,
                 device=None) -> HeadPhantom:
    """Generate a head-like phantom.

    Args:
        shape: (X, Y, Z) matrix; voxel axes are left-right, posterior-anterior,
            inferior-superior.
        voxel_size: mm (three numbers).
        seed: seed of the phantom (ignored when ``generator`` is given).
        generator: a ``torch.Generator`` to draw from instead of ``seed``.
        scale: head size relative to an adult head; None fits the head into the field of view
            (at most 1) with +-4 % random variation; a (low, high) pair draws it uniformly;
            a number fixes it. With a head larger than the field of view only part of it is
            visible (a patch).
        offset_mm: head centre offset from the volume centre (mm, three numbers); None draws a
            random offset of a few mm (more when the head is larger than the field of view).
        max_rotation_deg: random head rotation about each axis, in degrees.
        lesion_prob: probability of haemorrhages and/or calcifications.
        n_veins: number of random cortical/medullary veins (int or inclusive range).
        variation: draw tissue values, sizes and positions randomly; False gives the mean
            values and the nominal anatomy (still seeded sulci and veins).
        values: overrides of the susceptibility (ppm) of label names.
        texture_ppm: standard deviation of a smooth texture added to brain tissue (ppm).

    Returns:
        :class:`HeadPhantom` on ``device``.
    """
    g = generator if generator is not None else make_generator(seed)
    shape = tuple(int(s) for s in shape)
    vox = tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,)))
    frame, s = _draw_frame(g, shape, vox, scale, offset_mm, max_rotation_deg, variation)
    vals = _draw_values(g, variation, values)
    hx, hy, hz = frame.head_coords(shape, vox, device)
    region = _tissue_regions(hx, hy, hz, shape, vox, s, g, device)
    labels = region.pop("labels")
    prims, plabels = _structures(frame, g, variation)
    _paint(labels, prims, plabels, region["brain"], shape, vox)
    air_p = _air_primitives(frame)
    _paint(labels, air_p, torch.full((len(air_p),), LABELS["air"]),
           region["head"] & ~region["cavity"], shape, vox)
    vein_p = _vein_primitives(frame, g, n_veins, vals)
    ids = _paint(labels, vein_p, torch.full((len(vein_p),), LABELS["veins"]),
                 region["cavity"], shape, vox)
    has_lesions = bernoulli(g, lesion_prob)
    les_ids = les_p = None
    if has_lesions:
        les_p, les_labels = _lesion_primitives(frame, g)
        les_ids = _paint(labels, les_p, les_labels, region["brain"], shape, vox)
    chi = _assemble_chi(labels, vals, vein_p, ids, les_p, les_ids)
    if texture_ppm > 0:
        tex = smooth_noise(shape, vox, 6.0 * s, g, device=device)
        brainish = (labels >= LABELS["gm"]) & (labels <= LABELS["dentate"])
        chi = chi + texture_ppm * tex * brainish
    head_mask = (labels != LABELS["background"]) & (labels != LABELS["air"])
    return HeadPhantom(chi=chi, labels=labels, brain_mask=region["mask"], head_mask=head_mask,
                       voxel_size=vox, scale=s, values=vals, has_lesions=has_lesions)


def _draw_frame(g, shape, vox, scale, offset_mm, max_rotation_deg, variation):
    fit = fit_scale(shape, vox)
    if scale is None:
        s = fit * (uniform_scalar(g, (0.96, 1.0)) if variation else 0.98)
    else:
        s = uniform_scalar(g, scale)
    rot = small_rotation(g, max_rotation_deg if variation else 0.0)
    if offset_mm is None:
        fov_half = torch.tensor([n * h / 2 for n, h in zip(shape, vox, strict=True)])
        need = torch.tensor(FIT_HALF_EXTENT) * s
        slack = torch.clamp(need - fov_half, min=0) * 0.5 + 2.0 * s
        off = (2 * rand(g, 3).cpu() - 1) * slack if variation else torch.zeros(3)
    else:
        off = torch.as_tensor(offset_mm, dtype=torch.float32)
    off = off + torch.tensor([0.0, 0.0, FRAME_SHIFT_Z * s]) @ rot.T
    return _Frame(s, rot, off), s


def _tissue_regions(hx, hy, hz, shape, vox, s, g, device) -> dict:
    """Head, skull, cavity, CSF, cortex and white matter from depth maps and random fields."""
    d_head = _ellipsoid_depth(hx, hy, hz, HEAD_CENTER, HEAD_AXES)
    d1 = _ellipsoid_depth(hx, hy, hz, CEREBRUM_CENTER, CEREBRUM_AXES, CEREBRUM_POWER)
    floor = -48.0 + 26.0 * torch.sigmoid((hy - 30.0) / 6.0)  # anterior cranial fossa
    d1 = torch.minimum(d1, hz - floor)
    d2 = _ellipsoid_depth(hx, hy, hz, FOSSA_CENTER, FOSSA_AXES)
    depth = torch.maximum(d1, d2)
    cerebrum = d1 >= d2
    n_csf, n_sulci, n_folia, n_gyri = (smooth_noise(shape, vox, c * s, g, device=device)
                                       for c in (20.0, 6.0, 3.0, 10.0))
    csf_thick = 2.5 + 0.8 * n_csf.clamp(-1.25, 1.25)
    head = d_head >= 0
    cavity = (depth > 0) & head
    brain = cavity & (depth > csf_thick)
    db = depth - csf_thick  # depth below the brain surface
    sulc = torch.where(cerebrum, n_sulci, n_folia).abs()
    sulc_depth = torch.where(cerebrum, 16.0 + 4.0 * n_gyri, 14.0 + 0 * n_gyri)
    in_sulcal_zone = db < sulc_depth
    sulcus = brain & in_sulcal_zone & (sulc < 0.1)
    fissure = cerebrum & (hx.abs() < 1.2) & ((hz > 32.0) | (hy > 50.0) | (hy < -28.0))
    tentorium = (d1 - d2).abs() < 1.0
    csf = cavity & (~brain | sulcus | fissure | tentorium)
    wm_depth = torch.where(cerebrum, 2.5 + 0.8 * n_gyri.clamp(-1.5, 1.5), 8.0 + 0 * n_gyri)
    gm_band = torch.where(cerebrum, 0.75 + 0 * sulc, 0.9 + 0 * sulc)
    wm = brain & (db > wm_depth) & ~((db < sulc_depth + 2.5) & (sulc < gm_band))
    labels = torch.full(tuple(shape), LABELS["background"], dtype=torch.int64, device=device)
    labels[head] = LABELS["soft_tissue"]
    labels[head & (depth > -SKULL_MM) & ~cavity] = LABELS["skull"]
    labels[brain] = LABELS["gm"]
    labels[wm] = LABELS["wm"]
    labels[csf] = LABELS["csf"]
    tissue = brain & ~csf
    return {"labels": labels, "head": head, "cavity": cavity, "brain": tissue,
            "mask": cavity & (depth > 1.0)}


def _structures(frame: _Frame, g, variation: bool):
    """Brainstem, ventricles and deep grey nuclei as primitives, with their labels."""
    items = [_BRAINSTEM] + _MIDLINE
    for label, (cx, cy, cz), axes, ang in _BILATERAL:
        items.append((label, (cx, cy, cz), axes, ang))
        items.append((label, (-cx, cy, cz), axes, (ang[0], -ang[1], -ang[2])))
    n = len(items)
    centers = torch.tensor([it[1] for it in items])
    axes = torch.tensor([it[2] for it in items])
    if variation:  # +-10 % sizes, +-1.5 mm positions
        axes = axes * (0.9 + 0.2 * rand(g, n, 3).cpu())
        centers = centers + 1.5 * (2 * rand(g, n, 3).cpu() - 1)
    rots = torch.stack([_euler(it[3]) for it in items])
    labels = torch.tensor([LABELS[it[0]] for it in items])
    return frame.primitives("ellipsoid", centers, axes, rots), labels


def _air_primitives(frame: _Frame) -> Primitives:
    centers, axes = [], []
    for c, a in _AIR:
        centers.append(c)
        axes.append(a)
        if c[0] != 0:
            centers.append((-c[0], c[1], c[2]))
            axes.append(a)
    return frame.primitives("ellipsoid", centers, axes)


def _polyline_capsules(points: torch.Tensor, radius: torch.Tensor):
    """Capsules along a polyline: centres, semi-axes, rotations and half-length/radius."""
    p0, p1 = points[:-1], points[1:]
    d = p1 - p0
    length = torch.linalg.norm(d, dim=1).clamp_min(1e-3)
    ez = d / length[:, None]
    helper = torch.where(ez[:, :1].abs() < 0.9, torch.tensor([[1.0, 0.0, 0.0]]),
                         torch.tensor([[0.0, 1.0, 0.0]]))
    ex = torch.linalg.cross(helper, ez)
    ex = ex / torch.linalg.norm(ex, dim=1, keepdim=True)
    ey = torch.linalg.cross(ez, ex)
    rot = torch.stack([ex, ey, ez], dim=2)
    r = radius.expand(len(p0))
    return (p0 + p1) / 2, r[:, None].expand(-1, 3), rot, (length / 2) / r


def _surface_point(direction: torch.Tensor, depth_mm: torch.Tensor) -> torch.Tensor:
    """Points at ``depth_mm`` below the cerebrum surface along unit ``direction`` rays."""
    c = torch.tensor(CEREBRUM_CENTER)
    a = torch.tensor(CEREBRUM_AXES)
    r = ((direction / a).abs() ** CEREBRUM_POWER).sum(-1) ** (1 / CEREBRUM_POWER)
    dist = 1.0 / r - depth_mm
    return c + direction * dist[..., None]


def _vein_primitives(frame: _Frame, g, n_veins, vals) -> Primitives:
    """Venous sinuses, internal cerebral veins and random cortical / medullary veins."""
    cen, ax, rot, par, val = [], [], [], [], []

    def add(points, radius, value):
        c, a, r, p = _polyline_capsules(torch.as_tensor(points, dtype=torch.float32),
                                        torch.tensor(float(radius)))
        cen.append(c), ax.append(a), rot.append(r), par.append(p)
        val.append(torch.full((len(c),), float(value)))

    t = torch.linspace(math.radians(25), math.radians(160), 10)
    sss_dir = torch.stack([0 * t, torch.cos(t), torch.sin(t)], dim=1)
    sss = _surface_point(sss_dir, torch.full((10,), 3.0))
    sss = torch.cat([sss, torch.tensor([[0.0, -72.0, -22.0]])])
    add(sss, 3.0, uniform_scalar(g, (0.3, 0.45)))  # superior sagittal sinus
    add([[0.0, -12.0, 14.0], [0.0, -72.0, -22.0]], 2.2, uniform_scalar(g, (0.3, 0.45)))
    for side in (1.0, -1.0):  # transverse / sigmoid sinuses, internal cerebral veins
        add([[0.0, -72.0, -22.0], [side * 30, -66.0, -30.0], [side * 45, -50.0, -36.0],
             [side * 48, -32.0, -50.0]], 2.5, uniform_scalar(g, (0.3, 0.45)))
        add([[side * 2.5, 20.0, 18.0], [side * 2.5, -10.0, 15.0], [0.0, -12.0, 14.0]], 1.2,
            uniform_scalar(g, (0.35, 0.5)))
    for _ in range(int_scalar(g, n_veins)):
        _random_vein(g, add)
    if not cen:
        return frame.primitives("capsule", torch.zeros(0, 3), torch.ones(0, 3))
    return frame.primitives("capsule", torch.cat(cen), torch.cat(ax), torch.cat(rot),
                            torch.cat(val), torch.cat(par))


def _random_vein(g, add):
    """A cortical vein (random walk a few mm under the surface) or a medullary vein (radial)."""
    d = torch.randn(3, generator=g, device=g.device).cpu()
    d = d / torch.linalg.norm(d)
    if d[2] < -0.3:
        d[2] = -d[2]
    value = uniform_scalar(g, (0.3, 0.5))
    if bernoulli(g, 0.7):
        n = int_scalar(g, (3, 6))
        dirs = [d]
        for _ in range(n - 1):
            step = torch.randn(3, generator=g, device=g.device).cpu() * 0.12
            nd = dirs[-1] + step
            dirs.append(nd / torch.linalg.norm(nd))
        depth = torch.full((n,), uniform_scalar(g, (2.0, 6.0)))
        pts = _surface_point(torch.stack(dirs), depth)
        add(pts, uniform_scalar(g, (0.5, 1.5)), value)
    else:
        d0, d1 = uniform_scalar(g, (3.0, 8.0)), uniform_scalar(g, (15.0, 30.0))
        pts = _surface_point(torch.stack([d, d]), torch.tensor([d0, d1]))
        add(pts, uniform_scalar(g, (0.3, 0.7)), value)


def _lesion_primitives(frame: _Frame, g):
    """1-3 haemorrhages and/or 1-4 calcifications inside the brain."""
    kinds = []
    if bernoulli(g, 0.7):
        kinds += ["haemorrhage"] * int_scalar(g, (1, 3))
    if not kinds or bernoulli(g, 0.5):
        kinds += ["calcification"] * int_scalar(g, (1, 4))
    n = len(kinds)
    u = torch.randn(n, 3, generator=g, device=g.device).cpu()
    u = u / torch.linalg.norm(u, dim=1, keepdim=True) * rand(g, n, 1).cpu() ** (1 / 3)
    centers = torch.tensor(CEREBRUM_CENTER) + u * torch.tensor(CEREBRUM_AXES) * 0.65
    big = torch.tensor([k == "haemorrhage" for k in kinds])
    size = torch.where(big[:, None], 3.0 + 9.0 * rand(g, n, 3).cpu(),
                       1.0 + 3.0 * rand(g, n, 1).cpu().expand(n, 3))
    vals = torch.tensor([uniform_scalar(g, CHI_RANGES[k]) for k in kinds])
    rots = random_rotations(g, n).cpu()
    labels = torch.tensor([LABELS[k] for k in kinds])
    return frame.primitives("ellipsoid", centers, size, rots, vals), labels


def _paint(labels, prims: Primitives, plabels, allowed, shape, vox):
    """Paint primitive labels ("replace" order) where ``allowed``; returns the id map."""
    if len(prims) == 0:
        return None
    prims = Primitives(**{k: v.to(labels.device) for k, v in prims.__dict__.items()})
    _, ids = rasterize(prims, 1, shape, vox, mode="replace", return_ids=True)
    ids = ids[0]
    hit = (ids >= 0) & allowed
    labels[hit] = plabels.to(labels.device)[ids[hit]]
    return torch.where(hit, ids, torch.full_like(ids, -1))


def _assemble_chi(labels, vals, vein_p, vein_ids, les_p, les_ids) -> torch.Tensor:
    table = torch.zeros(max(LABELS.values()) + 1, device=labels.device)
    for name, code in LABELS.items():
        table[code] = vals[name]
    chi = table[labels]
    for prims, ids in ((vein_p, vein_ids), (les_p, les_ids)):
        if prims is None or ids is None:
            continue
        hit = ids >= 0
        chi[hit] = prims.value.to(chi.device)[ids[hit]]
    return chi


TISSUE_M0_R2STAR_3T: dict[str, tuple[float, float]] = {
    "background": (0.0, 0.0),
    "csf": (1.0, 4.0),
    "ventricles": (1.0, 4.0),
    "gm": (0.85, 17.0),
    "wm": (0.7, 21.0),
    "brainstem": (0.72, 22.0),
    "caudate": (0.82, 22.0),
    "putamen": (0.82, 27.0),
    "globus_pallidus": (0.78, 40.0),
    "thalamus": (0.8, 21.0),
    "red_nucleus": (0.78, 35.0),
    "substantia_nigra": (0.78, 40.0),
    "dentate": (0.78, 35.0),
    "veins": (0.8, 45.0),
    "calcification": (0.4, 60.0),
    "haemorrhage": (0.7, 80.0),
    "skull": (0.05, 400.0),
    "soft_tissue": (0.8, 30.0),
    "air": (0.0, 0.0),
}
"""Relative proton density M0 and R2* (1/s) at 3 T per label: rounded, typical orders of
magnitude (R2* of iron-rich nuclei 30-40 s^-1, WM ~20, GM ~17, CSF a few), for a plausible
signal model rather than quantitative relaxometry. R2* is scaled linearly with B0."""


def tissue_parameters(labels: torch.Tensor, b0_tesla: float = 3.0):
    """M0 (a.u.) and R2* (1/s) maps, (X, Y, Z) each, for a head label map at ``b0_tesla``."""
    n = max(LABELS.values()) + 1
    m0 = torch.zeros(n, device=labels.device)
    r2 = torch.zeros(n, device=labels.device)
    for name, code in LABELS.items():
        m0[code], r2[code] = TISSUE_M0_R2STAR_3T[name]
    return m0[labels], r2[labels] * (float(b0_tesla) / 3.0)


@dataclass
class HeadCase:
    """A simulated head acquisition (all volumes (X, Y, Z) unless stated, on one device).

    Attributes:
        chi: ppm, referenced to the mean inside ``mask`` and zero outside it (ground truth).
        chi_all: ppm relative to CSF over the whole volume (air +9.4, skull ~ -2), with the
            partial-volume edges of :func:`partial_volume` (the source of every field).
        labels: int64 label map (:data:`LABELS`). mask: bool brain mask. head_mask: bool.
        local_field: ppm, ``mask * D(mask * chi)`` (zero outside the mask).
        total_field: ppm over the whole volume: D(chi_all - air) + shim (every source, air
            beyond the field of view); mask it with ``head_mask`` for the region with signal.
        background_field: ppm, ``total_field - D(mask * chi)``: total = local + background
            inside the mask.
        shim: ppm, the second-order shim residual included in ``total_field`` (zeros if none).
        b0_dir: (3,) unit vector (voxel coordinates). voxel_size: (3,) mm.
        affine: (4, 4) NIfTI affine consistent with ``b0_dir`` (world B0 = +z).
        te: (E,) s, b0_tesla: T, magnitude / phase: (E, X, Y, Z) (wrapped phase, rad),
            phi0: rad, m0, r2star: maps, noise_std: per real/imag part; None without signal.
        coil_magnitude / coil_phase: (C, E, X, Y, Z) and sensitivities (C, X, Y, Z) complex
            with ``n_coils > 0``.
        phantom: the :class:`HeadPhantom` (values drawn, scale, lesions).
    """

    chi: torch.Tensor
    chi_all: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    head_mask: torch.Tensor
    local_field: torch.Tensor
    total_field: torch.Tensor
    background_field: torch.Tensor
    shim: torch.Tensor
    b0_dir: np.ndarray
    voxel_size: np.ndarray
    affine: np.ndarray
    phantom: HeadPhantom
    te: torch.Tensor | None = None
    b0_tesla: float | None = None
    magnitude: torch.Tensor | None = None
    phase: torch.Tensor | None = None
    phi0: torch.Tensor | None = None
    m0: torch.Tensor | None = None
    r2star: torch.Tensor | None = None
    noise_std: float | None = None
    coil_magnitude: torch.Tensor | None = None
    coil_phase: torch.Tensor | None = None
    sensitivities: torch.Tensor | None = None


INTRACRANIAL_LABELS = tuple(range(LABELS["csf"], LABELS["haemorrhage"] + 1))
"""Labels inside the cranial cavity (CSF, brain, nuclei, veins, lesions)."""

PARTIAL_VOLUME_SIGMA = (0.3, 0.8)
"""Default partial-volume blur (Gaussian sigma in voxels) of the intracranial sources and of
the sources outside the cranial cavity (skull, air, soft tissue); see :func:`partial_volume`.
0.3 voxel is about the std of a one-voxel box average (1 / sqrt(12)); bone and air edges get
0.8 voxel, which makes their background field discretely harmonic in the brain (with sharp
edges its Laplacian there exceeds the local field's; with these, a few percent of it)."""


def partial_volume(chi: torch.Tensor, labels: torch.Tensor,
                   sigma_voxels: tuple[float, float] = PARTIAL_VOLUME_SIGMA) -> torch.Tensor:
    """Partial-volume (anti-aliased) susceptibility edges for a head label map.

    A voxel-sharp phantom has edges far sharper than real anatomy sampled by MRI voxels: its
    spectrum reaches the Nyquist frequency at full strength, where the sampled dipole kernel
    jumps at the k-space border (with an oblique B0 it is discontinuous there), so sharp
    sources ring, and a 9.4 ppm air or -2 ppm bone edge makes a background field that is far
    from discretely harmonic inside the brain (no background removal can then remove it).
    Real tissue boundaries are partial-volume blends over at least a voxel. This blurs the
    sources inside the cranial cavity (:data:`INTRACRANIAL_LABELS`) and outside it
    separately, ``chi' = G_in * (c chi) + G_out * ((1 - c) chi - AIR) + AIR`` with c the cavity
    indicator and zero padding (so air continues beyond the volume, as in the total field);
    the cavity rim is CSF (0 ppm), so the two parts blend without a seam, and bone and air
    edges can be blurred more than the brain's internal anatomy. Before blurring, the outside
    sources within ``max(1, round(1.5 sigma_out))`` voxels of the cavity are set to 0 ppm
    (CSF), so the blurred bone and air stay outside the cavity (a few percent of their value
    reaches its first voxel) and the brain mask holds almost no bone: the CSF layer gets
    about one voxel thicker and the skull one voxel thinner (at 3 mm voxels a thin skull is
    then mostly a partial-volume blend with the scalp and air).

    Args:
        chi: (X, Y, Z) ppm relative to CSF (the :class:`HeadPhantom` ``chi``).
        labels: (X, Y, Z) int64 :data:`LABELS` map.
        sigma_voxels: (inside, outside) Gaussian sigma in voxels (0 leaves that part sharp).

    Returns:
        (X, Y, Z) float32 ppm, equal to ``chi`` where both parts are uniform over a few sigma.
    """
    from dlqsm.pipeline.masking import gaussian_smooth

    s_in, s_out = (float(v) for v in sigma_voxels)
    cav = torch.isin(labels, torch.tensor(INTRACRANIAL_LABELS, device=labels.device))
    inside = torch.where(cav, chi, torch.zeros_like(chi))
    gap = max(1, round(1.5 * s_out)) if s_out > 0 else 0  # keep bone/air out of the cavity
    shell = cav.float()[None, None]
    for _ in range(gap):
        shell = torch.nn.functional.max_pool3d(shell, 3, stride=1, padding=1)
    outside = torch.where(shell[0, 0] > 0, torch.zeros_like(chi), chi) - AIR_PPM
    return (gaussian_smooth(inside, s_in) + gaussian_smooth(outside, s_out) + AIR_PPM).float()


def simulate_head_case(shape: Sequence[int] = (164, 205, 205), voxel_size=(1.0, 1.0, 1.0),
                       b0_dir=(0.0, 0.0, 1.0), seed: int = 0, *, signal: bool = True,
                       b0_tesla: float = 3.0, te=(0.004, 0.010, 0.016, 0.022),
                       snr: float | None = None, phase_offset: bool = True,
                       shim_ppm: float = 0.0, padding=0, n_coils: int = 0,
                       partial_volume_sigma: tuple[float, float] = PARTIAL_VOLUME_SIGMA,
                       device=None, **phantom_kwargs) -> HeadCase:
    """Simulate a head phantom scan: chi, masks, local and total fields, multi-echo GRE data.

    Args:
        shape, voxel_size: matrix and voxel size (mm); the head is fitted to the field of view
            unless ``scale=`` is passed (see :func:`head_phantom`).
        b0_dir: B0 unit vector in voxel coordinates.
        seed: seeds the phantom, the shim, the phase offset and the noise.
        signal: also simulate magnitude and wrapped phase.
        b0_tesla, te: field strength (T) and echo times (s).
        snr: mean M0 in the head / noise std; None: noise-free (phase exactly
            wrap(phi0 + ppm_to_phase(total_field, TE, B0))).
        phase_offset: add a smooth random phase offset phi0 (else phi0 = 0).
        shim_ppm: amplitude of a random second-order shim residual added to the total field.
        padding: zero padding (voxels per side) of the dipole convolutions.
        n_coils: > 0 adds per-coil data with smooth sensitivities.
        partial_volume_sigma: (inside, outside) the cranial cavity, Gaussian sigma in voxels
            of the partial-volume edges (:func:`partial_volume`); (0, 0) keeps the phantom's
            voxel-sharp edges (whose background field no method can remove exactly).
        **phantom_kwargs: passed to :func:`head_phantom` (lesion_prob, scale, variation, ...).
    """
    from dlqsm.simulation.acquisition import (
        affine_for,
        forward_field,
        local_field,
        reference_chi,
        shim_field,
    )
    from dlqsm.simulation.signal import multi_echo_signal, random_phase_offset

    g = make_generator(seed)
    ph = head_phantom(shape, voxel_size, generator=g, device=device, **phantom_kwargs)
    vox = np.asarray(ph.voxel_size)
    b0 = np.asarray(b0_dir, dtype=np.float64) / np.linalg.norm(b0_dir)
    mask = ph.brain_mask
    chi_all = ph.chi
    if max(partial_volume_sigma) > 0:
        chi_all = partial_volume(ph.chi, ph.labels, partial_volume_sigma)
    chi = reference_chi(chi_all, mask)
    local = local_field(chi, mask, vox, b0, padding=padding)
    inside_part = forward_field(chi, vox, b0, padding=padding)
    shim = (shim_field(shape, vox, shim_ppm, g, device=ph.chi.device) if shim_ppm > 0
            else torch.zeros_like(ph.chi))
    total = forward_field(chi_all - AIR_PPM, vox, b0, padding=padding) + shim
    case = HeadCase(chi=chi, chi_all=chi_all, labels=ph.labels, mask=mask,
                    head_mask=ph.head_mask, local_field=local, total_field=total,
                    background_field=total - inside_part, shim=shim, b0_dir=b0, voxel_size=vox,
                    affine=affine_for(shape, vox, b0), phantom=ph)
    if signal:
        te_t = torch.as_tensor(te, dtype=torch.float32).reshape(-1)
        m0, r2 = tissue_parameters(ph.labels, b0_tesla)
        phi0 = (random_phase_offset(shape, vox, g, device=ph.chi.device) if phase_offset
                else torch.zeros_like(ph.chi))
        sig = multi_echo_signal(total, te_t, b0_tesla, m0=m0, r2star=r2, phi0=phi0, snr=snr,
                                signal_mask=ph.head_mask, generator=g, n_coils=n_coils,
                                voxel_size=vox)
        case.te, case.b0_tesla, case.phi0, case.m0, case.r2star = te_t, b0_tesla, phi0, m0, r2
        case.noise_std = sig.noise_std
        if n_coils > 0:
            case.magnitude, case.phase = sig.combined_magnitude, sig.combined_phase
            case.coil_magnitude, case.coil_phase = sig.magnitude, sig.phase
            case.sensitivities = sig.sensitivities
        else:
            case.magnitude, case.phase = sig.magnitude, sig.phase
    return case
