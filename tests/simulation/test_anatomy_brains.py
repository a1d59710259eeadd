"""Brain-like samples from the MNI152 template (dlqsm.simulation.brains)."""

import math
import sys

import pytest
import torch

pytest.importorskip("nilearn")

from dlqsm.errors import InputError  # noqa: E402
from dlqsm.physics.dipole import DipoleOperator  # noqa: E402
from dlqsm.simulation import brains  # noqa: E402
from dlqsm.simulation.anatomy import DGM_LABELS, LABELS  # noqa: E402
from dlqsm.simulation.rng import make_generator  # noqa: E402

QUIET = dict(
    texture_ppm=0.0,
    n_veins=0,
    lesion_prob=0.0,
    snr=None,
    elastic_mm=0.0,
    rotation_deg=0.0,
    scale=1.0,
    anisotropic_scale=0.0,
    chi_multiplier=1.0,
    side_difference=0.0,
    max_tilt_deg=0.0,
    voxel_size=1.0,
    fine_factor=1,
)


@pytest.fixture(scope="module")
def atlas():
    return brains.load_atlas()


def _identity_geometry(shape, centre_mni):
    """Grid voxel centres on template voxel centres (odd shape, integer MNI centre)."""
    return brains._Geometry(
        shape=shape,
        vox=torch.ones(3),
        b0=torch.tensor([0.0, 0.0, 1.0]),
        rot=torch.eye(3),
        scale=torch.ones(3),
        centre=torch.tensor(centre_mni, dtype=torch.float32),
        ctrl=torch.zeros(3, 2, 2, 2),
    )


def _template_box(atlas, shape, centre_mni):
    lo = [
        int(c - o) - (n - 1) // 2 for c, o, n in zip(centre_mni, atlas.origin, shape, strict=True)
    ]
    return tuple(slice(a, a + n) for a, n in zip(lo, shape, strict=True))


def test_tissue_values_land_where_the_maps_say(atlas):
    cfg = brains.BrainConfig(**QUIET)
    g = make_generator(3)
    vals = brains._draw_values(cfg, g)
    full = tuple(slice(None) for _ in range(3))
    chi_t = brains._template_chi(atlas, full, vals, cfg, g)
    # Outside the nuclei and the brainstem, chi is the tissue fractions times their values.
    plain = (atlas.nucleus_weight == 0) & (atlas.labels != LABELS["brainstem"])
    expect = atlas.gm * vals["gm"] + atlas.wm * vals["wm"]
    assert torch.allclose(chi_t[plain], expect[plain], atol=1e-6)
    grey = plain & (atlas.gm > 0.9)
    white = plain & (atlas.wm > 0.9)
    assert grey.sum() > 10_000 and white.sum() > 10_000
    assert float((chi_t[grey] - vals["gm"]).abs().max()) < 0.1 * abs(vals["gm"] - vals["wm"])
    assert float((chi_t[white] - vals["wm"]).abs().max()) < 0.1 * abs(vals["gm"] - vals["wm"])
    assert torch.all(chi_t[atlas.mask == 0] == 0)  # CSF reference outside the brain
    # Nuclei cores take the nucleus value (left and right alike without side difference).
    for name in ("globus_pallidus", "putamen", "thalamus"):
        core = (atlas.nucleus_weight > 0.999) & (atlas.labels == LABELS[name])
        assert core.sum() > 50
        assert torch.allclose(chi_t[core], torch.tensor(vals[name]), atol=5e-4)
    # An identity geometry samples the template exactly (no interpolation error).
    shape, centre = (33, 33, 33), (20.0, 0.0, 5.0)
    geom = _identity_geometry(shape, centre)
    chi_f, mask_f, depth, labels = brains._warp(geom, atlas, chi_t, full, atlas.origin, 1)
    box = _template_box(atlas, shape, centre)
    assert torch.allclose(chi_f, chi_t[box], atol=1e-6)
    assert torch.equal(labels, atlas.labels[box])
    assert torch.allclose(depth, atlas.depth[box], atol=1e-4)


def test_nuclei_inside_the_brain_at_their_side_and_depth(atlas):
    x0 = atlas.origin[0]
    xs = torch.arange(atlas.labels.shape[0]).float().view(-1, 1, 1) + x0
    for name in DGM_LABELS:
        region = atlas.labels == LABELS[name]
        assert region.sum() > 100, name
        assert torch.all(atlas.mask[region] == 1)
        # Deep grey matter, well below the cortex (midbrain and cerebellar nuclei lie nearer
        # the cisterns and the cerebellar surface).
        deep = 15.0 if name in ("caudate", "putamen", "globus_pallidus", "thalamus") else 8.0
        assert float(atlas.depth[region].median()) > deep, name
        grey = atlas.gm[region] >= 0.4
        if name in brains.GREY_NUCLEI:
            assert torch.all(grey), name
    for k, (name, side) in enumerate(atlas.nucleus_names):
        own = (atlas.nucleus_index == k) & (atlas.labels == LABELS[name])
        assert own.sum() > 10
        x = xs.expand_as(own)[own]
        assert torch.all(torch.sign(x) == side), (name, side)  # right side at x > 0 (RAS)
    # Symmetric template: both sides about equally large.
    for name in DGM_LABELS:
        n = [int(((atlas.labels == LABELS[name]) & (torch.sign(xs) == s)).sum()) for s in (1, -1)]
        assert abs(n[0] - n[1]) < 0.25 * max(n), (name, n)


def test_elastic_deformation_is_smooth_seeded_and_does_not_fold():
    shape, vox = (40, 44, 36), (1.5, 1.5, 1.5)
    u = brains.elastic_displacement(
        shape, vox, make_generator(5), amplitude_mm=20.0, spacing_mm=15.0, max_gradient=0.6
    )
    assert u.shape == (3, *shape)
    assert float(u.abs().max()) > 1.0  # a real deformation
    det = brains.jacobian_determinant(u, vox)
    assert float(det.min()) > 0.0  # no folding
    assert float(det.min()) >= (1 - 0.6) ** 3 - 1e-3
    for axis in range(3):  # smooth: gradients bounded by max_gradient
        assert float((torch.diff(u, dim=axis + 1) / vox[axis]).abs().max()) <= 0.6 + 1e-4
    again = brains.elastic_displacement(
        shape, vox, make_generator(5), amplitude_mm=20.0, spacing_mm=15.0, max_gradient=0.6
    )
    assert torch.equal(u, again)
    other = brains.elastic_displacement(
        shape, vox, make_generator(6), amplitude_mm=20.0, spacing_mm=15.0, max_gradient=0.6
    )
    assert not torch.equal(u, other)


def test_box_average_conserves_the_mean():
    x = torch.randn(2, 12, 18, 24)
    y = brains.box_average(x, 3)
    assert y.shape == (2, 4, 6, 8)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6)
    assert torch.allclose(y[0, 1, 2, 3], x[0, 3:6, 6:9, 9:12].mean(), atol=1e-6)


def test_same_seed_same_sample_and_the_contract(atlas):
    ds = brains.BrainDataset(3, seed=11, shape=(24, 24, 24), voxel_size=(0.8, 1.2))
    a, meta = ds.sample_with_meta(1)
    b = ds[1]
    c = ds[2]
    for key in ("chi", "field", "mask", "labels", "b0_dir", "voxel_size"):
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["chi"], c["chi"])
    assert a["chi"].shape == a["field"].shape == a["mask"].shape == (1, 24, 24, 24)
    assert a["labels"].dtype == torch.int64 and a["b0_dir"].shape == (3,)
    assert math.isclose(float(torch.linalg.norm(a["b0_dir"])), 1.0, rel_tol=1e-5)
    m = a["mask"] > 0
    assert abs(float(a["chi"][m].mean())) < 1e-5 and torch.all(a["chi"][~m] == 0)
    assert meta["source"] == "brain" and meta["seed"] == ds.sample_seed(1)
    with pytest.raises(IndexError):
        ds.sample_with_meta(3)


def test_field_is_the_masked_dipole_field_of_the_masked_chi(atlas):
    ds = brains.BrainDataset(
        1,
        seed=2,
        shape=(32, 28, 30),
        voxel_size=(0.9, 1.3),
        max_tilt_deg=40.0,
        snr=None,
        padding_fraction=0.5,
    )
    s = ds[0]
    m = s["mask"][0]
    chi = s["chi"][0]
    pad = tuple(int(n * 0.5) for n in chi.shape)
    op = DipoleOperator(chi.shape, s["voxel_size"].tolist(), s["b0_dir"], padding=pad)
    expect = m * op.forward(m * chi)
    assert float(s["field"][0].abs().max()) > 1e-3
    assert torch.allclose(s["field"][0], expect, atol=1e-6)
    assert torch.all(s["field"][0][m == 0] == 0)


def test_echo_fit_noise_matches_the_echo_fit_and_grows_where_signal_is_low():
    from dlqsm.pipeline.echoes import fit_echoes
    from dlqsm.simulation.signal import noiseless_signal

    shape = (6, 5, 4)
    m0 = torch.linspace(0.2, 1.0, 6).view(-1, 1, 1).expand(shape).contiguous()
    r2 = torch.linspace(10.0, 60.0, 5).view(1, -1, 1).expand(shape).contiguous()
    te = torch.tensor([0.004, 0.009, 0.014, 0.019, 0.024])
    mag = noiseless_signal(
        torch.zeros(shape), te, 3.0, m0=m0, r2star=r2, phi0=torch.zeros(shape)
    ).abs()
    fit = fit_echoes(torch.zeros((len(te), *shape)), te, 3.0, magnitude=mag, noise_std=0.01)
    ours = brains.echo_fit_noise_ppm(m0, r2, te, 3.0, 0.01)
    assert torch.allclose(ours, fit.noise_ppm, rtol=1e-3)
    assert torch.all(torch.diff(ours, dim=0) < 0)  # more signal, less noise
    assert torch.all(torch.diff(ours, dim=1) > 0)  # faster decay, more noise
    # Order of magnitude: ~2e-3 ppm at 3 T for SNR 50 (known from the echo-fit formula).
    assert 1e-4 < float(ours[-1, 0, 0]) < 1e-2


def test_noise_in_the_field_follows_the_noise_map(atlas):
    quiet = dict(QUIET, snr=20.0)
    ds = brains.BrainDataset(1, seed=4, shape=(28, 28, 28), **quiet)
    noisy, meta = ds.sample_with_meta(0)
    clean = brains.BrainDataset(1, seed=4, shape=(28, 28, 28), **dict(quiet, snr=None))[0]
    m = noisy["mask"] > 0
    resid = (noisy["field"] - clean["field"])[m]
    assert 0.5 < float(resid.std()) / meta["noise_ppm_median"] < 3.0


def test_background_option_leaves_a_realistic_local_field(atlas):
    kw = dict(QUIET, fov_mm=(176, 208, 176), centre="brain", voxel_size=3.0, padding_fraction=0.5)
    exact = brains.BrainDataset(1, seed=8, **kw)[0]
    s, meta = brains.BrainDataset(1, seed=8, background="vsharp", **kw).sample_with_meta(0)
    m, m0 = s["mask"] > 0, exact["mask"] > 0
    assert torch.all(m0[m]) and m.sum() < m0.sum()  # eroded, never grown
    assert meta["background"]["eroded_voxels"] == int(m0.sum() - m.sum())
    err = (s["field"] - exact["field"])[m]
    rel = float(torch.linalg.norm(err - err.mean()) / torch.linalg.norm(exact["field"][m]))
    assert 0.01 < rel < 0.8  # residual background: present, but far below the field


def test_mixture_is_seeded_and_written_by_the_disk_writer(tmp_path, atlas):
    from dlqsm.simulation.datasets import DiskQSMDataset, SimulatedQSMDataset
    from dlqsm.simulation.disk import write_dataset

    def shapes(length, seed):
        return SimulatedQSMDataset(length, shape=(16, 16, 16), seed=seed)

    def brain(length, seed):
        return brains.BrainDataset(length, seed, shape=(16, 16, 16), fine_factor=1)

    mix = brains.SourceMixture(
        {"brains": brain, "shapes": shapes},
        weights={"brains": 0.5, "shapes": 0.5},
        length=6,
        seed=1,
    )
    names = [mix.source_of(i) for i in range(6)]
    assert names == [mix.source_of(i) for i in range(6)] and set(names) == {"brains", "shapes"}
    many = brains.SourceMixture(
        {"brains": brain, "shapes": shapes},
        weights={"brains": 0.8, "shapes": 0.2},
        length=400,
        seed=2,
    )
    share = sum(many.source_of(i) == "brains" for i in range(400)) / 400
    assert 0.72 < share < 0.88
    write_dataset(mix, tmp_path / "mix", progress=False)
    disk = DiskQSMDataset(tmp_path / "mix")
    assert len(disk) == 6
    for i in range(6):
        assert disk.meta(i)["mixture_source"] == names[i]
        assert torch.allclose(disk[i]["chi"], mix[i]["chi"], atol=1e-6)
    with pytest.raises(ValueError):
        brains.SourceMixture({"brains": brain}, weights={"heads": 1.0})


def test_missing_nilearn_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)
    with pytest.raises(InputError, match=r"dlqsm\[anatomy\]"):
        brains.template_dir()


def test_configs_build_the_datasets():
    from hydra.utils import instantiate

    from dlqsm.cli.simulate import compose_config

    cfg = compose_config(["simulation=brains", "simulation.shape=[16,16,16]"])
    ds = instantiate(cfg.simulation, length=2, seed=0)
    assert isinstance(ds, brains.BrainDataset) and ds.config.shape == (16, 16, 16)
    cfg = compose_config(["simulation=brains_cases"])
    ds = instantiate(cfg.simulation, length=4, seed=0)
    mix = ds.dataset
    assert isinstance(mix, brains.SourceMixture)
    assert set(mix.names) == {"brains", "brains_bg", "heads", "shapes"}
    assert mix.datasets["brains_bg"].config.background == "pdf"


def test_dlqsm_simulate_writes_brains(tmp_path, atlas):
    from dlqsm.cli.simulate import compose_config, simulate_from_config
    from dlqsm.simulation.datasets import DiskQSMDataset

    out = tmp_path / "brains"
    cfg = compose_config(
        [
            "simulation=brains",
            "simulation.shape=[16,16,16]",
            "simulation.fine_factor=1",
            f"out_dir={out}",
            "n_samples=2",
            "progress=false",
        ]
    )
    summary = simulate_from_config(cfg)
    assert summary["written"] == 2
    disk = DiskQSMDataset(out)
    from hydra.utils import instantiate

    ds = instantiate(cfg.simulation, length=2, seed=0)  # the same recipe, rebuilt
    assert disk.meta(1)["source"] == "brain"
    assert torch.allclose(disk[1]["field"], ds[1]["field"], atol=1e-6)
