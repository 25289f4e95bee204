#!/usr/bin/env bash
# One machine, N ranks (GPUs, or CPU processes over gloo when there is no GPU):
#   NPROC=8 ./launchers/local/train.sh data.shards=shards/vox2 model=resnet18
set -euo pipefail
cd "$(dirname "$0")/../.."
source launchers/env.sh
exec deepspeed --num_gpus "${NPROC:-2}" aupretrain/train.py "$@"
