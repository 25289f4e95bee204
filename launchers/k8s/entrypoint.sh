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
#
# Exit status (what the manifests' failure policies act on; torchrun's own status says neither which nor why):
#   0    the run finished, or stopped at train.stop_at (<run>/last_stop.json "reason": "finished" | "train.stop_at");
#   2    the configuration was refused: a bad override or setting (checked here, before torchrun starts), or a
#        rank exited 2 (a refusal met later: a resume that cannot take the changed settings ...). Not retried:
#        the Indexed Job fails at once (podFailurePolicy FailJob), the PyTorchJob too (restartPolicy ExitCode);
#   143  (128 + SIGTERM) the ranks stopped on a signal with a checkpoint (last_stop.json "reason": "signal":
#        a node drain or eviction of this pod or of a peer pod, whose ranks stop at the same step), or this pod
#        was terminated and its ranks did not stop cleanly. The pod counts as failed, is recreated, and resumes
#        from the checkpoint. Exiting 0 here would mark the pod's index done and the Job Succeeded mid-run;
#   1    anything else (torchrun gave up after MAX_RESTARTS rounds, no peer within JOIN_TIMEOUT, a storage
#        fault past its retries, a crash).
set -euo pipefail
# Pod termination (SIGTERM to PID 1, then SIGKILL after terminationGracePeriodSeconds): the ranks are asked
# to stop with a checkpoint (USR1, aupretrain/engine/signals.py) and torchrun is left running until they
# exit. Forwarding TERM to torchrun instead would SIGKILL the ranks 30 s later, mid-checkpoint. The trap is set
# first: as PID 1 this shell never receives a signal it has no handler for.
TERMINATED=""
AGENT=""
on_term() {
  TERMINATED=1
  if [ -n "$AGENT" ]; then
    echo "$(date -Is) SIGTERM: asking the ranks to checkpoint and stop"
    pkill -USR1 -P "$AGENT" || true
  else
    echo "$(date -Is) SIGTERM before training started"
  fi
}
trap on_term TERM
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
# LOCAL_ADDR (optional, e.g. the pod IP from the downward API): the address this node advertises to the others
# (the rank-0 node's becomes the workers' MASTER_ADDR); default: what the hostname resolves to.
LOCAL=()
[ -n "${LOCAL_ADDR:-}" ] && LOCAL=(--local_addr "$LOCAL_ADDR")

# A configuration error is refused here, once, with the trainer's own one line (`--check`: the checks the trainer
# makes before any process group, about 1 s): started under torchrun, every rank would exit 2, torchrun would
# restart them MAX_RESTARTS times and then exit 1, and the pod be retried.
check=0
python -m aupretrain.train --check "${ARGS[@]}" "$@" || check=$?
if [ "$check" -eq 2 ]; then
  echo "$(date -Is) configuration refused (above): exit 2, not retried; fix the arguments and apply again" >&2
  exit 2
elif [ "$check" -ne 0 ]; then
  echo "$(date -Is) warning: the configuration check itself failed (exit $check); torchrun decides" >&2
fi

# A refusal met after the process groups exist (a resume that cannot take the changed settings ...): a rank that
# exits 2 creates $AUPRETRAIN_REFUSED_MARK (aupretrain/train.py); torchrun reports only "failed" and would
# restart it, so it is watched for below.
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
export AUPRETRAIN_REFUSED_MARK=$SCRATCH/refused
# The stop record as it was before this job: the one rank 0 writes at the end (maybe on another pod, after
# this pod's ranks have exited) is told from an old one by its content.
STOP_RECORD=$RUN_DIR/last_stop.json
BEFORE=$(cat "$STOP_RECORD" 2>/dev/null || true)
[ -z "$TERMINATED" ] || exit 143   # terminated before training started: nothing to save
torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC" "${LOCAL[@]}" \
  --rdzv_backend c10d --rdzv_endpoint "$ENDPOINT" --rdzv_id "$RDZV_ID" \
  --rdzv_conf "join_timeout=$JOIN_TIMEOUT$HOST_CONF" --max_restarts "$MAX_RESTARTS" \
  -m aupretrain.train "${ARGS[@]}" "$@" &
AGENT=$!
# A refusal will not heal by restarting the ranks: stop torchrun (it stops any rank still running).
( while [ ! -e "$AUPRETRAIN_REFUSED_MARK" ]; do sleep 1; done
  echo "$(date -Is) a rank refused the configuration (exit 2): stopping torchrun instead of restarting the ranks" >&2
  kill -TERM "$AGENT" 2>/dev/null ) &
WATCH=$!
rc=0
while :; do
  wait "$AGENT" && rc=0 || rc=$?
  kill -0 "$AGENT" 2>/dev/null || break   # wait returns early when a trapped signal arrives
done
kill "$WATCH" 2>/dev/null || true
if [ -e "$AUPRETRAIN_REFUSED_MARK" ]; then
  echo "$(date -Is) configuration refused by the trainer (above): exit 2, not retried" >&2
  exit 2
fi
reason=""
if [ "$rc" -eq 0 ]; then
  # Why the ranks stopped: rank 0 writes <run>/last_stop.json last. Wait for it (STOP_RECORD_WAIT s: rank 0 may
  # be on another pod, and clients of the shared volume cache directory entries for up to a minute).
  for ((i = 0; i <= ${STOP_RECORD_WAIT:-120}; i++)); do
    now=$(cat "$STOP_RECORD" 2>/dev/null || true)
    if [ -n "$now" ] && [ "$now" != "$BEFORE" ]; then
      reason=$(python -c 'import json, sys; print(json.loads(sys.argv[1]).get("reason"))' "$now" 2>/dev/null || true)
      break
    fi
    sleep 1
  done
  case "$reason" in
    finished|train.stop_at) exit 0 ;;
    signal)
      echo "$(date -Is) the ranks stopped on a signal with a checkpoint: exit 143 (the pod is recreated and resumes)"
      exit 143 ;;
  esac
  echo "$(date -Is) the ranks exited 0 but $STOP_RECORD has no new stop record (reason: '$reason')" >&2
  rc=1
fi
if [ -n "$TERMINATED" ]; then
  echo "$(date -Is) terminated, and the ranks did not stop cleanly (exit $rc): exit 143" >&2
  exit 143
fi
exit "$rc"
