"""`launchers/slurm/train.sbatch` on a real Slurm (Debian's slurm-wlm, one host, started here as root):
2 tasks train on synthetic shards, the job is preempted once with USR1 (as `--signal=USR1@grace` does before
a time limit), checkpoints, requeues itself, resumes from its checkpoint and finishes on the same MLflow run."""
from __future__ import annotations

import json
import time

import pytest

from tests.conftest import ROOT, run_env, tracked_runs
from tests.integration.slurm_cluster import SlurmCluster, ensure_installed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    why = ensure_installed()
    if why:
        pytest.skip(why)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def _steps(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def test_sbatch_preempted_requeues_and_resumes(slurm, packed, tmp_path):
    submit = tmp_path / "submit"
    submit.mkdir()
    db = tmp_path / "mlflow.db"
    env = run_env(AUPRETRAIN_RUN="slurm-clp", AUPRETRAIN_RUN_DIR=str(submit / "runs" / "slurm-clp"),
                  AUPRETRAIN_SHARDS=str(packed), AUPRETRAIN_VENV=str(ROOT / ".venv"),
                  MLFLOW_TRACKING_URI=f"sqlite:///{db}", PYTHONPATH=str(ROOT))
    steps = 16
    job = slurm.sbatch(["--gpus-per-node=0", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                        "--job-name=aupretrain-test", str(ROOT / "launchers/slurm/train.sbatch"),
                        "experiment=smoke", f"train.steps={steps}", "train.eval_at_end=false",
                        "train.signal_check_every=2", "train.log_every=1"], env=env, cwd=submit)
    run_dir = submit / "runs" / "slurm-clp"
    log = submit / f"slurm-aupretrain-test-{job}.out"
    deadline = time.time() + 240
    while not any(s >= 4 for s in _steps(run_dir)):  # training for real before the preemption
        info = slurm.job(job)
        assert info["JobState"] in ("PENDING", "RUNNING", "CONFIGURING"), (info, log.read_text() if log.exists() else "")
        assert time.time() < deadline, log.read_text() if log.exists() else "no log"
        time.sleep(1)
    slurm.run(["scancel", "--signal=USR1", str(job)])
    info = slurm.wait(job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}, timeout=420)
    out = log.read_text()
    assert info["JobState"] == "COMPLETED", (info, out[-4000:])
    assert info["Restarts"] == "1", (info, out[-4000:])
    assert "requeueing job" in out and "restart 1" in out, out[-4000:]
    stop = json.loads((run_dir / "last_stop.json").read_text())
    assert stop["reason"] == "finished" and stop["step"] == steps, stop
    assert (run_dir / "encoder.pt").exists()
    saved = sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))
    assert saved[-1] == steps and len(saved) >= 2, saved  # the preemption checkpoint, then the end
    preempted_at = saved[-2]
    assert f"stopped at step {preempted_at} of {steps} (signal)" in out, out[-4000:]
    assert f"at step {preempted_at} (data stream" in out, out[-4000:]  # the requeued job resumed there
    # one MLflow run for both jobs, with every step's metrics and finished
    client, runs = tracked_runs(db)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted({m.step for m in history}) == list(range(1, steps + 1))
    assert runs[0].info.status == "FINISHED"
