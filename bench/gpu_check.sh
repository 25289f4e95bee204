#!/usr/bin/env bash
# The GPU check: what a session lent a GPU machine runs (one prepared call, ~5 min), to record figures that
# CPU machines cannot give. Not part of the tests or CI. Run from the repository root:
#
#   here (once, with network):  bash bench/gpu_check.sh --fetch-wheels     # .whl/ (git-ignored) for the GPU box
#   on the GPU machine:         bash bench/gpu_check.sh                    # figures to $OUT (else bench/results/gpu)
#   device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=480)  # ran 220 s (session 27)
#
# It measures, on one GPU: (1) the training step of every objective, the headline clp_hog_basis included (its
# basis pre-fitted), with the real model (resnet18, 112 px, bf16 autocast, 64 clips x 8 frames x 2 views), (2)
# the objectives' loss memory against batch size and (emulated) world size, (3) where the machine's Python has
# DeepSpeed: the engine's step against a plain PyTorch loop (bench/train.py, one rank: deepspeed_vs_torch). The
# GPU image has torch but not hydra/omegaconf/DeepSpeed/webdataset: those travel as wheels in .whl/. DALI (GPU decode) and
# multi-rank NCCL runs are not covered: the DALI wheel (~800 MB) cannot travel to a machine without network
# (the carry limit is 64 MiB), and one GPU cannot host two NCCL ranks.
set -uo pipefail
cd "$(dirname "$0")/.."
# what the GPU image lacks, as wheels for its Python 3.12: hydra/omegaconf (the config), DeepSpeed (pure Python,
# its ops JIT-built only if used) and its pydantic/hjson, webdataset (the shard reader); versions = the lock's
PURE="hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 deepspeed==0.19.8"
BINARY="pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0
        webdataset==1.0.2 braceexpand==0.1.7 typing_extensions==4.16.0"
if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .git/info .whl && { grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude; }
  # antlr4 4.9.3 and DeepSpeed ship as sdists only: build their wheels here (DeepSpeed's setup imports torch)
  py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python  # the project's environment has torch for that
  $py -m pip wheel -q --no-deps --no-build-isolation -w .whl $PURE && rm -f .whl/*.tar.gz || exit 1
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $BINARY || exit 1
  ls -la .whl; exit 0
fi
OUT="${OUT:-bench/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import hydra, omegaconf, deepspeed, webdataset" 2>/dev/null; then
  [ -d .whl ] || { echo "hydra/omegaconf/deepspeed/webdataset missing and no .whl/ carried (bash bench/gpu_check.sh --fetch-wheels)"; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/* || exit 2
  export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"; } 2>&1 | tee "$OUT/gpu.txt"
status=0
timeout 200 python3 bench/train_step.py --device cuda --model resnet18 --size 112 --batch 64 --bf16 --reps 10 \
  --warmup 3 --json "$OUT/train_step.json" 2>&1 | tee "$OUT/train_step.log" || status=1
timeout 240 python3 bench/loss.py --device cuda --worlds 1 --batches 64 256 --emulated-worlds 8 64 \
  --analytic-worlds 512 --reps 5 --json "$OUT/loss.json" 2>&1 | tee "$OUT/loss.log" || status=1
if python3 -c "import deepspeed" 2>/dev/null; then
  timeout 200 python3 bench/train.py --device cuda --model resnet18 --size 112 --batch 64 --reps 8 --no-stall \
    --json "$OUT/train.json" 2>&1 | tee "$OUT/train.log" || status=1
else
  echo "no deepspeed in this Python: bench/train.py (deepspeed_vs_torch) not run" | tee "$OUT/train.log"
fi
exit $status
