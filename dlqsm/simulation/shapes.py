"""Random geometric susceptibility sources: ellipsoids, boxes, cylinders, tubes and capsules.

Shapes are *primitives*: a kind, a centre (mm, relative to the volume centre), a 3x3 matrix
mapping world mm to local unit coordinates, and a value (ppm). In local coordinates u:

* ellipsoid / sphere: |u| <= 1
* box / cube: max_i |u_i| <= 1
* cylinder: u_x^2 + u_y^2 <= 1 and |u_z| <= 1
* tube (hollow cylinder): p^2 <= u_x^2 + u_y^2 <= 1 and |u_z| <= 1 (p = inner fraction)
* capsule (rounded segment): u_x^2 + u_y^2 + max(|u_z| - p, 0)^2 <= 1 (p = half length / radius)

:func:`rasterize` paints any number of primitives over a batch of volumes at once, visiting
only the voxels of each primitive's bounding box (a ragged, fully vectorised scatter), so
hundreds of shapes cost about as much as their total volume. Overlaps either add ("add") or
the later primitive replaces the earlier ones ("replace").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dlqsm.simulation.rng import rand, randint, randn, random_rotations, uniform
from dlqsm.simulation.textures import smooth_noise

KINDS = {"ellipsoid": 0, "box": 1, "cylinder": 2, "tube": 3, "capsule": 4}
"""Primitive kind codes. ``sphere`` and ``cube`` are isotropic ellipsoids and boxes."""

_ALIASES = {"sphere": "ellipsoid", "cube": "box", "ball": "ellipsoid", "cuboid": "box"}


@dataclass
class Primitives:
    """A set of S primitives over a batch of volumes (all tensors on one device).

    Attributes:
        kind: (S,) int64 codes from :data:`KINDS`.
        center: (S, 3) centres in mm relative to the volume centre (voxel axes).
        inv: (S, 3, 3) world-mm -> local-unit matrices, u = inv @ (x - center).
        extent: (S, 3) world-mm half extents of the bounding boxes.
        value: (S,) susceptibility (ppm) or any value to paint.
        param: (S,) inner fraction (tubes) or half length / radius (capsules), else 0.
        sample: (S,) int64 batch index of each primitive.
    """

    kind: torch.Tensor
    center: torch.Tensor
    inv: torch.Tensor
    extent: torch.Tensor
    value: torch.Tensor
    param: torch.Tensor
    sample: torch.Tensor

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @staticmethod
    def cat(items: Sequence[Primitives]) -> Primitives:
        """Concatenate primitive sets (later ones are painted on top in "replace" mode)."""
        names = ["kind", "center", "inv", "extent", "value", "param", "sample"]
        return Primitives(**{n: torch.cat([getattr(p, n) for p in items]) for n in names})

    def select(self, idx: torch.Tensor) -> Primitives:
        """Subset / reordering by an index tensor."""
        names = ["kind", "center", "inv", "extent", "value", "param", "sample"]
        return Primitives(**{n: getattr(self, n)[idx] for n in names})


def make_primitives(kind, center, semi_axes, rotation=None, value=1.0, *, param=0.0,
                    sample=0, device=None) -> Primitives:
    """Build primitives from centres, semi-axes (mm) and rotations.

    Args:
        kind: a kind name (see :data:`KINDS`, aliases sphere/cube) or an (S,) tensor of codes.
        center: (S, 3) mm. semi_axes: (S, 3) mm (radius, radius, half length for cylinders,
            tubes and capsules; for capsules the half length is ``param * radius`` + radius).
        rotation: (S, 3, 3) rotations (columns: local axes in world coordinates) or None.
        value, param, sample: scalars or (S,) tensors.
    """
    center = torch.as_tensor(center, dtype=torch.float32, device=device).reshape(-1, 3)
    device = center.device
    n = center.shape[0]
    a = torch.as_tensor(semi_axes, dtype=torch.float32, device=device).reshape(-1, 3).expand(n, 3)
    if isinstance(kind, str):
        k = torch.full((n,), KINDS[_ALIASES.get(kind, kind)], dtype=torch.int64, device=device)
    else:
        k = torch.as_tensor(kind, dtype=torch.int64, device=device).expand(n)
    rot = (torch.eye(3, device=device).expand(n, 3, 3) if rotation is None
           else torch.as_tensor(rotation, dtype=torch.float32, device=device).reshape(n, 3, 3))
    p = torch.as_tensor(param, dtype=torch.float32, device=device).expand(n).clone()
    inv = rot.transpose(1, 2) / a.unsqueeze(-1)  # diag(1/a) R^T
    local_ext = torch.ones(n, 3, device=device)
    local_ext[:, 2] = torch.where(k == KINDS["capsule"], p + 1, local_ext[:, 2])
    m = rot * a.unsqueeze(1)  # R diag(a): local unit -> world mm
    box = (m.abs() * local_ext.unsqueeze(1)).sum(-1)
    ell = torch.sqrt((m ** 2).sum(-1))
    extent = torch.where((k == KINDS["ellipsoid"]).unsqueeze(-1), ell, box)
    return Primitives(kind=k, center=center, inv=inv, extent=extent,
                      value=torch.as_tensor(value, dtype=torch.float32, device=device).expand(n)
                      .clone(),
                      param=p,
                      sample=torch.as_tensor(sample, dtype=torch.int64, device=device).expand(n)
                      .clone())


_BIG = 1e30


def _quad(a, w, comps, radius2=1.0):
    """Interval of t with sum_i (a_i + t w_i)^2 <= radius2 over ``comps`` (empty: lo > hi)."""
    A = sum(w[:, i] ** 2 for i in comps)
    Bh = sum(a[:, i] * w[:, i] for i in comps)
    C = sum(a[:, i] ** 2 for i in comps) - radius2
    degenerate = A < 1e-12
    disc = Bh ** 2 - A * C
    root = torch.sqrt(disc.clamp(min=0))
    Asafe = torch.where(degenerate, torch.ones_like(A), A)
    lo = torch.where(degenerate, torch.full_like(A, -_BIG), (-Bh - root) / Asafe)
    hi = torch.where(degenerate, torch.full_like(A, _BIG), (-Bh + root) / Asafe)
    empty = torch.where(degenerate, C > 0, disc < 0)
    return torch.where(empty, _BIG, lo), torch.where(empty, -_BIG, hi)


def _slab(a, w, i, lim):
    """Interval of t with -lim <= a_i + t w_i <= lim."""
    ai, wi = a[:, i], w[:, i]
    flat = wi.abs() < 1e-12
    wsafe = torch.where(flat, torch.ones_like(wi), wi)
    t1, t2 = (-lim - ai) / wsafe, (lim - ai) / wsafe
    lo = torch.where(flat, torch.full_like(ai, -_BIG), torch.minimum(t1, t2))
    hi = torch.where(flat, torch.full_like(ai, _BIG), torch.maximum(t1, t2))
    empty = flat & (ai.abs() > lim)
    return torch.where(empty, _BIG, lo), torch.where(empty, -_BIG, hi)


def _meet(*ivs):
    return (torch.stack([iv[0] for iv in ivs]).amax(0),
            torch.stack([iv[1] for iv in ivs]).amin(0))


def _intervals(code: int, a, w, param):
    """Inside sets of primitives of kind ``code`` along the lines u = a + t w, as a list of
    (lo, hi) intervals in t (two for tubes, one otherwise; empty when lo > hi)."""
    ones = torch.ones_like(param)
    if code == KINDS["ellipsoid"]:
        return [_quad(a, w, (0, 1, 2))]
    if code == KINDS["box"]:
        return [_meet(_slab(a, w, 0, ones), _slab(a, w, 1, ones), _slab(a, w, 2, ones))]
    disc = _quad(a, w, (0, 1))
    if code == KINDS["cylinder"]:
        return [_meet(disc, _slab(a, w, 2, ones))]
    if code == KINDS["tube"]:
        slab = _slab(a, w, 2, ones)
        cyl = _meet(disc, slab)
        inner = _meet(_quad(a, w, (0, 1), param ** 2), slab)
        no_inner = inner[0] > inner[1]
        first = (cyl[0], torch.where(no_inner, cyl[1], torch.minimum(cyl[1], inner[0])))
        second = (torch.where(no_inner, _BIG, torch.maximum(cyl[0], inner[1])),
                  torch.where(no_inner, -_BIG, cyl[1]))
        return [first, second]
    shift = torch.zeros_like(a)
    shift[:, 2] = param
    parts = [_meet(disc, _slab(a, w, 2, param)), _quad(a - shift, w, (0, 1, 2)),
             _quad(a + shift, w, (0, 1, 2))]
    los = torch.stack([p[0] for p in parts])
    his = torch.stack([p[1] for p in parts])
    ok = los <= his
    return [(torch.where(ok, los, _BIG).amin(0), torch.where(ok, his, -_BIG).amax(0))]


def _column_runs(prims: Primitives, shape, vs: torch.Tensor):
    """Runs of inside voxels along z for every (primitive, x, y) column of the bounding boxes.

    Returns:
        (col, z0, z1, sid): flat column index b*X*Y + x*Y + y, first and last z index
        (inclusive, non-empty runs only) and the primitive index of each run.
    """
    dev = prims.center.device
    out = []
    for code in torch.unique(prims.kind).tolist():
        idx = torch.nonzero(prims.kind == code).flatten()
        runs = _kind_runs(code, prims.select(idx), shape, vs)
        if runs is not None:
            out.extend((c, z0, z1, idx[s]) for c, z0, z1, s in runs)
    if not out:
        e = torch.zeros(0, dtype=torch.int64, device=dev)
        return e, e, e, e
    return tuple(torch.cat([o[i] for o in out]) for i in range(4))


def _kind_runs(code: int, prims: Primitives, shape, vs: torch.Tensor):
    dev = prims.center.device
    X, Y, Z = (int(s) for s in shape)
    nxy = torch.tensor([X, Y], device=dev, dtype=torch.float32)
    vsp = vs[prims.sample]  # (S, 3)
    half = torch.tensor([(X - 1) / 2, (Y - 1) / 2, (Z - 1) / 2], device=dev)
    lo = torch.ceil((prims.center[:, :2] - prims.extent[:, :2]) / vsp[:, :2] + half[:2])
    lo = lo.clamp(min=0)
    hi = torch.minimum(torch.floor((prims.center[:, :2] + prims.extent[:, :2]) / vsp[:, :2]
                                   + half[:2]), nxy - 1)
    cnt = (hi - lo + 1).clamp(min=0)
    total = (cnt[:, 0] * cnt[:, 1]).to(torch.int64)
    n_total = int(total.sum())
    if n_total == 0:
        return None
    # Per primitive: u(ix, iy, z_mm) = base + gx * ix + gy * iy + w * z_mm (local coords).
    inv = prims.inv
    w = inv[:, :, 2]
    gx = inv[:, :, 0] * vsp[:, :1]
    gy = inv[:, :, 1] * vsp[:, 1:2]
    base = -(inv @ prims.center.unsqueeze(-1)).squeeze(-1) - gx * half[0] - gy * half[1]
    base = base + gx * lo[:, :1] + gy * lo[:, 1:2]  # relative to the bounding-box corner
    sid = torch.repeat_interleave(torch.arange(len(prims), device=dev), total,
                                  output_size=n_total)
    j = (torch.arange(n_total, device=dev) - (torch.cumsum(total, 0) - total)[sid]).float()
    cy = cnt[sid, 1]
    jx = torch.floor(j / cy)  # exact for j < 2**24 (chunks are smaller)
    jy = j - jx * cy
    a = base[sid] + gx[sid] * jx[:, None] + gy[sid] * jy[:, None]
    ww = w[sid]
    ix = jx.to(torch.int64) + lo[sid, 0].to(torch.int64)
    iy = jy.to(torch.int64) + lo[sid, 1].to(torch.int64)
    col = (prims.sample[sid] * X + ix) * Y + iy
    vz = vsp[sid, 2]
    runs = []
    for lo_t, hi_t in _intervals(code, a, ww, prims.param[sid]):
        z0 = torch.ceil(lo_t.clamp(-1e7, 1e7) / vz + half[2]).clamp(min=0)
        z1 = torch.floor(hi_t.clamp(-1e7, 1e7) / vz + half[2]).clamp(max=Z - 1)
        keep = torch.nonzero((z1 >= z0) & (lo_t <= hi_t)).flatten()
        runs.append((col[keep], z0[keep].to(torch.int64), z1[keep].to(torch.int64), sid[keep]))
    return runs


def rasterize(prims: Primitives, batch: int, shape: Sequence[int], voxel_size, *,
              mode: str = "add", chunk: int = 4_000_000, return_ids: bool = False,
              return_count: bool = False):
    """Paint primitives into ``batch`` volumes of ``shape``.

    The inside set of a primitive along each z column of its bounding box is an interval found
    in closed form (two for tubes). "add" accumulates +value at each run start and -value after
    its end and integrates along z (float64), so its cost grows with the number of columns,
    not voxels; "replace" expands the runs to voxels and keeps the highest primitive index.

    Args:
        prims: primitives; ``prims.sample`` selects the volume of each.
        voxel_size: (3,) or (batch, 3) voxel sizes in mm (per volume).
        mode: "add" sums overlapping values; "replace" keeps the value of the last primitive
            (highest index) covering a voxel.
        chunk: bound on the number of bounding-box columns processed at once (memory).
        return_ids: also return the (batch, X, Y, Z) int64 index of the top primitive (-1: none).
        return_count: also return the (batch, X, Y, Z) int32 number of primitives per voxel.

    Returns:
        (batch, X, Y, Z) float32 on the primitives' device, then the optional maps.
    """
    if mode not in ("add", "replace"):
        raise ValueError(f"mode must be 'add' or 'replace', got {mode!r}")
    dev = prims.center.device
    X, Y, Z = (int(s) for s in shape)
    vs = torch.as_tensor(voxel_size, dtype=torch.float32, device=dev).reshape(-1, 3)
    vs = vs.expand(batch, 3)
    ncol = batch * X * Y
    acc = torch.zeros(ncol * (Z + 1), device=dev) if mode == "add" else None
    cnt = torch.zeros(ncol * (Z + 1), dtype=torch.int32, device=dev) if return_count else None
    need_top = mode == "replace" or return_ids
    top = torch.full((ncol * Z,), -1, dtype=torch.int64, device=dev) if need_top else None
    for part in _chunks(prims, vs, chunk):
        col, z0, z1, sid = _column_runs(prims.select(part), (X, Y, Z), vs)
        sid = part[sid]
        start, stop = col * (Z + 1) + z0, col * (Z + 1) + z1 + 1
        if acc is not None:
            val = prims.value[sid]
            acc.index_add_(0, start, val)
            acc.index_add_(0, stop, -val)
        if cnt is not None:
            one = torch.ones_like(start, dtype=torch.int32)
            cnt.index_add_(0, start, one)
            cnt.index_add_(0, stop, -one)
        if top is not None:
            flat, fsid = _expand_runs(col, z0, z1, sid, Z)
            top.scatter_reduce_(0, flat, fsid, reduce="amax")
    if acc is not None:
        out = torch.cumsum(acc.view(ncol, Z + 1), dim=1)[:, :Z]
    else:
        out = torch.zeros(ncol, Z, device=dev)
    if mode == "replace" and len(prims):
        out = torch.where(top.view(ncol, Z) >= 0, prims.value[top.clamp(min=0)].view(ncol, Z),
                          out)
    result = [out.reshape(batch, X, Y, Z)]
    if return_ids:
        result.append(top.view(batch, X, Y, Z))
    if return_count:
        result.append(torch.cumsum(cnt.view(ncol, Z + 1), dim=1)[:, :Z].reshape(batch, X, Y, Z)
                      .to(torch.int32))
    return result[0] if len(result) == 1 else tuple(result)


def _expand_runs(col, z0, z1, sid, Z):
    """Voxel flat indices (b*X*Y + x*Y + y) * Z + z of all runs, with their primitive ids."""
    length = z1 - z0 + 1
    n = int(length.sum())
    rid = torch.repeat_interleave(torch.arange(len(col), device=col.device), length,
                                  output_size=n)
    off = torch.arange(n, device=col.device) - (torch.cumsum(length, 0) - length)[rid]
    return col[rid] * Z + z0[rid] + off, sid[rid]


def _chunks(prims: Primitives, vs: torch.Tensor, chunk: int):
    """Split primitive indices so that each part's bounding boxes hold <= ``chunk`` columns."""
    if len(prims) == 0:
        return []
    area = torch.prod(2 * prims.extent[:, :2] / vs[prims.sample, :2] + 2, dim=1)
    csum = torch.cumsum(area, 0).cpu().tolist()
    parts, start, base = [], 0, 0.0
    for i, c in enumerate(csum):
        if c - base > chunk and i > start:
            parts.append(torch.arange(start, i, device=prims.center.device))
            start, base = i, csum[i - 1]
    parts.append(torch.arange(start, len(prims), device=prims.center.device))
    return parts


@dataclass
class ShapeSpec:
    """A family of random shapes.

    Attributes:
        kind: ellipsoid, sphere, box, cube, cylinder, tube or capsule.
        count: shapes per volume: an int, or an inclusive (low, high) range.
        size_mm: (low, high) range of semi-axes / half sides / radii in mm (each axis drawn
            independently unless the kind is isotropic: sphere, cube).
        length_mm: (low, high) half length of cylinders, tubes and capsules (mm); defaults to
            ``size_mm`` scaled by 1-4.
        distribution: "normal" (value = (mean, std)) or "uniform" (value = (low, high)), ppm.
        value: the two parameters of the value distribution in ppm.
        rotate: random orientation (uniform over rotations) if True, axis-aligned otherwise.
        inner_fraction: (low, high) inner / outer radius of tubes.
        region: centres are drawn uniformly in the central ``region`` fraction of the FOV.
        count_per_mm3: if set, ``count`` is the number per this field-of-view volume (mm^3)
            and is scaled with each volume's field of view (constant shape density).
    """

    kind: str = "ellipsoid"
    count: int | Sequence[int] = (5, 20)
    size_mm: Sequence[float] = (2.0, 12.0)
    length_mm: Sequence[float] | None = None
    distribution: str = "normal"
    value: Sequence[float] = (0.0, 0.1)
    rotate: bool = True
    inner_fraction: Sequence[float] = (0.5, 0.85)
    region: float = 1.0
    count_per_mm3: float | None = None
    extra: dict = field(default_factory=dict)

    @staticmethod
    def coerce(spec) -> ShapeSpec:
        """Accept a ShapeSpec or a plain dict (from a config)."""
        if isinstance(spec, ShapeSpec):
            return spec
        return ShapeSpec(**dict(spec))


DEEPQSM_SHAPES = [
    ShapeSpec(kind="box", count=50, size_mm=(1.0, 16.0), distribution="normal", value=(0.0, 0.1)),
    ShapeSpec(kind="sphere", count=50, size_mm=(1.0, 16.0), distribution="normal",
              value=(0.0, 0.1)),
]
"""DeepQSM-style recipe: 50 boxes and 50 spheres per volume with N(0, 0.1 ppm) values."""

_REF_FOV_MM3 = 64.0 ** 3
DEFAULT_SHAPES = [
    ShapeSpec(kind="ellipsoid", count=(10, 40), size_mm=(1.0, 16.0), value=(0.0, 0.1),
              count_per_mm3=_REF_FOV_MM3),
    ShapeSpec(kind="box", count=(10, 40), size_mm=(1.0, 14.0), value=(0.0, 0.1),
              count_per_mm3=_REF_FOV_MM3),
    ShapeSpec(kind="cylinder", count=(2, 10), size_mm=(0.6, 4.0), length_mm=(5.0, 40.0),
              distribution="uniform", value=(-0.2, 0.5), count_per_mm3=_REF_FOV_MM3),
    ShapeSpec(kind="tube", count=(0, 4), size_mm=(2.0, 8.0), length_mm=(5.0, 30.0),
              distribution="uniform", value=(-0.2, 0.4), count_per_mm3=_REF_FOV_MM3),
]
"""A broader default mixture: ellipsoids, boxes, thin vessel-like cylinders and tubes, with
counts given per (64 mm)^3 of field of view (so the density is the same at any FOV)."""


def _draw_values(spec: ShapeSpec, generator, n: int, device) -> torch.Tensor:
    a, b = (float(v) for v in spec.value)
    if spec.distribution == "normal":
        return a + b * randn(generator, n, device=device)
    if spec.distribution == "uniform":
        return uniform(generator, a, b, n, device=device)
    raise ValueError(f"distribution must be 'normal' or 'uniform', got {spec.distribution!r}")


def sample_primitives(specs: Sequence, batch: int, shape: Sequence[int], voxel_size,
                      generator, *, device=None) -> Primitives:
    """Draw random primitives for ``batch`` volumes from shape specifications.

    Args:
        specs: ShapeSpec objects or dicts.
        voxel_size: (batch, 3) or (3,) voxel sizes in mm (fields of view differ per volume).

    Returns:
        Primitives in a random painting order (relevant for mode "replace").
    """
    vs = torch.as_tensor(voxel_size, dtype=torch.float32).reshape(-1, 3).expand(batch, 3)
    fov = vs * torch.as_tensor(shape, dtype=torch.float32)  # (B, 3) on CPU
    parts = []
    for raw in specs:
        spec = ShapeSpec.coerce(raw)
        kind = _ALIASES.get(spec.kind, spec.kind)
        if kind not in KINDS:
            raise ValueError(f"unknown shape kind {spec.kind!r}; use one of "
                             f"{sorted(set(KINDS) | set(_ALIASES))}")
        cnt = spec.count
        counts = (torch.full((batch,), int(cnt), dtype=torch.int64) if isinstance(cnt, int)
                  else randint(generator, int(cnt[0]), int(cnt[1]), batch).cpu())
        if spec.count_per_mm3:
            factor = fov.prod(dim=1) / float(spec.count_per_mm3)
            counts = torch.round(counts * factor).to(torch.int64).clamp(max=100_000)
        n = int(counts.sum())
        if n == 0:
            continue
        sample = torch.repeat_interleave(torch.arange(batch), counts)
        center = (rand(generator, n, 3).cpu() - 0.5) * fov[sample] * spec.region
        lo, hi = (float(v) for v in spec.size_mm)
        iso = spec.kind in ("sphere", "cube", "ball")
        axes = uniform(generator, lo, hi, n, 1 if iso else 3).cpu().expand(n, 3).clone()
        param = torch.zeros(n)
        if kind in ("cylinder", "tube", "capsule"):
            axes[:, 1] = axes[:, 0]
            llo, lhi = spec.length_mm if spec.length_mm is not None else (lo, 4 * hi)
            axes[:, 2] = uniform(generator, float(llo), float(lhi), n).cpu()
            if kind == "tube":
                flo, fhi = (float(v) for v in spec.inner_fraction)
                param = uniform(generator, flo, fhi, n).cpu()
            if kind == "capsule":
                param = axes[:, 2] / axes[:, 0]
                axes[:, 2] = axes[:, 0]
        rot = random_rotations(generator, n).cpu() if spec.rotate else None
        values = _draw_values(spec, generator, n, None).cpu()
        parts.append(make_primitives(kind, center, axes, rot, values, param=param,
                                     sample=sample))
    if not parts:
        return make_primitives("ellipsoid", torch.zeros(0, 3), torch.ones(0, 3),
                               device=device)
    prims = Primitives.cat(parts)
    order = torch.argsort(rand(generator, len(prims)).cpu())
    prims = prims.select(order)
    if device is not None:
        prims = Primitives(**{k: v.to(device) for k, v in prims.__dict__.items()})
    return prims


def random_shapes(batch: int, shape: Sequence[int], voxel_size, generator, *, specs=None,
                  mode: str = "add", smooth_texture: float = 0.0, fine_texture: float = 0.0,
                  texture_corr_mm: Sequence[float] = (4.0, 20.0), device=None) -> torch.Tensor:
    """Random susceptibility maps made of geometric shapes plus optional textures.

    Args:
        batch: number of volumes. shape: (X, Y, Z). voxel_size: (3,) or (batch, 3) mm.
        specs: shape families (default :data:`DEFAULT_SHAPES`; :data:`DEEPQSM_SHAPES` gives
            the DeepQSM recipe).
        mode: overlap rule, "add" or "replace".
        smooth_texture / fine_texture: maximum standard deviation (ppm) of a smooth texture
            (correlation length uniform in ``texture_corr_mm``) and of a voxel-level white
            texture, both applied inside the shapes; each volume draws its amplitude uniformly
            in [0, max].

    Returns:
        (batch, X, Y, Z) float32 susceptibility in ppm on ``device``.
    """
    vs = torch.as_tensor(voxel_size, dtype=torch.float32).reshape(-1, 3).expand(batch, 3)
    prims = sample_primitives(DEFAULT_SHAPES if specs is None else specs, batch, shape, vs,
                              generator, device=device)
    chi = rasterize(prims, batch, shape, vs.to(_chi_device(prims, device)), mode=mode)
    if smooth_texture > 0 or fine_texture > 0:
        chi = chi + _textures(chi, vs, generator, smooth_texture, fine_texture, texture_corr_mm)
    return chi


def _chi_device(prims: Primitives, device) -> torch.device:
    return prims.center.device if device is None else torch.device(device)


def _textures(chi, vs, generator, smooth_amp, fine_amp, corr_rng) -> torch.Tensor:
    batch, shape = chi.shape[0], chi.shape[1:]
    support = (chi.abs() > 1e-6).to(chi.dtype)  # inside shapes (add-mode residues ~1e-8)
    amps = rand(generator, batch, 2, device=chi.device) * torch.tensor(
        [smooth_amp, fine_amp], device=chi.device)
    tex = torch.zeros_like(chi)
    for b in range(batch):
        if smooth_amp > 0:
            corr = float(uniform(generator, float(corr_rng[0]), float(corr_rng[1]), 1)[0])
            tex[b] += amps[b, 0] * smooth_noise(shape, vs[b].tolist(), corr, generator,
                                                device=chi.device)
        if fine_amp > 0:
            tex[b] += amps[b, 1] * randn(generator, *shape, device=chi.device)
    return tex * support
