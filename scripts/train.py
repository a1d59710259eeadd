"""Train a QSM network: the Hydra main over configs/train.yaml (same job as `dlqsm train`).

Examples:
    python scripts/train.py debug=fast                      # seconds on a CPU
    python scripts/train.py experiment=quickstart_cpu       # a couple of minutes on a CPU
    python scripts/train.py experiment=hybrid_unet trainer=gpu_bf16
    python scripts/train.py -m hydra/launcher=slurm trainer=ddp trainer.devices=4 \\
        trainer.num_nodes=2 experiment=hybrid_unet
    python scripts/train.py --cfg job                       # print the composed config
"""

import hydra
from omegaconf import DictConfig

from dlqsm.lit.train import task


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return task(cfg)


if __name__ == "__main__":
    main()
