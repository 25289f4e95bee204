"""The run folder is one job's at a time, must be a writable folder, and is found again from any working directory
(field trial: two jobs in one run.dir pruned each other's checkpoints and interleaved their metrics; a run.dir that
was a file gave a traceback; relative data and sqlite paths broke a resume from another folder)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import run_env
from tests.launch import TRAIN, common, launch, wait_for_checkpoint

pytestmark = pytest.mark.slow


def test_a_second_job_in_a_held_run_folder_is_refused_and_a_file_in_the_way_is_one_line(packed, tmp_path):
    run_dir = tmp_path / "runs" / "held"
    args = common(packed, tmp_path, **{"train.eval_at_end": "false", "tracking.enabled": "false",
                                       "train.checkpoint_every": 1, "train.torch_threads": 1})
    first = subprocess.Popen([sys.executable, TRAIN, *args, f"run.dir={run_dir}", "train.steps=400"], cwd=tmp_path,
                             env=run_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        wait_for_checkpoint(first, run_dir, 1)
        second = subprocess.run([sys.executable, TRAIN, *args, f"run.dir={run_dir}", "train.steps=400"],
                                cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
        err = [x for x in second.stderr.splitlines() if x.startswith("aupretrain-train: error:")]
        assert second.returncode == 1 and len(err) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        assert f"run.dir={run_dir} is in use by another job (pid {first.pid} on host" in err[0], err[0]
        assert first.poll() is None  # the first job is untouched
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the holder is gone (killed: no clean exit): the kernel released its lock, and a relaunch gets past it (to
    # the resume's own check: train.steps=1 is behind the killed job's checkpoints)
    r = subprocess.run([sys.executable, TRAIN, *args, f"run.dir={run_dir}", "train.steps=1"], cwd=tmp_path,
                       env=run_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "cannot go back" in r.stderr and "in use" not in r.stderr, r.stderr[-2000:]
    (tmp_path / "afile").write_text("x")
    for bad, said in ((tmp_path / "afile", "a file is in the way"),
                      (tmp_path / "afile" / "sub", "a part of the path is a file")):
        r = subprocess.run([sys.executable, TRAIN, *args, f"run.dir={bad}", "train.steps=1"], cwd=tmp_path,
                           env=run_env(), capture_output=True, text=True, timeout=300)
        err = [x for x in r.stderr.splitlines() if x.startswith("aupretrain-train: error:")]
        assert r.returncode == 2 and len(err) == 1 and said in err[0] and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_relative_paths_are_recorded_absolute_and_a_resume_from_another_folder_continues(packed, tmp_path):
    """data.shards, run.dir and a sqlite tracking URI given relative to the first job's folder: the record holds
    them absolute, so the same job relaunched from elsewhere reads the same data in the same MLflow run, with
    nothing reported as changed."""
    from mlflow.tracking import MlflowClient

    a, b = tmp_path / "a", tmp_path / "b" / "c"
    a.mkdir()
    b.mkdir(parents=True)
    os.symlink(packed, a / "shards")
    base = {"experiment": "smoke", "train.eval_at_end": "false", "eval.corpus": str(tmp_path / "eval")}
    launch([sys.executable, TRAIN, *[f"{k}={v}" for k, v in base.items()], "data.shards=shards", "run.dir=run",
            "train.steps=2"], a, MLFLOW_TRACKING_URI="sqlite:///mlflow.db")
    run_dir = a / "run"
    cfg = (run_dir / "config.yaml").read_text()
    assert f"shards: {a / 'shards'}" in cfg and f"dir: {run_dir}" in cfg
    record = json.loads((run_dir / "tracking.json").read_text())
    assert record["uri"] == f"sqlite:///{a / 'mlflow.db'}"
    r = launch([sys.executable, TRAIN, *[f"{k}={v}" for k, v in base.items()], f"data.shards={a / 'shards'}",
                f"run.dir={run_dir}", "train.steps=3"], b)
    assert "at step 2" in r.stderr and "changed: train.steps: 2 -> 3" in r.stderr, r.stderr[-3000:]
    assert "data.shards" not in r.stderr.split("changed:")[1].splitlines()[0]  # the same data, not a change
    assert not (b / "mlflow.db").exists()  # the store the record names, not a new one in this folder
    runs = MlflowClient(record["uri"]).search_runs([MlflowClient(record["uri"]).get_experiment_by_name(
        record["experiment"]).experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == record["run_id"] and runs[0].info.status == "FINISHED"


def test_threads_follow_the_cpus_this_job_may_use():
    from omegaconf import OmegaConf

    from aupretrain.engine.components import torch_threads

    cfg = OmegaConf.create({"train": {"torch_threads": None}})
    old = os.environ.pop("OMP_NUM_THREADS", None)
    try:
        assert torch_threads(cfg, 1) == len(os.sched_getaffinity(0))  # a CPU allocation, not the machine's cores
        os.environ["OMP_NUM_THREADS"] = "1"  # what a launcher exports for --cpus-per-task
        assert torch_threads(cfg, 2) == 1
        os.environ["TORCHELASTIC_RUN_ID"] = "x"  # ... but not the 1 torchrun puts there for several ranks
        assert torch_threads(cfg, 2) == max(1, len(os.sched_getaffinity(0)) // 2)
        cfg.train.torch_threads = 3
        assert torch_threads(cfg, 2) == 3
        # aupretrain-eval (one process) reads the same: --threads, else $OMP_NUM_THREADS, else the CPUs it may use
        from aupretrain.engine.threads import cpu_threads

        os.environ.pop("TORCHELASTIC_RUN_ID")
        os.environ["OMP_NUM_THREADS"] = "3"
        assert cpu_threads() == 3 and cpu_threads(5) == 5
        os.environ.pop("OMP_NUM_THREADS")
        assert cpu_threads() == len(os.sched_getaffinity(0))
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        os.environ.pop("TORCHELASTIC_RUN_ID", None)
        if old is not None:
            os.environ["OMP_NUM_THREADS"] = old


def test_metrics_a_job_could_not_send_reach_mlflow_on_the_relaunch(packed, tmp_path, mlflow_server):
    """MLflow away for a whole job (a field trial: the run stayed incomplete for good, steps 9-60 only in
    metrics.jsonl): the relaunch, with the store back, sends what metrics.jsonl holds and the store lacks; and
    metrics.jsonl is written with tracking off too."""
    from mlflow.tracking import MlflowClient

    from tests.conftest import free_port

    run_dir = tmp_path / "runs" / "away"
    args = [sys.executable, TRAIN, *common(packed, tmp_path, **{"train.eval_at_end": "false", "train.log_every": 1,
                                                                "tracking.start_timeout_s": 1,
                                                                "tracking.flush_timeout_s": 1}),
            f"run.dir={run_dir}"]
    launch([*args, "train.steps=3"], tmp_path, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}",
           MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    assert not (run_dir / "tracking.json").exists()  # no run was ever created
    r = launch([*args, "train.steps=4"], tmp_path, MLFLOW_TRACKING_URI=mlflow_server)
    assert "lacked" in r.stderr and "sent now from" in r.stderr, r.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == [1, 2, 3, 4], steps
    assert int(client.get_run(run_id).data.tags["aupretrain.backfilled_metrics"]) >= 3
    quiet = tmp_path / "runs" / "off"
    launch([*args[:-1], f"run.dir={quiet}", "train.steps=2", "tracking.enabled=false"], tmp_path)
    assert sorted({json.loads(x)["step"] for x in (quiet / "metrics.jsonl").read_text().splitlines()} - {0}) == [1, 2]


def test_a_rendezvous_port_in_use_is_one_line(packed, tmp_path):
    """A second job on the host with the launcher's default port (deepspeed's 29500): one line naming the port and
    the flag to change it, not an EADDRINUSE traceback."""
    import socket

    from tests.conftest import free_port

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        r = subprocess.run([sys.executable, TRAIN, *common(packed, tmp_path, **{"train.steps": 1})], cwd=tmp_path,
                           env=run_env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port)), capture_output=True, text=True, timeout=300)
    err = [x for x in r.stderr.splitlines() if x.startswith("aupretrain-train: error:")]
    assert r.returncode == 2 and len(err) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"the rendezvous port 127.0.0.1:{port} is in use" in err[0] and "--master_port" in err[0]
