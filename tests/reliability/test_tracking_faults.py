"""MLflow faults that must never stop training: a real `mlflow server` down when the run starts, killed mid-run and
restarted on the same port; the default sqlite store locked by another process mid-run. Training goes on, warns
once per outage, reports the gap when the store is back, and every metric reaches the run."""
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import _stop, free_port, run_env, start_mlflow_server
from tests.launch import TRAIN, checkpoint_meta, checkpoint_steps, metric_steps

pytestmark = pytest.mark.slow
DOWN = "tracking retries in the background"  # the warning of an outage (once per outage)


def logged_steps(run_dir) -> list[int]:
    return sorted(metric_steps(run_dir))


def warned_at(log: str, text: str) -> list[float]:
    """Wall-clock times (time.time()) of the log lines holding `text` (the trainer's "%(asctime)s" prefix)."""
    out = []
    for line in log.splitlines():
        if text in line:
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
            if m:
                out.append(datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp())
    return out


def gaps(log: str) -> list[int]:
    return [int(x) for x in re.findall(r"is back after (\d+) s", log)]


def test_mlflow_remote_server(packed, tmp_path, fault):
    """No server on the tracking URI when training starts: it waits tracking.start_timeout_s, trains on, and the
    run is created (with everything queued meanwhile) once the server is up. Then the server dies mid-run and comes
    back ~8 s later on the same port and store: training never stops or slows down to wait for it, warns once per
    outage, says when the server is back, and every metric reaches the run. The job is then preempted (SIGTERM) and
    its relaunch, with train.steps at the stop, exports the encoder under the run created late: the test's length
    does not depend on the box's step time."""
    from mlflow.tracking import MlflowClient

    # more steps than any box trains in the test's time: the kill always lands mid-run (with 60 steps a fast CI box
    # finished training before the run was created; with 400 a shared box at 2 s a step ran past the time limit), and
    # the job is stopped by SIGTERM once the second outage is reported over
    steps = 100_000
    port, store = free_port(), tmp_path / "server"
    url = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    args = ["experiment=smoke", f"data.shards={packed}", f"run.dir={run_dir}", "train.eval_at_end=false",
            f"train.steps={steps}", "tracking.retry_max_s=2", "tracking.start_timeout_s=2",
            "tracking.experiment=outage"]
    # MLflow's own HTTP retries (7 with backoff by default) would only make each background attempt longer
    env = run_env(MLFLOW_TRACKING_URI=url, MLFLOW_HTTP_REQUEST_MAX_RETRIES=0, MLFLOW_HTTP_REQUEST_TIMEOUT=5)
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen([sys.executable, TRAIN, *args], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    server = None

    def train_log() -> str:
        return (tmp_path / "train.log").read_text()

    def wait(cond, what: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not cond():
            assert time.time() < deadline, f"{what}: not within {timeout} s\n{train_log()[-3000:]}"
            assert proc.poll() is None or cond(), f"{what}: training exited {proc.returncode}\n{train_log()[-3000:]}"
            time.sleep(0.2)

    try:
        # 1. down at start: training must get going without it
        wait(lambda: max(logged_steps(run_dir) or [0]) >= 2, "training under way with no server")
        steps_before_server = max(logged_steps(run_dir))
        server = start_mlflow_server(store, port)  # the server comes up mid-run
        up_at = time.time()
        wait(lambda: (run_dir / "tracking.json").exists(), "the run created once the server is up", 120)
        created_after = time.time() - up_at
        # 2. killed mid-run, back ~8 s later on the same port and store
        wait(lambda: max(logged_steps(run_dir) or [0]) >= 5 and "is back after" in train_log(), "step 5")
        killed_at, at_kill = time.time(), max(logged_steps(run_dir))
        assert at_kill < steps - 20, f"training reached step {at_kill} of {steps} before the kill: not mid-run"
        _stop(server)
        time.sleep(8)
        during = max(logged_steps(run_dir)) - at_kill
        ended_during = proc.poll() is not None
        server = start_mlflow_server(store, port)
        back_at = time.time()
        wait(lambda: len(gaps(train_log())) == 2 or proc.poll() is not None, "the second gap reported", 300)
        os.kill(proc.pid, signal.SIGTERM)  # preempted: checkpoint, run KILLED, exit 0
        rc = proc.wait(timeout=300)
        stopped = max(checkpoint_steps(run_dir) or [0])
        # the relaunch trains nothing (train.steps is the checkpoint's step) and exports under the same run
        again = [a if not a.startswith("train.steps=") else f"train.steps={stopped}" for a in args]
        relaunch = subprocess.run([sys.executable, TRAIN, *again],
                                  cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        client = MlflowClient(url)
        run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
        reached = {m.step for m in client.get_metric_history(run_id, "train/loss")}
        run = client.get_run(run_id)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if server is not None:
            _stop(server)
    out = train_log()
    lost = sorted(set(range(1, stopped + 1)) - reached)
    down_warn = warned_at(out, DOWN)
    gave_up = warned_at(out, "did not answer within")  # the trainer stops waiting for the run's creation
    waited = gave_up[0] - down_warn[0] if gave_up and down_warn else None
    fault("MLflow server down at start", f"first attempt refused; training waited {waited and round(waited, 1)} s "
          f"(tracking.start_timeout_s=2), warned and trained on; server started at step {steps_before_server}, the "
          f"run created {created_after:.1f} s after it answered, with the queue (gap reported: "
          f"{gaps(out)[0] if gaps(out) else None} s); {stopped - len(lost)}/{stopped} steps reached MLflow",
          data_lost=bool(lost), detect_s=None)
    detect = next((t - killed_at for t in down_warn if t >= killed_at - 1), None)
    fault("MLflow server killed mid-run, then back", f"killed at step {at_kill}: training went on ({during} steps in "
          f"the next 8 s{', then ended' if ended_during else ''}), warned {detect and round(detect, 1)} s later; "
          f"server back {back_at - killed_at:.0f} s after the kill, reported gap "
          f"{gaps(out)[1] if len(gaps(out)) > 1 else None} s; SIGTERM at step {stopped}, exit {rc}, relaunch exit "
          f"{relaunch.returncode}; {stopped - len(lost)}/{stopped} steps reached MLflow, run {run.info.status}",
          data_lost=bool(lost), detect_s=detect)
    assert rc == 0 and not ended_during and stopped > at_kill, out[-3000:]
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert during > 0  # training went on without the server
    assert len(gave_up) == 1 and waited is not None and waited < 10, out[-3000:]  # ~start_timeout_s, no more
    assert out.count(DOWN) == 2 and len(gaps(out)) == 2, out[-3000:]  # once per outage, and each gap reported
    assert not lost, lost  # nothing lost: the queue was sent once the server was back
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "1"
    assert "mlflow.source.git.commit" in run.data.tags and "version.torch" in run.data.tags
    assert run.data.params.get("train.steps") == str(steps)  # params queued while the server was down reached the run
    assert run.data.tags.get(f"resume.step_{stopped}.changed") == f"train.steps: {steps} -> {stopped}"  # relaunched
    import torch

    exported = torch.load(run_dir / "encoder.pt", weights_only=True)  # the run created late is the one recorded
    assert exported["mlflow_run_id"] == run_id, exported["mlflow_run_id"]


def test_tracking_outage_never_stops_training(packed, tmp_path, fault):
    """The default sqlite store is locked by another process (BEGIN EXCLUSIVE) for 30 s after step 3: training
    goes on to the end, warns once, and the metrics reach the store once it is free again."""
    from mlflow.tracking import MlflowClient

    run_dir, db = tmp_path / "run", tmp_path / "mlflow.db"
    args = ["experiment=smoke", f"data.shards={packed}", f"run.dir={run_dir}", "train.eval_at_end=false",
            "tracking.retry_max_s=4", "train.steps=40"]
    log = open(tmp_path / "train.log", "w")
    proc = subprocess.Popen([sys.executable, TRAIN, *args], cwd=tmp_path, env=run_env(), stdout=log,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    locker = None
    try:
        deadline = time.time() + 300
        while max(metric_steps(run_dir) or [0]) < 3:
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "train.log").read_text()[-3000:]
            time.sleep(0.2)
        locker = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                                   f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
                                   "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
                                   "time.sleep(30); c.execute('ROLLBACK')"], stdout=subprocess.PIPE, text=True)
        assert locker.stdout.readline().strip() == "locked"
        locked_at, at_lock = time.time(), max(metric_steps(run_dir))
        rc = proc.wait(timeout=600)
        ended = time.time()
    finally:
        for p in (proc, locker):
            if p is not None and p.poll() is None:
                p.kill()
    out = (tmp_path / "train.log").read_text()
    client = MlflowClient(f"sqlite:///{db}")
    run_id = checkpoint_meta(run_dir, 40)["mlflow_run_id"] if rc == 0 else None
    steps = {m.step for m in client.get_metric_history(run_id, "train/loss")} if run_id else set()
    lost = sorted(set(range(1, 41)) - steps)
    detect = next((t - locked_at for t in warned_at(out, DOWN) if t >= locked_at - 1), None)
    fault("MLflow sqlite store locked 30 s mid-run", f"locked at step {at_lock}: training went on to step "
          f"{max(metric_steps(run_dir))} (exit {rc}, {ended - locked_at:.0f} s after the lock), warned "
          f"{out.count(DOWN)}x {detect if detect is None else round(detect, 1)} s after the lock; reported gap "
          f"{gaps(out)[0] if gaps(out) else None} s; {40 - len(lost)}/40 steps reached the store",
          data_lost=bool(lost), detect_s=detect)
    assert rc == 0, out[-3000:]
    assert (run_dir / "checkpoints" / "step_40" / "COMPLETE").exists() and (run_dir / "encoder.pt").exists()
    assert out.count(DOWN) == 1, out[-3000:]  # warned once
    assert max(metric_steps(run_dir)) == 40  # the run folder has every metric whatever the store did
    if ended - locked_at < 30:
        pytest.fail("training ended before the lock was released: the outage was not exercised")
    assert "is back after" in out, out[-3000:]
    assert not lost, lost  # nothing lost: the queue was sent once the store was back
    assert client.get_run(run_id).info.status == "FINISHED"
