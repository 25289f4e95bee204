"""MLflow that never stops training, against a real `mlflow server` killed and restarted mid-run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, _stop, free_port, run_env, start_mlflow_server

TRAIN = str(ROOT / "aupretrain" / "train.py")
pytestmark = pytest.mark.slow


def logged_steps(run_dir) -> list[int]:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(x)["step"] for x in p.read_text().splitlines() if "train/loss" in x]


def test_mlflow_remote_server(packed, tmp_path):
    """The tracking server dies after step 5 and comes back ~8 s later on the same port: training never stops
    or slows down to wait for it, warns once, says when the server is back, and every metric reaches the run."""
    from mlflow.tracking import MlflowClient

    port, store = free_port(), tmp_path / "server"
    server = start_mlflow_server(store, port)
    url = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    args = ["experiment=smoke", f"data.shards={packed}", f"run.dir={run_dir}", "train.eval_at_end=false",
            "train.steps=60", "tracking.retry_max_s=2", "tracking.experiment=outage"]
    # MLflow's own HTTP retries (7 with backoff by default) would only make each background attempt longer
    env = run_env(MLFLOW_TRACKING_URI=url, MLFLOW_HTTP_REQUEST_MAX_RETRIES=0, MLFLOW_HTTP_REQUEST_TIMEOUT=5)
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen([sys.executable, TRAIN, *args], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 300
        while max(logged_steps(run_dir) or [0]) < 5:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.2)
        _stop(server)  # the server goes away mid-run
        at_kill = max(logged_steps(run_dir))
        time.sleep(8)
        assert max(logged_steps(run_dir)) > at_kill or proc.poll() == 0  # training went on without the server
        server = start_mlflow_server(store, port)  # back on the same port and store
        assert proc.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
        out = (tmp_path / "train.log").read_text()
        assert out.count("tracking retries in the background") == 1, out[-3000:]
        assert "is back after" in out
        client = MlflowClient(url)
        run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
        steps = {m.step for m in client.get_metric_history(run_id, "train/loss")}
        assert steps == set(range(1, 61))  # nothing lost
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "1"
        assert "mlflow.source.git.commit" in run.data.tags and "version.torch" in run.data.tags
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _stop(server)
