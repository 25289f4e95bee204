#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) on a machine with Python 3.11 and apt, then put it on PATH.
# Sourced by the quickstart and test commands and by users (`source launchers/env.sh` on a login node); safe to run
# again (reinstalls only when pyproject changes). The work runs in a subshell with its own `set -euo pipefail`, so
# sourcing it changes no option of the caller's shell and a failure returns its status instead of closing the shell.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AUPRETRAIN_VENV:-$ROOT/.venv}"

_aupretrain_env() (
set -euo pipefail
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

need_apt=()
command -v g++ >/dev/null || need_apt+=(g++)          # DeepSpeed ops built on first use (e.g. ZeRO-Offload CPU Adam)
tar --version 2>/dev/null | grep -q GNU || need_apt+=(tar)  # DALI's wds2idx needs GNU tar
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${need_apt[@]}";
  else echo "please install: ${need_apt[*]} (apt-get install ${need_apt[*]})" >&2; exit 1; fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.aupretrain-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[env] installing aupretrain and its stack into $VENV (first time: a few minutes)"
  # Measured (session 43, a fresh venv, Python 3.11): the stack installs to 2.9 GB without byte-code and the disk
  # peaks 3.5 GB above where it started while pip unpacks wheels into TMPDIR. pip does not compile byte-code
  # (--no-compile: its per-wheel compile raised that peak to 4.0 GB); it is compiled below once pip's temporary
  # files are gone (+0.3 GB, under the peak). Check both disks up front so a full disk is one clear error, not a
  # broken half-installed venv. A refresh of an installed venv (pyproject.toml changed) fetches only what changed:
  # it asks 2 GB (a new DALI build beside its wheel: ~1.5 GB).
  if [ -f "$stamp" ]; then need_mb="${AUPRETRAIN_MIN_FREE_MB:-2000}"; else need_mb="${AUPRETRAIN_MIN_FREE_MB:-4200}"; fi
  pip_tmp="$VENV/.pip-tmp"; mkdir -p "$pip_tmp"
  for d in "$VENV" "$pip_tmp"; do
    free_mb=$(df -Pm "$d" | awk 'NR==2 {print $4}')
    if [ "${free_mb:-0}" -lt "$need_mb" ]; then
      echo "[env] error: only ${free_mb} MB free on the disk of $d; installing the stack needs ${need_mb} MB" \
           "(set AUPRETRAIN_VENV to a venv path on a larger disk)" >&2
      rm -rf "$pip_tmp"
      exit 28
    fi
  done
  export PIP_NO_CACHE_DIR=1   # no second copy of every wheel in ~/.cache/pip
  TMPDIR="$pip_tmp" "$VENV/bin/python" -m pip install -q --no-compile --upgrade pip setuptools wheel
  # torch is pinned to the range the local CPU wheel satisfies, so no CUDA build is pulled here.
  TMPDIR="$pip_tmp" "$VENV/bin/python" -m pip install -q --no-compile -e "$ROOT[test]"
  rm -rf "$pip_tmp"
  echo "$want" > "$stamp"
fi
# Byte-code for the whole stack, compiled once per install. Without it every Python process compiles each module it
# imports from source wherever .pyc files are not written (PYTHONDONTWRITEBYTECODE=1, common in containers and
# CI, or a read-only venv): measured (session 50, 2-core box) 16 s of a 34-s one-rank start was `compile`, and
# `import deepspeed` took 12.4 s against 6.9 s with byte-code. compileall skips files already up to date; its exit
# status is not checked: a few files in the stack are written for other Python versions (torch's py312 test helpers)
# and fail to compile, are never imported, and Python compiles anything left at import as before.
compiled="$VENV/.aupretrain-bytecode"
if [ ! -f "$compiled" ] || [ "$(cat "$compiled")" != "$want" ]; then
  echo "[env] compiling byte-code for the stack in $VENV (once per install, about a minute)"
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$VENV/bin/python" -m compileall -q -q -j 0 "$site" "$ROOT/aupretrain" || true
  echo "$want" > "$compiled"
fi
)

# not in an `if` or `||`: bash would ignore `set -e` inside the function there (a caller with `set -e` stops here)
_aupretrain_env
_rc=$?
unset -f _aupretrain_env
if [ "$_rc" != 0 ]; then
  return "$_rc" 2>/dev/null || exit "$_rc"   # sourced: back to the caller with the status; run as a script: exit
fi
export PATH="$VENV/bin:$PATH"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}"
