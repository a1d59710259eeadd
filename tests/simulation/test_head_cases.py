"""Whole-head training cases (HeadCaseDataset) and patches of stored samples (DiskQSMDataset)."""

import numpy as np
import pytest
import torch

from dlqsm.cli.main import main
from dlqsm.physics.dipole import DipoleOperator
from dlqsm.simulation.datasets import DiskQSMDataset, HeadCaseDataset
from dlqsm.simulation.disk import write_dataset

SHAPE = (36, 44, 36)


def test_head_case_field_is_the_masked_dipole_field_of_chi():
    ds = HeadCaseDataset(2, seed=4, shape=SHAPE, noise_std=0.0, padding_fraction=0.25)
    s = ds[1]
    chi, mask, field = s["chi"][0].double(), s["mask"][0].double(), s["field"][0].double()
    assert mask.sum() > 1000 and s["labels"].max() > 0
    assert abs(float((chi * mask).sum() / mask.sum())) < 1e-6  # referenced to the brain mean
    op = DipoleOperator(SHAPE, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0),
                        padding=tuple(n // 4 for n in SHAPE), dtype=torch.float64)
    ref = mask * op.forward(chi * mask)
    assert float((field - ref).abs().max()) < 1e-4 * float(ref.abs().max())
    # deterministic per (seed, index), different between indices and seeds
    torch.testing.assert_close(ds[1]["field"], s["field"])
    assert not torch.equal(ds[0]["chi"], s["chi"])
    assert not torch.equal(HeadCaseDataset(2, seed=5, shape=SHAPE)[1]["chi"], s["chi"])


def test_head_case_noise_is_drawn_in_range_and_only_inside_the_mask():
    clean = HeadCaseDataset(1, seed=2, shape=SHAPE)[0]
    ds = HeadCaseDataset(1, seed=2, shape=SHAPE, noise_std=(0.01, 0.02))
    sample, meta = ds.sample_with_meta(0)
    diff = (sample["field"] - clean["field"])[0]
    inside = sample["mask"][0] > 0
    assert 0.01 <= meta["noise_std"] <= 0.02
    assert abs(float(diff[inside].std()) - meta["noise_std"]) < 0.1 * meta["noise_std"]
    assert float(diff[~inside].abs().max()) == 0.0


def test_head_case_settings_are_checked():
    with pytest.raises(TypeError, match="unknown head-case settings"):
        HeadCaseDataset(1, shape=SHAPE, snr=10)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    write_dataset(HeadCaseDataset(2, seed=1, shape=SHAPE), out, compress=False, progress=False)
    return out


def test_patches_are_crops_of_the_stored_volumes(stored):
    whole = DiskQSMDataset(stored)
    ds = DiskQSMDataset(stored, patch_size=16, patches_per_volume=3, seed=7)
    assert len(ds) == 6 and ds.meta(4) == whole.meta(1)
    item = ds[4]
    assert item["chi"].shape == (1, 16, 16, 16) and item["labels"].dtype == torch.int64
    full = whole[1]["chi"][0].numpy()
    patch = item["chi"][0].numpy()
    # find the crop position in the whole volume: the patch must be an exact sub-block
    found = any(np.array_equal(full[i:i + 16, j:j + 16, k:k + 16], patch)
                for i in range(SHAPE[0] - 15) for j in range(SHAPE[1] - 15)
                for k in range(SHAPE[2] - 15))
    assert found
    assert item["mask"].sum() > 0  # centres lie in the brain's bounding box
    torch.testing.assert_close(ds[4]["field"], item["field"])  # fixed seed: same patch
    random_ds = DiskQSMDataset(stored, patch_size=16, patches_per_volume=3)
    assert not all(torch.equal(random_ds[0]["chi"], random_ds[0]["chi"]) for _ in range(3))


def test_patches_larger_than_the_volume_are_zero_padded(stored):
    ds = DiskQSMDataset(stored, patch_size=(40, 48, 16), seed=0)
    item = ds[0]
    assert item["field"].shape == (1, 40, 48, 16)
    assert float(item["mask"][0, 36:].abs().max()) == 0.0


def test_flipped_patches_stay_physically_consistent(stored):
    """A flip along any axis keeps the dipole kernel of B0 || z: D(flip chi) = flip(D chi)."""
    ds = DiskQSMDataset(stored, patch_size=SHAPE, flips=True, seed=3)
    whole = DiskQSMDataset(stored)[0]
    op = DipoleOperator(SHAPE, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), dtype=torch.float64)
    flipped = 0
    for i in range(4):
        ds.seed = 3 + i
        item = ds[0]
        if not torch.equal(item["chi"], whole["chi"]):
            flipped += 1
        torch.testing.assert_close(op.forward(item["chi"][0].double()),
                                   _flip_like(op.forward(whole["chi"][0].double()), item,
                                              whole), atol=1e-9, rtol=0)
    assert flipped > 0


def _flip_like(x, item, whole):
    """Apply to x the flips that turn whole['chi'] into item['chi']."""
    for dims in ([], [0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2]):
        if torch.equal(torch.flip(whole["chi"][0], dims), item["chi"][0]):
            return torch.flip(x, dims)
    raise AssertionError("the patch is not a flip of the volume")


def test_bad_patch_size_is_refused(stored):
    with pytest.raises(ValueError, match="patch_size"):
        DiskQSMDataset(stored, patch_size=(16, 16))


def test_simulate_head_cases_writes_the_tv_estimate(tmp_path):
    out = tmp_path / "hc"
    assert main(["simulate", "simulation=head_cases", f"out_dir={out}", "n_samples=1",
                 "compress=false", "progress=false", "simulation.dataset.shape=[32,36,32]",
                 "+simulation.params.max_iter=10"]) == 0
    item = DiskQSMDataset(out)[0]
    assert set(item) >= {"chi", "field", "mask", "chi_init"}
    from dlqsm.pipeline.inversion import invert

    ref = invert(item["field"][0], item["mask"][0], method="tv", max_iter=10).chi
    torch.testing.assert_close(item["chi_init"][0], ref, atol=1e-6, rtol=1e-5)


def test_head_case_b0_tilt_is_drawn_within_the_cone():
    ds = HeadCaseDataset(4, seed=0, shape=(24, 28, 24), max_tilt_deg=30.0)
    tilts = [float(np.degrees(np.arccos(ds[i]["b0_dir"][2]))) for i in range(4)]
    assert all(0.0 <= t <= 30.0 + 1e-4 for t in tilts) and max(tilts) > 1.0
    torch.testing.assert_close(ds[0]["b0_dir"].norm(), torch.tensor(1.0))
