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
    assert not (venv / ".pip-tmp").exists()  # and pip's scratch folder is not left behind
