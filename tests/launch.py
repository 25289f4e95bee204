"""Launching real training runs from tests: the train script, the smoke overrides, a launcher in its own
process group (killed whole on timeout), and reading a run folder."""
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_env

TRAIN = str(ROOT / "aupretrain" / "train.py")


def common(packed, tmp_path, **kw):
    args = {"experiment": "smoke", "data.shards": str(packed), "run.root": str(tmp_path / "runs"),
            "eval.corpus": str(tmp_path / "eval"), **kw}
    return [f"{k}={v}" for k, v in args.items()]


def launch(cmd, tmp_path, timeout=600, **env):
    """Run a launcher in its own process group; on timeout the whole group (launcher and ranks) is killed."""
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=run_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} timed out after {timeout} s:\n{out[-3000:]}\n{err[-5000:]}")
    r = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def only_run(tmp_path) -> Path:
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*") if (p / "COMPLETE").exists())


def wait_for_checkpoint(proc, run_dir: Path, step: int, timeout: float = 300) -> None:
    """Poll (every 50 ms) until `<run_dir>/checkpoints/step_<step>` is complete; AssertionError when the job `proc`
    (a Popen) ends first or `timeout` seconds pass."""
    import time

    done, deadline = run_dir / "checkpoints" / f"step_{step}" / "COMPLETE", time.time() + timeout
    while not done.exists():
        assert proc.poll() is None, f"the job ended (exit {proc.returncode}) before checkpoint step {step}"
        assert time.time() < deadline, f"no checkpoint step {step} after {timeout} s"
        time.sleep(0.05)


def metric_steps(run_dir: Path, key: str = "train/loss") -> dict[int, float]:
    """{step: value} of one metric in <run>/metrics.jsonl (empty before the file exists; a relaunch's rows win)."""
    p = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []
    return {r["step"]: r[key] for r in rows if key in r}


def checkpoint_meta(run_dir: Path, step: int) -> dict:
    return json.loads((run_dir / "checkpoints" / f"step_{step}" / "meta.json").read_text())
