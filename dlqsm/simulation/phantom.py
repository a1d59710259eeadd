"""The procedural head phantom: draws the anatomy of :mod:`dlqsm.simulation.anatomy` on a grid.

The head frame (mm, adult head at scale 1) is mapped to the voxel grid by a scale (fitted to the
field of view by default), a small random rotation and an offset; tissue regions come from depth
maps below (super-)ellipsoidal surfaces and smooth random fields (sulci, folia), structures
are rasterised primitives (:mod:`dlqsm.simulation.shapes`), and each label gets a value drawn
from :data:`~dlqsm.simulation.anatomy.CHI_RANGES`. See :mod:`dlqsm.simulation.anatomy` for the
anatomy and the sources of the values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from dlqsm.simulation.anatomy import (
    AIR_SPACES,
    BILATERAL_STRUCTURES,
    BRAINSTEM,
    CEREBRUM_AXES,
    CEREBRUM_CENTER,
    CEREBRUM_POWER,
    CHI_RANGES,
    FIT_HALF_EXTENT,
    FOSSA_AXES,
    FOSSA_CENTER,
    FRAME_SHIFT_Z,
    HEAD_AXES,
    HEAD_CENTER,
    LABELS,
    MIDLINE_STRUCTURES,
    SKULL_MM,
)
from dlqsm.simulation.rng import (
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
    items = [BRAINSTEM] + MIDLINE_STRUCTURES
    for label, (cx, cy, cz), axes, ang in BILATERAL_STRUCTURES:
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
    for c, a in AIR_SPACES:
        centers.append(c)
        axes.append(a)
        if c[0] != 0:
            centers.append((-c[0], c[1], c[2]))
            axes.append(a)
    return frame.primitives("ellipsoid", centers, axes)


def polyline_capsules(points: torch.Tensor, radius: torch.Tensor):
    """Capsules along a polyline (vessels): one per segment of ``points`` (N, 3) mm.

    Returns:
        centres (N-1, 3), semi-axes (N-1, 3) (the radius), rotations (N-1, 3, 3) whose third
        column is the segment direction, and half-length / radius (N-1,): the arguments of
        :func:`dlqsm.simulation.shapes.make_primitives` for ``"capsule"``.
    """
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


_polyline_capsules = polyline_capsules  # its former, private name


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
        c, a, r, p = polyline_capsules(torch.as_tensor(points, dtype=torch.float32),
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
