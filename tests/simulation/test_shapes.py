"""Geometric sources: rasteriser against a brute-force oracle and analytic volumes."""

import math

import pytest
import torch

from dlqsm.simulation.rng import make_generator, random_rotations
from dlqsm.simulation.shapes import (
    DEEPQSM_SHAPES,
    KINDS,
    ShapeSpec,
    make_primitives,
    random_shapes,
    rasterize,
    sample_primitives,
)
from dlqsm.simulation.textures import grid_coords


def brute_force(prims, shape, vox):
    """Direct inside test on every voxel centre (one primitive at a time, 'add' overlaps)."""
    x, y, z = grid_coords(shape, vox)
    pos = torch.stack(torch.broadcast_tensors(x, y, z), dim=-1)  # (X, Y, Z, 3)
    out = torch.zeros(shape)
    for s in range(len(prims)):
        u = (pos - prims.center[s]) @ prims.inv[s].T
        r2 = u[..., 0] ** 2 + u[..., 1] ** 2
        k, p = int(prims.kind[s]), float(prims.param[s])
        inside = {
            KINDS["ellipsoid"]: (u ** 2).sum(-1) <= 1,
            KINDS["box"]: u.abs().amax(-1) <= 1,
            KINDS["cylinder"]: (r2 <= 1) & (u[..., 2].abs() <= 1),
            KINDS["tube"]: (r2 <= 1) & (r2 >= p ** 2) & (u[..., 2].abs() <= 1),
            KINDS["capsule"]: r2 + (u[..., 2].abs() - p).clamp(min=0) ** 2 <= 1,
        }[k]
        out += inside * prims.value[s]
    return out


@pytest.mark.parametrize("kind", ["ellipsoid", "box", "cylinder", "tube", "capsule"])
def test_rasterize_matches_brute_force(kind):
    g = make_generator(3)
    n = 6
    center = (torch.rand(n, 3, generator=g) - 0.5) * 20
    axes = 2 + 6 * torch.rand(n, 3, generator=g)
    if kind in ("cylinder", "tube", "capsule"):
        axes[:, 1] = axes[:, 0]
    param = 0.3 + 0.5 * torch.rand(n, generator=g) if kind in ("tube", "capsule") else 0.0
    prims = make_primitives(kind, center, axes, random_rotations(g, n),
                            torch.randn(n, generator=g), param=param)
    shape, vox = (30, 26, 22), (0.9, 1.1, 1.3)
    ref = brute_force(prims, shape, vox)
    got = rasterize(prims, 1, shape, vox)[0]
    bad = ((got - ref).abs() > 1e-5).sum().item()
    assert (ref != 0).sum() > 500
    assert bad <= 3  # at most a few voxels exactly on a surface (float rounding)


@pytest.mark.parametrize("kind,axes,param,volume", [
    ("sphere", (8.0, 8.0, 8.0), 0.0, 4 / 3 * math.pi * 512),
    ("ellipsoid", (9.0, 6.0, 4.0), 0.0, 4 / 3 * math.pi * 216),
    ("box", (9.0, 6.0, 4.0), 0.0, 8 * 216),
    ("cylinder", (5.0, 5.0, 9.0), 0.0, math.pi * 25 * 18),
    ("tube", (7.0, 7.0, 9.0), 0.5, math.pi * (49 - 12.25) * 18),
    ("capsule", (4.0, 4.0, 4.0), 2.0, math.pi * 16 * 16 + 4 / 3 * math.pi * 64),
])
def test_volumes_match_analytic(kind, axes, param, volume):
    vox = (0.8, 1.0, 1.25)
    rot = random_rotations(make_generator(1), 1)
    prims = make_primitives(kind, [[0.3, -0.2, 0.1]], [axes], rot, 1.0, param=param)
    vol = rasterize(prims, 1, (48, 40, 32), vox).sum().item() * math.prod(vox)
    assert vol == pytest.approx(volume, rel=0.04)


def test_overlap_modes_and_batches():
    prims = make_primitives("sphere", [[-2.0, 0, 0], [2.0, 0, 0], [0, 0, 0]],
                            [[5.0] * 3] * 3, value=torch.tensor([1.0, 2.0, 5.0]),
                            sample=torch.tensor([0, 0, 1]))
    add = rasterize(prims, 2, (20, 20, 20), (1, 1, 1))
    rep, ids, cnt = rasterize(prims, 2, (20, 20, 20), (1, 1, 1), mode="replace",
                              return_ids=True, return_count=True)
    centre = (0, 10, 10, 10)
    assert add[centre] == pytest.approx(3.0) and rep[centre] == pytest.approx(2.0)
    assert ids[centre] == 1 and cnt[centre] == 2
    assert add[1].max() == pytest.approx(5.0) and set(add[1].unique().tolist()) == {0.0, 5.0}
    # shapes outside the volume are clipped, not wrapped
    far = make_primitives("sphere", [[30.0, 0, 0]], [[3.0] * 3], value=1.0)
    assert rasterize(far, 1, (20, 20, 20), (1, 1, 1)).sum() == 0


def test_random_shapes_deterministic_and_distributed():
    a = random_shapes(2, (32, 32, 32), (1, 1, 1), make_generator(5))
    b = random_shapes(2, (32, 32, 32), (1, 1, 1), make_generator(5))
    c = random_shapes(2, (32, 32, 32), (1, 1, 1), make_generator(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])
    prims = sample_primitives(DEEPQSM_SHAPES, 4, (32, 32, 32), (1, 1, 1), make_generator(0))
    assert len(prims) == 400  # 50 boxes + 50 spheres per volume
    assert torch.bincount(prims.sample).tolist() == [100] * 4
    assert prims.value.mean().abs() < 0.02 and prims.value.std() == pytest.approx(0.1, rel=0.15)
    spec = ShapeSpec.coerce({"kind": "cube", "count": [2, 3], "size_mm": [1, 2],
                             "distribution": "uniform", "value": [0.2, 0.3]})
    p = sample_primitives([spec], 8, (16, 16, 16), (1, 1, 1), make_generator(0))
    assert 16 <= len(p) <= 24 and p.value.min() >= 0.2 and p.value.max() <= 0.3
    with pytest.raises(ValueError):
        sample_primitives([ShapeSpec(kind="torus")], 1, (8, 8, 8), (1, 1, 1), make_generator(0))


def test_textures_only_inside_shapes():
    g = make_generator(2)
    spec = [ShapeSpec(kind="sphere", count=1, size_mm=(6, 6), value=(0.1, 0.0), region=0.0)]
    chi = random_shapes(1, (24, 24, 24), (1, 1, 1), g, specs=spec, smooth_texture=0.05,
                        fine_texture=0.05)[0]
    inside = chi != 0
    assert 700 < inside.sum() < 1000  # the sphere, 4/3 pi 216 ~ 905 voxels
    assert chi[inside].std() > 0.005  # textured, not constant

