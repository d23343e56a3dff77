#!/usr/bin/env bash
# Train the default model metauas-lite0-256 on CPU in stages; re-running resumes each stage.
# The bundled model was made with exactly these stages, each stopped by the time budget given
# in its comment (MINUTES=0 means: run all steps). Logs: runs/default/<stage>/{train,val}_log.csv
#
# All stages cache the frozen encoder's features of a fixed pool of synthetic pairs: measured
# 1.9x more training steps per second at 128 px than synthesising + encoding every step
# (benchmarks/train_speed.py), at the price of reusing each pair for a few epochs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
M1=${STAGE1_MINUTES:-0}; M2=${STAGE2_MINUTES:-0}; M3=${STAGE3_MINUTES:-0}; M4=${STAGE4_MINUTES:-0}; M5=${STAGE5_MINUTES:-0}
EXTRA=${EXTRA:-}
CFG=configs/metauas-lite0-256.yaml
run() { $PY -m metauas.cli train --config "$CFG" --cache-features true --resume --no-progress "$@" $EXTRA; }
mkdir -p runs/default

# stage 1: 128 px (4x cheaper per pair), 1000 steps x 16 (bundled model: ran all, 42 min)
run --run-dir runs/default/stage1 --image-size 128 --steps 1000 --max-minutes "$M1" --cache-pool 2500
[ -f runs/default/stage1/last.safetensors ] || { echo "stage 1 not finished (re-run to resume)"; exit 0; }

# stage 2: 256 px fine-tune (bundled model: stopped by a 24-minute budget at step 252)
run --run-dir runs/default/stage2 --init-from runs/default/stage1/last.safetensors \
    --lr 0.0003 --warmup-steps 20 --steps 400 --max-minutes "$M2" --cache-pool 1500
[ -f runs/default/stage2/last.safetensors ] || { echo "stage 2 not finished (re-run to resume)"; exit 0; }

# stage 3: 256 px on a fresh pool of pairs (items 1500-2999) (19-minute budget)
run --run-dir runs/default/stage3 --init-from runs/default/stage2/last.safetensors \
    --lr 0.0002 --warmup-steps 10 --steps 350 --max-minutes "$M3" --cache-pool 1500 --cache-start 1500 \
    --num-workers 1 --val-every 100
[ -f runs/default/stage3/last.safetensors ] || { echo "stage 3 not finished (re-run to resume)"; exit 0; }

# stage 4: 256 px on another fresh, larger pool (items 3000-5999), longer cosine schedule
# (bundled model: stopped by a 110-minute budget at step 1755; started from stage 3)
run --run-dir runs/default/stage4 --init-from runs/default/stage3/last.safetensors \
    --lr 0.0003 --warmup-steps 20 --steps 1800 --max-minutes "$M4" --cache-pool 3000 --cache-start 3000 \
    --num-workers 1 --val-every 200
[ -f runs/default/stage4/last.safetensors ] || { echo "stage 4 not finished (re-run to resume)"; exit 0; }

# stage 5: 256 px on a third fresh pool (items 6000-8999), started from stage 4 (bundled model:
# stopped at step 1722 of 1800 by the time budget; ran 160 steps, was interrupted, resumed with
# --max-minutes 100; 106 min of steps in all)
run --run-dir runs/default/stage5 --init-from runs/default/stage4/last.safetensors \
    --lr 0.0002 --warmup-steps 20 --steps 1800 --max-minutes "$M5" --cache-pool 3000 --cache-start 6000 \
    --num-workers 1 --val-every 200
[ -f runs/default/stage5/last.safetensors ] || { echo "stage 5 not finished (re-run to resume)"; exit 0; }

# stage 6: the comparison architecture (configs/metauas-lite0-256-compare.yaml: nearest and
# aligned cosine distances at f3-f5 fed to the decoder, zero-initialised, so it starts as
# stage 5), fine-tuned from stage 5 on online synthetic pairs (every pair new) with
# inspection-like defects and 35 % no-change pairs (identical or nuisance-only).
CFG=configs/metauas-lite0-256-compare.yaml
run --run-dir runs/default/stage6 --init-from runs/default/stage5/last.safetensors \
    --cache-features false --steps "${STAGE6_STEPS:-1500}" --max-minutes "${STAGE6_MINUTES:-0}" --num-workers 1

# Not part of the bundled model (measured, README "What else was measured"): stage 7 continued
# stage 6's last weights with prompts that show another place of the same texture:
#   metauas train --config configs/metauas-lite0-256-recrop.yaml --cache-features false \
#       --run-dir runs/default/stage7 --init-from runs/default/stage6/last.safetensors --steps 450
#
# Bundling (the shipped model): stage 6's checkpoint at step 579, written to
# src/metauas/weights/ with its model card by scripts/bundle_model.py; the map options of the
# default pipeline were set with its --patchmatch-weight 0.8, --patchmatch-neighbourhood 3,
# --input-padding 32 and --patchmatch-distance l2, each when that option was chosen (the weights
# never changed), e.g.
#   python scripts/bundle_model.py src/metauas/weights/metauas-lite0-256.safetensors --patchmatch-distance l2
# Not part of the bundled model: stage 9 trained on padded inputs from stage 6's last weights
# (measured worse once fused, README):
#   metauas train --config configs/metauas-lite0-256-compare.yaml --input-padding 32 \
#       --cache-features false --run-dir runs/default/stage9 \
#       --init-from runs/default/stage6/last.safetensors --steps 300 --lr 0.00005 --warmup-steps 10
# Stage 10 (not bundled; measured at steps 160 and 300, README; stopped at step 420):
# surface-finish changes + padded input, from the bundled stage-6 step-579 weights:
#   metauas train --config configs/metauas-lite0-256-finish.yaml --cache-features false \
#       --run-dir runs/default/stage10 --init-from <stage-6 step-579 weights> --steps 600 \
#       --lr 0.00005 --warmup-steps 10 --val-every 100
