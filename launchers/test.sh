#!/usr/bin/env bash
# The whole test suite (unit + slow multi-process/integration tests), creating the environment if needed.
# The test files are shared among pytest-xdist workers, one per CPU this shell may use (at most 4; each test file
# runs whole in one worker, and every worker's torch gets its share of the CPUs: tests/conftest.py).
# Extra arguments go to pytest and win over these (e.g. -n 0 to run in one process, -m "not slow" for the quick
# subset while developing); PYTEST_XDIST_AUTO_NUM_WORKERS=N sets the worker count.
set -euo pipefail
cd "$(dirname "$0")/.."
source launchers/env.sh
exec python -m pytest -p no:cacheprovider --timeout 900 -n auto --maxprocesses 4 --dist loadfile "$@"
