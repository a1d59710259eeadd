"""Write a simulated QSM dataset to disk: the Hydra main over configs/simulate.yaml.

Same job as ``dlqsm simulate``. Examples:
    python scripts/simulate.py out_dir=data/sim/train n_samples=1000
    python scripts/simulate.py simulation=head simulation.signal=true out_dir=data/sim/heads
    python scripts/simulate.py --cfg job          # print the composed config
"""

import hydra
from omegaconf import DictConfig

from dlqsm.cli.simulate import simulate_from_config


@hydra.main(version_base="1.3", config_path="../configs", config_name="simulate")
def main(cfg: DictConfig) -> None:
    simulate_from_config(cfg)


if __name__ == "__main__":
    main()
