"""Evaluate learned and classical QSM from ``configs/evaluate.yaml`` (Hydra overrides).

    python scripts/evaluate.py data.heads.count=2 data.heads.shape=[96,120,120] out_dir=eval
    python scripts/evaluate.py 'methods=[tkd,tv,best.ckpt]' force=true

The same job as ``dlqsm evaluate --config configs/evaluate.yaml`` (which takes flags instead).
"""

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from dlqsm.errors import DlqsmError
from dlqsm.evaluation import run_evaluation


@hydra.main(version_base=None, config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        result = run_evaluation(OmegaConf.to_container(cfg, resolve=True))
    except DlqsmError as exc:
        print(f"evaluate: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"evaluate: wrote {len(result.files)} files to {result.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
