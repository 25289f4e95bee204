#!/usr/bin/env bash
# Multi-node with the deepspeed launcher and a hostfile (see docs/launching.md, "Several hosts").
#
# ssh mode (pdsh from this host to every host of the hostfile; same checkout path and venv everywhere):
#   HOSTFILE=launchers/deepspeed/hostfile ./launchers/deepspeed/multinode.sh data.shards=s3://bucket/vox2
# no-ssh mode (run the same command on every host yourself, e.g. from a scheduler; NODE_RANK differs):
#   NODE_RANK=1 MASTER_ADDR=node-01 HOSTFILE=... ./launchers/deepspeed/multinode.sh data.shards=...
#
# In ssh mode the remote ranks get only the variables the launcher forwards: DeepSpeed forwards MLFLOW_*,
# PYTHON*, NCCL/UCX ones and the lines of a `.deepspeed_env` file. This script writes
# `.deepspeed_env.aupretrain` (DS_ENV_FILE) from your `.deepspeed_env` files plus the AWS_* (S3 shards),
# AUPRETRAIN_*, HF_* and TORCH_* variables set here, so `s3://` shards and MLflow work on every host.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${AUPRETRAIN_VENV:-.venv}
# The environment is prepared once beforehand (launchers/env.sh on a shared filesystem, or one per host).
[ -f "$VENV/bin/activate" ] && source "$VENV/bin/activate"
python -c "import aupretrain, deepspeed" 2>/dev/null || {
  echo "multinode.sh: error: no environment with aupretrain and deepspeed ($VENV); run: source launchers/env.sh" >&2
  exit 2; }
HOSTFILE=${HOSTFILE:-launchers/deepspeed/hostfile}
[ -f "$HOSTFILE" ] || { echo "multinode.sh: error: hostfile $HOSTFILE not found (see launchers/deepspeed/hostfile.example)" >&2; exit 2; }
MASTER_ADDR=${MASTER_ADDR:-$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$HOSTFILE")}
MASTER_PORT=${MASTER_PORT:-29500}

if [ -n "${NODE_RANK:-}" ]; then
  exec deepspeed --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" aupretrain/train.py "$@"
fi

export DS_ENV_FILE=.deepspeed_env.aupretrain
{
  for f in "$HOME/.deepspeed_env" .deepspeed_env; do [ -f "$f" ] && grep -v '^\s*$' "$f"; done
  env | grep -E '^(AWS_|AUPRETRAIN_|HF_|TORCH_|OMP_NUM_THREADS=)' || true
} > "$DS_ENV_FILE"
chmod 600 "$DS_ENV_FILE"   # it may hold S3 credentials
exec deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  aupretrain/train.py "$@"
