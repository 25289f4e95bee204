#!/usr/bin/env bash
# Container entrypoint on Kubernetes: one torchrun agent per pod, c10d rendezvous, elastic restarts.
#
# Reads the environment that either launcher gives a pod:
#   Kubeflow PyTorchJob (training-operator): PET_NNODES, PET_NPROC_PER_NODE, PET_RDZV_ENDPOINT or
#     PET_MASTER_ADDR/PET_MASTER_PORT (else MASTER_ADDR/MASTER_PORT), PET_MAX_RESTARTS;
#   Indexed Job + headless Service (launchers/k8s/indexed-job.yaml): NNODES, NPROC_PER_NODE,
#     MASTER_ADDR (pod 0's DNS name), MASTER_PORT, JOB_COMPLETION_INDEX.
# Node ranks come from the rendezvous, not from the pod index, so a restarted pod simply rejoins: every
# agent re-runs the rendezvous (up to MAX_RESTARTS times) and training resumes from the last checkpoint in
# RUN_DIR (a ReadWriteMany volume every pod mounts). A pod that cannot gather its peers fails after
# JOIN_TIMEOUT seconds instead of waiting forever, and the Job/PyTorchJob restarts it.
# Arguments are Hydra overrides for aupretrain/train.py.
set -euo pipefail
NNODES=${PET_NNODES:-${NNODES:-1}}
NPROC=${PET_NPROC_PER_NODE:-${NPROC_PER_NODE:-gpu}}
if [ "$NPROC" = gpu ]; then  # one rank per visible GPU; CPU-only pods: one rank
  NPROC=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
ADDR=${PET_MASTER_ADDR:-${MASTER_ADDR:?MASTER_ADDR (or PET_MASTER_ADDR / PET_RDZV_ENDPOINT) must be set}}
PORT=${PET_MASTER_PORT:-${MASTER_PORT:-29500}}
ENDPOINT=${PET_RDZV_ENDPOINT:-$ADDR:$PORT}
RDZV_ID=${RDZV_ID:-${PET_RDZV_ID:-aupretrain}}
MAX_RESTARTS=${PET_MAX_RESTARTS:-${MAX_RESTARTS:-3}}
JOIN_TIMEOUT=${JOIN_TIMEOUT:-900}
RUN_DIR=${RUN_DIR:-/runs/aupretrain}
ARGS=(run.dir="$RUN_DIR")
[ -n "${AUPRETRAIN_SHARDS:-}" ] && ARGS+=(data.shards="$AUPRETRAIN_SHARDS")
INDEX=${JOB_COMPLETION_INDEX:-${PET_NODE_RANK:-${RANK:-}}}
# Pod 0 (the rendezvous address) hosts the c10d store; said explicitly rather than guessed from hostnames,
# which a pod's resolver may map to another interface than the one MASTER_ADDR names.
HOST_CONF=""
if [ -n "$INDEX" ]; then
  if [ "$INDEX" = 0 ]; then HOST_CONF=",is_host=1"; else HOST_CONF=",is_host=0"; fi
fi
echo "$(date -Is) pod ${HOSTNAME:-?} (index ${INDEX:-?}): $NNODES nodes x $NPROC ranks," \
     "rendezvous $ENDPOINT id $RDZV_ID, run $RUN_DIR"
# Unset the per-pod RANK/WORLD_SIZE the operator sets for the pod: torchrun sets them per rank.
unset RANK WORLD_SIZE LOCAL_RANK
# Pod termination (SIGTERM to PID 1, then SIGKILL after terminationGracePeriodSeconds): the ranks are asked
# to stop with a checkpoint (USR1, aupretrain/engine/signals.py) and torchrun is left running until they
# exit 0. Forwarding TERM to torchrun instead would SIGKILL the ranks 30 s later, mid-checkpoint.
# LOCAL_ADDR (optional, e.g. the pod IP from the downward API): the address this node advertises to the others
# (the rank-0 node's becomes the workers' MASTER_ADDR); default: what the hostname resolves to.
LOCAL=()
[ -n "${LOCAL_ADDR:-}" ] && LOCAL=(--local_addr "$LOCAL_ADDR")
torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC" "${LOCAL[@]}" \
  --rdzv_backend c10d --rdzv_endpoint "$ENDPOINT" --rdzv_id "$RDZV_ID" \
  --rdzv_conf "join_timeout=$JOIN_TIMEOUT$HOST_CONF" --max_restarts "$MAX_RESTARTS" \
  -m aupretrain.train "${ARGS[@]}" "$@" &
AGENT=$!
stop() { echo "$(date -Is) SIGTERM: asking the ranks to checkpoint and stop"; pkill -USR1 -P "$AGENT" || true; }
trap stop TERM
rc=0
while :; do
  wait "$AGENT" && rc=0 || rc=$?
  kill -0 "$AGENT" 2>/dev/null || break   # wait returns early when a trapped signal arrives
done
exit "$rc"
