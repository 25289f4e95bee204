#!/usr/bin/env bash
# The quality benchmark's GPU preset, the training half (issue: "the same bench runs on a GPU, ResNet-18 at
# 112 px, bf16"): pretrain CLP (`clp_hog_basis`) and the supervised bound on one GPU with the still-head
# protocol of bench/quality.py, then hand the exported encoders back for the probe. The probe runs where PyAV
# is (it decodes the evaluation videos): `bench/gpu_quality_probe.py` on any machine with the project installed.
#
#   here:  bash bench/gpu_quality.sh --prepare SHARDS CORPUS   # .gpuq/ (git-ignored): the still-head shards
#                                                             # (without their DALI indexes: rebuilt from the
#                                                             # tars) and the corpus's AU labels (aus + au only)
#   GPU:   device tool, right after bench/gpu_check.sh on the same warm machine (its wheels are still installed
#          in /tmp/site: .whl and .gpuq together are over the 64 MiB a call may carry):
#          run(command="bash bench/gpu_quality.sh", carry=[".gpuq"], timeout_s=480)
#          (one call allows 600 s: if both runs do not fit, one call per method, METHODS=clp_hog_basis / supervised)
#   then:  python bench/gpu_quality_probe.py DEVICE_FILES_DIR [DIR2] --json bench/results/quality_gpu.json
#
# The GPU machine's image has torch but neither DALI, MLflow nor PyAV: the runs use the project's torch
# baseline loader (`data.loader=torch`) and `tracking.enabled=false`; hydra/omegaconf/DeepSpeed/webdataset
# travel as wheels (bash bench/gpu_check.sh --fetch-wheels). Global batch 32 clips on one GPU = the CPU
# protocol's 2 ranks x 16 (same negatives per step). The two encoders come back as fp16 safetensors (the
# device tool returns at most 16 MiB a file: ResNet-18 is 45 MB in fp32), split into parts of a tar.
# Session 27 (one H200): with the torch loader of then (~700 source frames/s, since reworked) a 1,500-step run
# needed ~8 min, more than the session's device time; measure the loader first (docs/benchmarks.md).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  shards=$2; corpus=$3
  grep -qx '/.gpuq/' .git/info/exclude 2>/dev/null || echo '/.gpuq/' >> .git/info/exclude
  rm -rf .gpuq && mkdir -p .gpuq/shards .gpuq/labels
  cp "$shards"/manifest.json "$shards"/*.tar .gpuq/shards/
  python3 - "$corpus" .gpuq/labels <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for f in sorted(src.glob("*/*.labels.json")):
    lab = json.loads(f.read_text())
    (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
    # float32's shortest repr: the loader reads float32, so the values it sees are unchanged
    rows = ",".join("[" + ",".join(repr(float(np.float32(v))) if v else "0" for v in row) + "]" for row in lab["au"])
    (dst / f.parent.name / f.name).write_text(f'{{"aus":{json.dumps(lab["aus"])},"au":[{rows}]}}')
EOF
  du -sh .gpuq; exit 0
fi
OUT="${OUT:-bench/results/gpu_quality}"
STEPS="${STEPS:-1500}"
BF16="${BF16:-1}"                   # 0: fp32 (to try the script on a machine without bf16)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import hydra, omegaconf, deepspeed, webdataset" 2>/dev/null; then
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/* || exit 2
  elif [ ! -d /tmp/site/deepspeed ]; then  # a machine still warm from bench/gpu_check.sh has them there
    echo "hydra/omegaconf/deepspeed/webdataset missing and no .whl/ carried"; exit 2
  fi
  export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
work=/tmp/gpuq; rm -rf "$work"; mkdir -p "$work"
common=(experiment=cpu model=resnet18 data.input_size=112 data.num_threads=8 data.loader=torch
        "train.steps=$STEPS" data.batch_size=32 data.shards=.gpuq/shards
        run.seed=0 tracking.enabled=false train.eval_at_end=false train.online_probe.every=0 train.log_every=100)
[ "$BF16" = 1 ] && common+=(deepspeed.bf16.enabled=true)
status=0
for m in ${METHODS:-clp_hog_basis supervised}; do
  extra=()
  # as bench/quality.py's still-head protocol and GPU preset: one geometry for both views and 14-px HOG cells for CLP
  [ "$m" = clp_hog_basis ] && extra=(objective.cir.hog_cell=14 data.augment.shared_geometry=true)
  [ "$m" = supervised ] && extra=(data.labels=.gpuq/labels)
  t0=$(date +%s)
  timeout "${RUN_TIMEOUT:-330}" python3 -m torch.distributed.run --standalone --nproc_per_node 1 aupretrain/train.py \
    "${common[@]}" "objective=$m" "run.dir=$work/$m" "${extra[@]}" > "$work/$m.log" 2>&1 || { status=1; tail -30 "$work/$m.log"; }
  echo "$m: $(( $(date +%s) - t0 )) s"; grep -E "step [0-9]+/|frames/s" "$work/$m.log" | tail -3
  python3 -c "import sys; from aupretrain.cli.export import main; sys.exit(main())" "$work/$m" "$work/export/$m" || status=1
  cp "$work/$m/config.yaml" "$work/export/$m/run_config.yaml" 2>/dev/null
  [ -d "$work/$m/au_head" ] && cp -r "$work/$m/au_head" "$work/export/$m/au_head"
  cp "$work/$m.log" "$work/export/$m/train.log"
done
python3 - "$work/export" <<'EOF' || status=1
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
for f in Path(sys.argv[1]).glob("*/model.safetensors"):
    sd = load_file(f)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, f.with_name("model.fp16.safetensors"))
    f.unlink()
EOF
tar -C "$work" -cf - export | split -b 15m - "$OUT/encoders.tar.part-"
ls -la "$OUT"
exit $status
