"""The sample contract (dlqsm.simulation.sample): every dataset follows it, collate keeps it,
and check_sample rejects what breaks it."""

import pytest
import torch

from dlqsm.lit.datamodule import collate
from dlqsm.simulation.datasets import DiskQSMDataset, HeadCaseDataset, SimulatedQSMDataset
from dlqsm.simulation.disk import write_dataset
from dlqsm.simulation.sample import check_sample
from dlqsm.simulation.wrappers import MixtureDataset, WithInitialEstimate


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    shapes = SimulatedQSMDataset(2, (16, 16, 16), seed=1, source="shapes", signal=True)
    hybrid = SimulatedQSMDataset(2, (16, 16, 16), seed=2, source="hybrid")
    heads = WithInitialEstimate(HeadCaseDataset(1, shape=(20, 24, 20)), method="tkd")
    root = tmp_path_factory.mktemp("disk")
    write_dataset(heads, root, compress=False, progress=False)
    return {"shapes+signal": shapes, "hybrid": hybrid, "head case + estimate": heads,
            "disk": DiskQSMDataset(root), "mixture": MixtureDataset([shapes, hybrid], seed=0)}


def test_every_dataset_follows_the_contract(datasets):
    for name, ds in datasets.items():
        s = ds[0]
        check_sample(s)
        if len(ds) > 1:
            check_sample(collate([ds[0], ds[1]]), batched=True)
        assert name != "head case + estimate" or "chi_init" in s


def test_check_sample_rejects_broken_samples(datasets):
    good = datasets["shapes+signal"][0]
    broken = {
        "lacks": {k: v for k, v in good.items() if k != "mask"},
        "'field' has shape": dict(good, field=good["field"][0]),
        "unit vector": dict(good, b0_dir=good["b0_dir"] * 2),
        "positive": dict(good, voxel_size=-good["voxel_size"]),
        "int64": dict(good, labels=good["labels"].float()),
        "0 and 1": dict(good, mask=good["mask"] * 0.5),
        "'voxel_size' has shape": dict(good, voxel_size=torch.ones(2)),
    }
    for message, sample in broken.items():
        with pytest.raises(ValueError, match=message):
            check_sample(sample)
    with pytest.raises(ValueError, match="'chi' has shape"):
        check_sample(good, batched=True)
