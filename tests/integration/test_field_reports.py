"""Field reports on the training side, each as its user met it: a resume from another folder, changed settings on
resume. Real launches, real MLflow stores. (A tracking outage: tests/reliability/test_tracking_faults.py; a dataset
smaller than one batch: tests/reliability/test_data_faults.py.)"""
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_env
from tests.launch import checkpoint_meta as meta, metric_steps

TRAIN = str(ROOT / "aupretrain" / "train.py")
pytestmark = pytest.mark.slow


def env():
    e = run_env()
    e.pop("MLFLOW_TRACKING_URI", None)  # the default store: <cwd>/mlflow.db
    return e


def train(args, cwd: Path, ok: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, TRAIN, *args], cwd=cwd, env=env(), capture_output=True, text=True,
                       timeout=timeout)
    if ok:
        assert r.returncode == 0, f"{args} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


def base(packed, run_dir, **kw):
    args = {"experiment": "smoke", "data.shards": str(packed), "run.dir": str(run_dir), "train.eval_at_end": "false",
            "tracking.retry_max_s": 4, **kw}
    return [f"{k}={v}" for k, v in args.items()]


def test_resume_from_another_folder_finds_its_run_or_starts_a_tagged_one(packed, tmp_path):
    """Job 1 starts in a/, job 2 resumes from b/: the run folder's record leads it to a/mlflow.db and the same
    run. With that store gone, job 3 warns and starts a new run tagged with the old id."""
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    args = base(packed, run_dir, **{"train.steps": 6})
    train([*args, "train.stop_at=2"], tmp_path / "a")
    first = meta(run_dir, 2)["mlflow_run_id"]
    assert json.loads((run_dir / "tracking.json").read_text())["uri"] == f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}"
    train([*args, "train.stop_at=4"], tmp_path / "b")
    assert meta(run_dir, 4)["mlflow_run_id"] == first and not (tmp_path / "b" / "mlflow.db").exists()
    hist = MlflowClient(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}").get_metric_history(first, "train/loss")
    assert {m.step for m in hist} == {1, 2, 3, 4}
    (tmp_path / "a" / "mlflow.db").unlink()  # the store is gone (a fresh one appears at the same place)
    r = train(args, tmp_path / "c")
    assert f"MLflow run {first} not found" in r.stderr
    new = meta(run_dir, 6)["mlflow_run_id"]
    with sqlite3.connect(tmp_path / "a" / "mlflow.db") as db:  # not MlflowClient: it caches the deleted file's engine
        tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (new,)).fetchall())
    assert new != first and tags["aupretrain.resumed_from_run_id"] == first


def test_changed_settings_on_resume_are_applied_and_recorded_or_refused(packed, tmp_path):
    """optim.lr changed on resume takes effect at the next step and is recorded (per-job config file, MLflow
    tag); the first job's record is kept. A change that cannot take effect is refused with one line."""
    from mlflow.tracking import MlflowClient

    from aupretrain.config import load_config
    from aupretrain.engine.optim import lr_lambda

    run_dir = tmp_path / "run"
    args = base(packed, run_dir, **{"train.steps": 6})
    train([*args, "train.stop_at=2"], tmp_path)
    r = train([*args, "train.stop_at=4", "optim.lr=1e-4"], tmp_path)
    assert "changed: optim.lr: 0.002 -> 0.0001" in r.stderr, r.stderr[-2000:]
    f = lr_lambda(load_config(["experiment=smoke", "train.steps=6"]))
    lr = metric_steps(run_dir, "train/lr")
    # step n runs at f(n - 1) (lr_lambda counts optimizer steps from 0) and logs the rate it ran at
    assert lr[1] == pytest.approx(2e-3 * f(0)) and lr[2] == pytest.approx(2e-3 * f(1))
    assert lr[3] == pytest.approx(1e-4 * f(2))  # the new LR from step 3
    assert "lr: 0.002" in (run_dir / "config.yaml").read_text()  # the first job's record is not rewritten
    assert "lr: 0.0001" in (run_dir / "config.step_2.yaml").read_text()
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(meta(run_dir, 4)["mlflow_run_id"])
    assert run.data.tags["resume.step_2.changed"].startswith("optim.lr: 0.002 -> 0.0001")
    assert run.data.params["optim.lr"] == "0.002"  # MLflow params are the first job's; the tag says what changed
    # a second job resuming from step 2 (as after a crash before the next checkpoint) keeps the first one's record
    train([*args, "train.stop_at=3", "optim.lr=5e-5", f"train.resume={run_dir / 'checkpoints' / 'step_2'}"], tmp_path)
    assert "lr: 0.0001" in (run_dir / "config.step_2.yaml").read_text()
    assert "lr: 5.0e-05" in (run_dir / "config.step_2.2.yaml").read_text()
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run.info.run_id)
    assert run.data.tags["resume.step_2.2.changed"].startswith("optim.lr: 0.002 -> 5e-05")
    assert run.data.tags["resume.step_2.changed"].startswith("optim.lr: 0.002 -> 0.0001")
    r = train([*args, "optim.lr=1e-4", "data.batch_size=2", "model.stem_width=16"], tmp_path, ok=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    err = [x for x in r.stderr.splitlines() if x.startswith("aupretrain-train: error:")]
    assert len(err) == 1 and "data.batch_size (4 -> 2)" in err[0] and "cannot take effect" in err[0]
    assert not (run_dir / "checkpoints" / "step_6").exists()
