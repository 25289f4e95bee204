"""`launchers/env.sh` (sourced by both README commands): a disk too small for the stack is one clear error before pip
starts, and leaves no half-installed environment marked as installed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_env_refuses_a_disk_too_small_for_the_stack(tmp_path):
    venv = tmp_path / "venv"
    env = {**os.environ, "AUPRETRAIN_VENV": str(venv), "PYTHON": sys.executable,
           "AUPRETRAIN_MIN_FREE_MB": str(10 ** 9)}  # more than any disk here holds: the check must stop the install
    r = subprocess.run(["bash", str(ROOT / "launchers" / "env.sh")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 28, (r.stdout, r.stderr)  # ENOSPC's number, as documented in the script
    assert f"MB free on the disk of {venv}" in r.stderr and "needs 1000000000 MB" in r.stderr, r.stderr
    assert "AUPRETRAIN_VENV" in r.stderr  # the way out is named
    assert (venv / "bin" / "python").exists()  # the venv itself was created before the check ...
    assert not (venv / ".aupretrain-installed").exists()  # ... but not marked installed, so a rerun installs
    assert not (venv / ".aupretrain-bytecode").exists()  # nor its byte-code marked compiled
    assert not (venv / ".pip-tmp").exists()  # and pip's scratch folder is not left behind


def test_sourcing_it_leaves_the_callers_shell_as_it_was_and_returns_a_failure(tmp_path):
    """Field report: `source launchers/env.sh` on a login node left `set -euo pipefail` in the user's shell (the next
    failing command closed the session) and its `exit` closed the shell. Sourced, it now changes no option and
    returns its status; a caller with `set -e` (the README commands) still stops on it."""
    venv = tmp_path / "venv"
    env = {**os.environ, "AUPRETRAIN_VENV": str(venv), "PYTHON": sys.executable,
           "AUPRETRAIN_MIN_FREE_MB": str(10 ** 9)}
    script = f"source {ROOT / 'launchers' / 'env.sh'}; echo \"status $? options $-\"; false; echo still-here"
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "status 28 options" in r.stdout and "still-here" in r.stdout, (r.stdout, r.stderr)
    options = r.stdout.split("options ")[1].split()[0]
    assert "e" not in options and "u" not in options, options
    r = subprocess.run(["bash", "-c", f"set -e; {script}"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 28 and "still-here" not in r.stdout, (r.stdout, r.stderr)
