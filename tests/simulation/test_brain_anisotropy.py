"""White-matter susceptibility anisotropy in the brain simulator (BrainConfig.anisotropy_ppm)
and the fibre directions it uses (dlqsm.simulation.fibres)."""

import math

import numpy as np
import pytest
import torch

from dlqsm.simulation.fibres import fibre_directions


def tube(shape, axis, radius):
    """Partial-volume-free tube (WM fraction 1) of ``radius`` voxels through the centre."""
    g = np.stack(np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij"))
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    along = np.einsum("i,ixyz->xyz", a, g)
    dist = np.linalg.norm(g - along * a.reshape(3, 1, 1, 1), axis=0)
    return (dist <= radius).astype(np.float32)


@pytest.mark.parametrize("axis", [(1.0, 0.0, 0.0), (0.3, 0.8, 0.5)])
def test_fibre_directions_follow_a_tube_and_lie_in_a_sheet(axis):
    wm = tube((32, 32, 32), axis, 4.0)
    n = fibre_directions(wm, tensor_mm=3.0)
    core = tube((32, 32, 32), axis, 2.0) > 0
    core[:8], core[-8:] = False, False  # away from the tube's ends at the box faces
    a = np.asarray(axis) / np.linalg.norm(axis)
    cos = np.abs(np.einsum("i,in->n", a, n[:, core]))
    assert core.sum() > 100 and cos.min() > math.cos(math.radians(5))
    assert np.allclose(np.linalg.norm(n[:, wm > 0.05], axis=0), 1.0, atol=1e-5)
    assert np.all(n[:, wm <= 0.05] == 0)
    # a slab normal to z: the direction of least change lies in the slab's plane
    slab = np.zeros((24, 24, 24), np.float32)
    slab[:, :, 9:15] = 1.0
    ns = fibre_directions(slab)
    assert np.abs(ns[2, 4:-4, 4:-4, 10:14]).max() < 0.05


nilearn = pytest.importorskip("nilearn")

from dlqsm.physics.anisotropy import anisotropic_field  # noqa: E402
from dlqsm.physics.dipole import DipoleOperator  # noqa: E402
from dlqsm.simulation import brains  # noqa: E402
from dlqsm.simulation.anatomy import LABELS  # noqa: E402
from dlqsm.simulation.rng import make_generator  # noqa: E402

SMALL = dict(
    shape=(32, 32, 32),
    voxel_size=1.0,
    snr=None,
    centre="brain",
    fine_factor=1,
    n_veins=0,
    lesion_prob=0.0,
    scale=0.7,
)  # scale < 1: more brain in the box


@pytest.fixture(scope="module")
def atlas():
    return brains.load_atlas()


def test_template_fibres_run_along_known_tracts(atlas):
    n = brains.load_fibres()
    assert n.shape == (3, *atlas.wm.shape)
    origin = np.asarray(atlas.origin)

    def at(mni):
        i = np.round(np.asarray(mni) - origin).astype(int)
        return n[:, i[0], i[1], i[2]].abs()

    for genu_or_splenium in ((0, 25, 8), (0, -38, 12)):  # corpus callosum: left-right
        assert float(at(genu_or_splenium)[0]) > 0.95
    for capsule in ((24, -14, 8), (-24, -14, 8), (18, 10, 6)):  # internal capsule: mostly S-I
        assert float(at(capsule)[2]) > 0.8


def test_off_by_default_and_switching_it_on_changes_only_the_field(atlas):
    assert brains.BrainConfig().anisotropy_ppm is None
    off, meta_off = brains.BrainDataset(1, seed=4, **SMALL).sample_with_meta(0)
    zero = brains.BrainDataset(1, seed=4, anisotropy_ppm=0.0, **SMALL)[0]
    for key in off:
        assert torch.equal(off[key], zero[key]), key
    assert "anisotropy_ppm" not in meta_off
    on = {}
    for dchi in (0.01, 0.02):
        on[dchi], meta = brains.BrainDataset(
            1, seed=4, anisotropy_ppm=dchi, **SMALL
        ).sample_with_meta(0)
        assert meta["anisotropy_ppm"] == dchi and meta["anisotropy_rms_ppm"] > 0
        for key in ("chi", "mask", "labels", "b0_dir", "voxel_size"):  # other draws unchanged
            assert torch.equal(off[key], on[dchi][key]), key
    d1 = (on[0.01]["field"] - off["field"])[0]
    d2 = (on[0.02]["field"] - off["field"])[0]
    m = off["mask"][0] > 0
    assert torch.all(d1[~m] == 0)
    assert torch.allclose(d2, 2 * d1, atol=1e-7)  # linear in dchi
    rms = float(d2[m].square().mean().sqrt())
    assert 0.02 * float(off["field"][0][m].square().mean().sqrt()) < rms
    # The sources lie in white matter (exactly: test_fibres_turn_with_the_sample_rotation), but
    # a dipole field reaches beyond its sources: > 4 mm from WM it is still ~65 % of its mean
    # in WM here (measured). Its Laplacian, which vanishes outside the sources, is what
    # concentrates in WM: measured 3.5x its mean > 4 mm away (the template's small WM
    # fractions in grey matter are sources too).
    from scipy import ndimage

    wm = off["labels"][0] == LABELS["wm"]
    far = m & torch.from_numpy(ndimage.distance_transform_edt(~wm.numpy()) > 4.0)
    far[:2], far[-2:], far[:, :2], far[:, -2:], far[..., :2], far[..., -2:] = (False,) * 6
    assert wm.sum() > 500 and far.sum() > 200
    assert float(d2[wm].abs().mean()) > 1.2 * float(d2[far].abs().mean())
    lap = -6 * d2 + sum(torch.roll(d2, s, a) for a in range(3) for s in (1, -1))
    assert float(lap[wm].abs().mean()) > 2.5 * float(lap[far].abs().mean())


def test_seeded_range_is_reproducible_and_recorded(atlas):
    ds = brains.BrainDataset(3, seed=9, anisotropy_ppm=(0.0, 0.03), **SMALL)
    a, meta_a = ds.sample_with_meta(2)
    b, meta_b = ds.sample_with_meta(2)
    assert (
        torch.equal(a["field"], b["field"]) and meta_a["anisotropy_ppm"] == meta_b["anisotropy_ppm"]
    )
    draws = {ds.sample_with_meta(i)[1]["anisotropy_ppm"] for i in (0, 1)} | {
        meta_a["anisotropy_ppm"]
    }
    assert len(draws) == 3 and all(0.0 <= v <= 0.03 for v in draws)


def test_fibres_turn_with_the_sample_rotation(atlas):
    """A grid rotated by 90 degrees about z onto template voxel centres: the simulator's source
    (bilinear sampling, B0 and fibres converted between voxel and MNI axes) equals the field
    of the template's WM fraction and fibre directions gathered voxel by voxel and turned by
    the rotation (rot^T n)."""
    shape, centre = (25, 27, 23), torch.tensor([0.0, -10.0, 14.0])
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    b0 = torch.tensor([0.3, -0.5, 0.8]) / math.sqrt(0.98)
    geom = brains._Geometry(
        shape=shape,
        vox=torch.ones(3),
        b0=b0,
        rot=rot,
        scale=torch.ones(3),
        centre=centre,
        ctrl=torch.zeros(3, 2, 2, 2),
    )
    box, origin = brains._bounding_box(geom, atlas)
    cfg = brains.BrainConfig(anisotropy_ppm=0.02)
    mask = torch.ones(shape, dtype=torch.bool)
    pad = (6, 6, 6)
    meta = {}
    got = brains._anisotropy_field(
        cfg, make_generator(0), geom, atlas, box, origin, mask, pad, meta
    )
    pts = brains._grid_points(shape, [1.0, 1.0, 1.0])
    idx = torch.round(geom.to_mni(pts) - torch.tensor(atlas.origin)).long()
    i, j, k = idx.unbind(-1)
    wm = atlas.wm[i, j, k]
    n_grid = torch.einsum("ji,jxyz->ixyz", rot, brains.load_fibres()[:, i, j, k])
    op = DipoleOperator(shape, (1.0, 1.0, 1.0), b0, padding=pad)
    expect = anisotropic_field(0.02 * wm, n_grid, op)
    assert float(expect.abs().max()) > 1e-3 and meta["anisotropy_ppm"] == 0.02
    assert torch.allclose(got, expect, atol=1e-3 * float(expect.abs().max()))
    # turning the fibres the wrong way (rot instead of rot^T) is visibly different
    wrong = anisotropic_field(
        0.02 * wm, torch.einsum("ij,jxyz->ixyz", rot, brains.load_fibres()[:, i, j, k]), op
    )
    assert not torch.allclose(got, wrong, atol=0.1 * float(expect.abs().max()))


def test_config_key_is_off_and_can_be_set():
    from hydra.utils import instantiate

    from dlqsm.cli.simulate import compose_config

    cfg = compose_config(["simulation=brains", "simulation.shape=[16,16,16]"])
    assert cfg.simulation.anisotropy_ppm is None
    cfg = compose_config(["simulation=brains", "simulation.anisotropy_ppm=[0.0,0.03]"])
    ds = instantiate(cfg.simulation, length=2, seed=0)
    assert ds.config.anisotropy_ppm == [0.0, 0.03]
    # the brains sources of the mixture recipe take it like any other BrainConfig key
    cfg = compose_config(
        ["simulation=brains_cases", "+simulation.dataset.sources.brains.anisotropy_ppm=[0.0,0.03]"]
    )
    mix = instantiate(cfg.simulation, length=4, seed=0).dataset
    assert mix.datasets["brains"].config.anisotropy_ppm == [0.0, 0.03]
    assert mix.datasets["brains_bg"].config.anisotropy_ppm is None
    with pytest.raises(ValueError, match="anisotropy_ppm"):
        brains.BrainConfig(anisotropy_ppm=[0.0, 0.01, 0.02])
