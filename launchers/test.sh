#!/usr/bin/env bash
# The whole test suite (unit + slow multi-process/integration tests), creating the environment if needed.
# Extra arguments go to pytest (e.g. -m "not slow" for the quick subset while developing).
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/env.sh
exec python -m pytest -p no:cacheprovider --timeout 900 "$@"
