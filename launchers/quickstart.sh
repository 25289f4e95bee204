#!/usr/bin/env bash
# The main job on built-in defaults, on 2 CPU ranks (or 2 GPUs):
#   synthetic face videos -> shards -> DALI -> DeepSpeed (2 ranks) -> MLflow -> AU probe table.
# Extra arguments are Hydra overrides for the training step (e.g. train.steps=600).
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/env.sh
NPROC="${NPROC:-2}"
SYNTH="${SYNTH_DIR:-data/synthetic}"
SHARDS="${SHARDS_DIR:-shards/synthetic}"
start=$(date +%s)
echo "== 1/3 synthetic face videos -> $SYNTH"
aupretrain-synth "$SYNTH" --overwrite --sheet "$SYNTH/contact_sheet.png" -- experiment=quickstart
echo "== 2/3 pack -> $SHARDS"
[ -f "$SHARDS/manifest.json" ] && [ "$SHARDS/manifest.json" -nt "$SYNTH/corpus.json" ] \
  && echo "(shards up to date)" || aupretrain-pack "$SYNTH" "$SHARDS" --align center -- experiment=quickstart
echo "== 3/3 pretrain on $NPROC ranks (DeepSpeed ZeRO-2), then the AU probe"
deepspeed --num_gpus "$NPROC" aupretrain/train.py experiment=quickstart data.shards="$SHARDS" "$@"
echo "== done in $(( $(date +%s) - start )) s; compare runs with: mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db"
