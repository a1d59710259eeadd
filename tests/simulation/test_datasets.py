"""Simulated datasets: the sample contract, determinism, physics of every sample."""

import math

import pytest
import torch
from torch.utils.data import DataLoader

from dlqsm.physics.dipole import DipoleOperator
from dlqsm.physics.units import ppm_to_phase
from dlqsm.simulation.datasets import (
    SimulatedQSMDataset,
    SimulatedQSMIterableDataset,
    generate_batch,
)
from dlqsm.simulation.head import LABELS
from dlqsm.simulation.rng import make_generator
from dlqsm.simulation.signal import wrap_phase

SHAPE = (20, 24, 16)
CONTRACT = {"chi": ((1, *SHAPE), torch.float32), "field": ((1, *SHAPE), torch.float32),
            "mask": ((1, *SHAPE), torch.float32), "b0_dir": ((3,), torch.float32),
            "voxel_size": ((3,), torch.float32), "labels": ((1, *SHAPE), torch.int64)}
SIGNAL = {"magnitude": ((3, *SHAPE), torch.float32), "phase": ((3, *SHAPE), torch.float32),
          "te": ((3,), torch.float32), "b0_tesla": ((), torch.float32),
          "total_field": ((1, *SHAPE), torch.float32)}


def check_physics(s, padding=0):
    """field == mask * D(mask * chi); chi referenced in the mask; b0 unit."""
    m = s["mask"][0]
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    op = DipoleOperator(SHAPE, s["voxel_size"].tolist(), s["b0_dir"], padding=padding)
    assert torch.allclose(s["field"][0], m * op.forward(s["chi"][0] * m), atol=2e-6)
    assert abs(s["chi"][0][m > 0].mean().item()) < 1e-5
    assert (s["chi"][0][m == 0] == 0).all() and (s["field"][0][m == 0] == 0).all()
    assert s["b0_dir"].norm().item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("source", ["shapes", "head", "hybrid"])
@pytest.mark.parametrize("signal", [False, True])
def test_contract_and_physics(source, signal):
    ds = SimulatedQSMDataset(3, SHAPE, seed=0, source=source, signal=signal, n_echoes=3,
                             voxel_size_range=(0.8, 2.5), max_tilt_deg=35, shape_mask=0.5,
                             padding=3)
    s = ds[2]
    want = dict(CONTRACT, **(SIGNAL if signal else {}))
    assert set(s) == set(want)
    for k, (shape, dtype) in want.items():
        assert tuple(s[k].shape) == shape and s[k].dtype == dtype, k
    check_physics(s, padding=3)
    assert math.degrees(math.acos(s["b0_dir"][2].item())) <= 35 + 1e-3
    assert s["voxel_size"].min() >= 0.8 and s["voxel_size"].max() <= 2.5
    assert s["chi"].abs().max() < 5.0  # ppm, plausible
    if source == "shapes":
        assert (s["labels"] == 0).all()
    else:
        assert (s["labels"] > 0).any() and s["labels"].max() <= max(LABELS.values())
        assert s["mask"].mean() < 0.9
    if signal:
        assert s["phase"].min() >= -math.pi and s["phase"].max() <= math.pi
        assert (s["te"] > 0).all() and torch.all(torch.diff(s["te"]) > 0)


def test_deterministic_per_index_and_seed():
    kw = dict(shape=SHAPE, source={"shapes": 1, "head": 1}, voxel_size=(1.0, 2.0))
    a, b = SimulatedQSMDataset(4, seed=3, **kw), SimulatedQSMDataset(4, seed=3, **kw)
    c = SimulatedQSMDataset(4, seed=4, **kw)
    for i in (0, 3):
        assert all(torch.equal(a[i][k], b[i][k]) for k in CONTRACT)
    assert not torch.equal(a[0]["chi"], a[1]["chi"])
    assert not torch.equal(a[0]["chi"], c[0]["chi"])
    # order of access does not matter
    assert torch.equal(b[3]["field"], SimulatedQSMDataset(4, seed=3, **kw)[3]["field"])
    with pytest.raises(IndexError):
        a[4]


def test_noiseless_echo_phase_matches_total_field():
    ds = SimulatedQSMDataset(2, SHAPE, seed=1, source="head", signal=True, snr=None,
                             phase_offset=False, n_echoes=3, b0_tesla=[3.0, 7.0])
    s = ds[0]
    sig = s["magnitude"][0] > 0
    assert sig.sum() > 100
    for n in range(3):
        want = wrap_phase(ppm_to_phase(s["total_field"][0], s["te"][n].item(),
                                       s["b0_tesla"].item()))
        assert wrap_phase(s["phase"][n] - want)[sig].abs().max() < 1e-3


def test_field_noise_and_chi_scale():
    clean = SimulatedQSMDataset(1, SHAPE, seed=2)[0]
    noisy = SimulatedQSMDataset(1, SHAPE, seed=2, noise_std=0.02)[0]
    d = (noisy["field"] - clean["field"])[0]
    assert d.std().item() == pytest.approx(0.02, rel=0.1)
    scaled = SimulatedQSMDataset(1, SHAPE, seed=2, chi_multiplier=2.0)[0]
    assert torch.allclose(scaled["chi"], 2 * clean["chi"], atol=1e-6)
    assert torch.allclose(scaled["field"], 2 * clean["field"], atol=1e-6)


def test_generate_batch_and_loader():
    ds = SimulatedQSMDataset(8, SHAPE, seed=0, source={"shapes": 1, "hybrid": 1},
                             voxel_size_range=(0.7, 1.5), max_tilt_deg=20)
    b = ds.generate_batch(4, "cpu", make_generator(9))
    again = ds.generate_batch(4, "cpu", make_generator(9))
    assert all(torch.equal(b[k], again[k]) for k in b)
    assert b["chi"].shape == (4, 1, *SHAPE) and b["b0_dir"].shape == (4, 3)
    for i in range(4):
        check_physics({k: v[i] for k, v in b.items()})
    assert not torch.equal(ds.generate_batch(2)["chi"], ds.generate_batch(2)["chi"])
    loaded = next(iter(DataLoader(ds, batch_size=2)))
    assert loaded["field"].shape == (2, 1, *SHAPE)
    assert torch.equal(loaded["chi"][1], ds[1]["chi"])
    one = generate_batch(2, source="shapes", shape=SHAPE, seed=1)
    assert one["chi"].shape == (2, 1, *SHAPE)


def test_iterable_dataset():
    it = SimulatedQSMIterableDataset(5, SHAPE, seed=0, chunk_size=2)
    items = list(it)
    assert len(items) == 5 == len(it)
    for s in items:
        check_physics(s)
    again = list(SimulatedQSMIterableDataset(5, SHAPE, seed=0, chunk_size=2))
    assert torch.equal(items[4]["chi"], again[4]["chi"])


def test_source_mixture_and_errors():
    ds = SimulatedQSMDataset(12, SHAPE, seed=0, source={"shapes": 0.5, "head": 0.5})
    heads = sum(bool((ds[i]["labels"] > 0).any()) for i in range(12))
    assert 1 <= heads <= 11
    with pytest.raises(ValueError):
        SimulatedQSMDataset(2, SHAPE, source="brains")
    with pytest.raises(TypeError):
        SimulatedQSMDataset(2, SHAPE, colour="red")
    dq = SimulatedQSMDataset(1, SHAPE, shapes="deepqsm", smooth_texture=0, fine_texture=0)[0]
    assert dq["chi"].std() > 0.01


def test_hybrid_adds_shapes_inside_the_brain_only():
    kw = dict(shape=(32, 32, 32), seed=6, voxel_size=(2.0, 2.0, 2.0), signal=True, snr=None)
    head = SimulatedQSMDataset(1, source="head", **kw)[0]
    hyb = SimulatedQSMDataset(1, source="hybrid", **kw)[0]
    m = head["mask"][0] > 0
    assert torch.equal(head["mask"], hyb["mask"]) and torch.equal(head["labels"], hyb["labels"])
    diff = (hyb["chi"] - head["chi"])[0]
    assert (diff[~m] == 0).all() and diff[m].abs().max() > 0.02
    # outside the brain the sources (skull, air) are unchanged: the total fields differ only
    # by the field of the added shapes, which decays away from the brain
    assert (hyb["total_field"] - head["total_field"]).abs().max() < 1.0


@pytest.mark.gpu
def test_generate_batch_on_cuda():
    ds = SimulatedQSMDataset(4, SHAPE, seed=0, source={"shapes": 1, "hybrid": 1}, signal=True,
                             voxel_size_range=(0.8, 1.5), shape_mask=0.5, noise_std=0.0)
    b = ds.generate_batch(4, "cuda", make_generator(0, "cuda"))
    assert all(v.device.type == "cuda" for v in b.values())
    for i in range(4):
        check_physics({k: v[i].cpu() for k, v in b.items()})
    cpu_gen = ds.generate_batch(2, "cuda", make_generator(1))
    assert cpu_gen["chi"].is_cuda


def test_renamed_settings_keep_working_with_a_warning():
    """chi_scale -> chi_multiplier, a two-number voxel_size -> voxel_size_range, HeadCase
    padding -> padding_fraction: same samples, a DeprecationWarning, one meaning per name."""
    from dlqsm.simulation.datasets import HeadCaseDataset

    new = SimulatedQSMDataset(1, (16, 16, 16), seed=5, chi_multiplier=1.7,
                              voxel_size_range=(0.8, 1.4))
    with pytest.warns(DeprecationWarning) as record:
        old = SimulatedQSMDataset(1, (16, 16, 16), seed=5, chi_scale=1.7, voxel_size=(0.8, 1.4))
    assert {"chi_multiplier", "voxel_size_range"} <= {
        w for r in record for w in ("chi_multiplier", "voxel_size_range") if w in str(r.message)}
    assert old.config.as_dict() == new.config.as_dict()
    torch.testing.assert_close(old[0]["chi"], new[0]["chi"])
    assert new.config.voxel_size is None and new[0]["voxel_size"].min() >= 0.8
    fixed = SimulatedQSMDataset(1, (16, 16, 16), voxel_size=2.0).config
    assert fixed.voxel_size == (2.0, 2.0, 2.0) and fixed.voxel_size_range is None
    with pytest.raises(ValueError, match="both set"):
        SimulatedQSMDataset(1, (16, 16, 16), voxel_size=(1, 1, 1), voxel_size_range=(1, 2))
    with pytest.raises(ValueError, match="low, high"):
        SimulatedQSMDataset(1, (16, 16, 16), voxel_size_range=(2, 1))
    with pytest.warns(DeprecationWarning, match="padding_fraction"):
        assert HeadCaseDataset(1, padding=0.1).config.padding_fraction == 0.1
    assert "padding" not in HeadCaseDataset(1).config.as_dict()
