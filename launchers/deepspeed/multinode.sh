#!/usr/bin/env bash
# Multi-node with the deepspeed launcher and a hostfile:
#   HOSTFILE=launchers/deepspeed/hostfile ./launchers/deepspeed/multinode.sh data.shards=s3://bucket/vox2
set -euo pipefail
cd "$(dirname "$0")/../.."
source launchers/env.sh
exec deepspeed --hostfile "${HOSTFILE:-launchers/deepspeed/hostfile}" --master_addr "${MASTER_ADDR:-$(hostname)}" \
  aupretrain/train.py "$@"
