"""Data module, mixture and collate."""

import numpy as np
import pytest
import torch

from dlqsm.lit.datamodule import QSMDataModule, collate
from dlqsm.simulation.wrappers import MixtureDataset
from tests.lit.helpers import TinyQSMDataset


class Const(torch.utils.data.Dataset):
    def __init__(self, value, n=5):
        self.value, self.n = value, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"x": torch.tensor([self.value, i]), "name": f"{self.value}-{i}"}


def test_mixture_is_deterministic_and_weighted():
    mix = MixtureDataset([Const(0), Const(1)], weights=[0.8, 0.2], length=2000, seed=7)
    vals = [int(mix[i]["x"][0]) for i in range(len(mix))]
    assert abs(np.mean(vals) - 0.2) < 0.04
    again = MixtureDataset([Const(0), Const(1)], weights=[0.8, 0.2], length=2000, seed=7)
    assert [again[i]["name"] for i in range(50)] == [mix[i]["name"] for i in range(50)]
    other = MixtureDataset([Const(0), Const(1)], weights=[0.8, 0.2], length=2000, seed=8)
    assert [other[i]["name"] for i in range(50)] != [mix[i]["name"] for i in range(50)]
    with pytest.raises(IndexError):
        mix[2000]
    with pytest.raises(ValueError):
        MixtureDataset([Const(0)], weights=[1.0, 2.0])


def test_collate_stacks_tensors_and_lists_the_rest():
    out = collate([Const(3)[0], Const(3)[1]])
    assert out["x"].shape == (2, 2) and out["name"] == ["3-0", "3-1"]


def test_datamodule_loaders_and_fixed_validation():
    dm = QSMDataModule(TinyQSMDataset(4, seed=0), TinyQSMDataset(3, seed=1), batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["field"].shape == (2, 1, 16, 16, 16) and batch["b0_dir"].shape == (2, 3)
    v1 = [b["chi"] for b in dm.val_dataloader()]
    v2 = [b["chi"] for b in dm.val_dataloader()]
    assert sum(len(v) for v in v1) == 3
    assert all(torch.equal(a, b) for a, b in zip(v1, v2, strict=True))
    with pytest.raises(ValueError, match="distinct"):
        QSMDataModule(TinyQSMDataset(4, seed=5), TinyQSMDataset(2, seed=5))
