#!/usr/bin/env bash
# Reproduce dlqsm's shipped default model v2 (dlqsm/assets/default_model, docs/model_card.md):
# simulate brain-recipe volumes, recompute their TV estimate with the per-scan weight
# (alpha=auto), fine-tune v1 (or train from scratch) with experiment=brains_model, export the
# best checkpoint, and compare it on a held-out brain-recipe set, held-out heads and TV.
#
#   scripts/train_brains_model.sh                               # v2 as shipped (CPU, ~2 h on 2 cores)
#   N_TRAIN=160 INIT=none EPOCHS=20 LR=1e-3 scripts/train_brains_model.sh   # the full recipe from scratch
#   N_TRAIN=2 N_VAL=1 N_TEST=1 EPOCHS=1 EVAL_HEADS=1 scripts/train_brains_model.sh  # smoke run
#   EXTRA="trainer=gpu data.num_workers=8" scripts/train_brains_model.sh
#
# Variables: DATA (data folder, default data), N_TRAIN (59), N_VAL (8), N_TEST (6), INIT
# (init_weights: default = the shipped model's weights, none = from scratch, or a checkpoint),
# EPOCHS (12), LR (3e-4), RUN (run name), EXTRA (more dlqsm train overrides), EXPORT (export
# folder; default under the run, never the shipped model unless
# EXPORT=dlqsm/assets/default_model FORCE=1), EVAL_HEADS (2). Needs `pip install "dlqsm[anatomy]"`.
set -euo pipefail
DATA=${DATA:-data}
N_TRAIN=${N_TRAIN:-59}
N_VAL=${N_VAL:-8}
N_TEST=${N_TEST:-6}
INIT=${INIT:-default}
EPOCHS=${EPOCHS:-12}
LR=${LR:-3e-4}
RUN=${RUN:-brains_model_$(date +%Y%m%d_%H%M%S)}
EXTRA=${EXTRA:-}
EXPORT=${EXPORT:-logs/train/runs/$RUN/export}
EVAL_HEADS=${EVAL_HEADS:-2}
FORCE_FLAG=""
if [ "${FORCE:-0}" = "1" ]; then FORCE_FLAG="--force"; fi
INIT_ARG=""
if [ "$INIT" != "none" ]; then INIT_ARG="init_weights=$INIT"; fi

# 1. brain-recipe volumes (training seed 0, validation 1, test 3); resumable
dlqsm simulate simulation=brains_cases out_dir="$DATA/brains/train" n_samples="$N_TRAIN" seed=0 compress=false
dlqsm simulate simulation=brains_cases out_dir="$DATA/brains/val" n_samples="$N_VAL" seed=1 compress=false
dlqsm simulate simulation=brains_cases out_dir="$DATA/brains/test" n_samples="$N_TEST" seed=3 compress=false

# 2. the TV estimate with the per-scan weight, as `dlqsm infer` computes it (fields hard-linked)
for split in train val; do
  python scripts/reestimate_initial.py "$DATA/brains/$split" "$DATA/brains_auto/$split" --param alpha=auto
done

# 3. train on random 64^3 patches (resume an interrupted run: same RUN, add ckpt_path=last)
# shellcheck disable=SC2086
dlqsm train experiment=brains_model $INIT_ARG paths.data_dir="$DATA" run_name="$RUN" \
  data.train_dataset.root="$DATA/brains_auto/train" data.val_dataset.root="$DATA/brains_auto/val" \
  +model.params.alpha=auto optimizer.lr="$LR" trainer.max_epochs="$EPOCHS" $EXTRA

# 4. export the inference-only model (model.pt + metadata.json)
python - "$RUN" "$EXPORT" "$FORCE_FLAG" "$N_TRAIN" <<'PY'
import sys
from dlqsm.models import export_model
run, out, force, n = sys.argv[1], sys.argv[2], sys.argv[3] == "--force", sys.argv[4]
extra = {"name": "dlqsm-default (tv-resunet-brains)", "model_card": "docs/model_card.md",
         "training_data": f"{n} volumes of simulation=brains_cases (seed 0): MNI152-based "
                          "brain-like anatomy, procedural heads, shapes; chi_init = TV-ADMM "
                          "with the per-scan weight (alpha=auto)"}
print("exported to", export_model(f"logs/train/runs/{run}/checkpoints/best.ckpt", out,
                                  force=force, extra_metadata=extra))
PY

# 5. held-out data: the brain-recipe test set and simulated heads, against TV (per-scan weight)
dlqsm evaluate --heads "$EVAL_HEADS" --data "$DATA/brains/test" --methods tv "model=$EXPORT" \
  --param tv.alpha=auto -o "logs/train/runs/$RUN/evaluation" $FORCE_FLAG
