#!/usr/bin/env bash
# Reproduce dlqsm's shipped default model (dlqsm/assets/default_model, docs/model_card.md):
# simulate whole heads with their TV-ADMM estimate, train experiment=default_model, export the
# best checkpoint, and compare it with classical inversion on held-out heads.
#
#   scripts/train_default_model.sh                       # the shipped recipe (CPU, ~2 h on 2 cores)
#   HEADS=4 EXTRA="trainer.max_epochs=1 data.train_dataset.patches_per_volume=2" \
#     scripts/train_default_model.sh                     # reduced size: minutes on a CPU
#   EXTRA="trainer=gpu data.num_workers=8" scripts/train_default_model.sh
#
# Variables: DATA (data folder, default data), HEADS (training heads, 96), RUN (run name),
# EXTRA (more dlqsm train overrides), EXPORT (export folder; default: a new folder under the
# run, never the shipped model unless EXPORT=dlqsm/assets/default_model FORCE=1), EVAL_HEADS (5).
set -euo pipefail
DATA=${DATA:-data}
HEADS=${HEADS:-96}
RUN=${RUN:-default_model_$(date +%Y%m%d_%H%M%S)}
EXTRA=${EXTRA:-}
EXPORT=${EXPORT:-logs/train/runs/$RUN/export}
EVAL_HEADS=${EVAL_HEADS:-5}
FORCE_FLAG=""
if [ "${FORCE:-0}" = "1" ]; then FORCE_FLAG="--force"; fi

# 1. whole heads (164x205x205, 1 mm, B0 along z) with chi_init = TV-ADMM; resumable
dlqsm simulate simulation=head_cases out_dir="$DATA/heads/train" n_samples="$HEADS" seed=0 compress=false
dlqsm simulate simulation=head_cases out_dir="$DATA/heads/val" n_samples=4 seed=1 compress=false

# 2. train on random 64^3 patches (resume an interrupted run: same RUN, add ckpt_path=last)
# shellcheck disable=SC2086
dlqsm train experiment=default_model paths.data_dir="$DATA" run_name="$RUN" $EXTRA

# 3. export the inference-only model (model.pt + metadata.json)
python - "$RUN" "$EXPORT" "$FORCE_FLAG" <<'PY'
import sys
from dlqsm.models import export_model
run, out, force = sys.argv[1], sys.argv[2], sys.argv[3] == "--force"
extra = {"name": "dlqsm-default (tv-resunet-heads)", "model_card": "docs/model_card.md",
         "training_data": "96 simulated adult heads (simulation=head_cases, seed 0), 164x205x205, "
                          "1 mm, B0 along z; random 64^3 patches of field and TV estimate"}
print("exported to", export_model(f"logs/train/runs/{run}/checkpoints/best.ckpt", out,
                                  force=force, extra_metadata=extra))
PY

# 4. held-out heads (seeds >= 10^6): the model against TKD and TV-ADMM
dlqsm evaluate --heads "$EVAL_HEADS" --methods tkd tv "model=$EXPORT" \
  -o "logs/train/runs/$RUN/evaluation" $FORCE_FLAG
