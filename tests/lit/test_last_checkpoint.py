"""last.ckpt is the newest state, also when the monitored metric stops improving (resume and
SLURM requeue start from it)."""

import torch

from dlqsm.lit.train import train
from tests.lit.test_train import QUICK


def test_last_checkpoint_follows_every_epoch(compose_cfg, tmp_path):
    # lr 0: val/loss is the same every epoch, so best.ckpt stays at epoch 0
    cfg = compose_cfg([*QUICK, "trainer.max_epochs=3", "optimizer.lr=0", "scheduler=none",
                       "optimizer.weight_decay=0"])
    assert train(cfg)["global_step"] == 6
    ckpts = tmp_path / "checkpoints"
    best = torch.load(ckpts / "best.ckpt", weights_only=False)
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    assert best["global_step"] == 2
    assert (last["global_step"], last["epoch"]) == (6, 2)
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
