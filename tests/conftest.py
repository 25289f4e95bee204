"""Shared fixtures: a small synthetic corpus, its packed shards, and a real MLflow server."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Under pytest-xdist (`launchers/test.sh` runs `-n auto`), the CPUs are shared among the workers: each worker, and
# every process its tests start (ranks, launchers, `aupretrain-eval`), runs torch on its share of them, not on every
# core, where OpenMP's threads would spin against the other worker's (a one-process training with its online
# probe took 4x as long beside the other worker with 2 threads each). Read before torch is imported; a value the
# caller exported wins. The product reads it as a Slurm allocation's (`aupretrain.engine.threads.cpu_threads`).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and not os.environ.get("OMP_NUM_THREADS"):
    from aupretrain.engine.threads import cpu_threads  # imports only `os`: torch is not loaded yet

    os.environ["OMP_NUM_THREADS"] = str(cpu_threads(None, int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # hermetic: a store only where a test names one
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from aupretrain.synth.corpus import write_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, identities=4, videos_per_identity=2, frames=40, seed=3, workers=1)
    return root


@pytest.fixture(scope="session")
def packed(corpus, tmp_path_factory) -> Path:
    from aupretrain.pack.packer import PackSettings, pack

    out = tmp_path_factory.mktemp("shards")
    pack(str(corpus), str(out), PackSettings(clip_len=8, stride=2, size=64, samples_per_shard=6, workers=1, align="center"))
    return out


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_mlflow_server(d: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` (sqlite in d + served artifacts) on 127.0.0.1:port, up and answering /health."""
    d.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--serve-artifacts",
           "--artifacts-destination", str(d / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(d / "server.log", "a")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=run_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(d / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    _stop(proc)
    raise RuntimeError("mlflow server did not come up in 90 s")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port for the session; stopped by pid."""
    port = free_port()
    proc = start_mlflow_server(tmp_path_factory.mktemp("mlflow"), port)
    yield f"http://127.0.0.1:{port}"
    _stop(proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint (`moto_server`, in memory) on a free loopback port; yields the env for clients."""
    port = free_port()
    d = tmp_path_factory.mktemp("moto")
    log = open(d / "moto.log", "w")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        _stop(proc)
        raise RuntimeError("moto_server did not come up")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    from aupretrain.data import storage

    storage.s3_client.cache_clear()
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    storage.s3_client.cache_clear()
    _stop(proc)
    log.close()


@pytest.fixture(scope="session")
def astronaut_mp4(tmp_path_factory):
    """A real face on video: skimage's astronaut photo animated (pan, zoom, small rotation), 64 frames
    320x240 H.264. Yields (path, photo -> frame transforms [64, 2, 3])."""
    from aupretrain.synth import astronaut

    path = tmp_path_factory.mktemp("astronaut") / "eileen" / "a000.mp4"
    return path, astronaut.write(path, frames=64, width=320, height=240)


def tracked_runs(db) -> tuple:
    """(client, runs of the "aupretrain" experiment) of a sqlite store, without touching mlflow's global URI
    (mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, which later tests' subprocesses would inherit)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("aupretrain")
    return client, (client.search_runs([exp.experiment_id]) if exp else [])


def _gloo_rank(rank, world, port, fn, args, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out[rank] = fn(rank, *args)
    finally:
        dist.destroy_process_group()


def on_two_ranks(fn, *args) -> dict:
    """{rank: fn(rank, *args)} from two spawned processes in one gloo process group (fn: a module-level
    function; its return value must pickle)."""
    import torch.multiprocessing as mp

    with mp.Manager() as m:
        out = m.dict()
        mp.spawn(_gloo_rank, args=(2, free_port(), fn, args, out), nprocs=2, join=True)
        return dict(out)


def run_together(procs: list[subprocess.Popen], timeout: float = 420, codes: list[int] | None = None) -> list[str]:
    """Wait for processes started together (each in its own session, stdout piped, stderr merged); on a timeout
    or error every one still running is killed with its group. Asserts each exited 0 (or with `codes`, in order);
    returns their outputs."""
    outs = []
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    if codes is not None:
        assert [p.returncode for p in procs] == codes, "\n".join(o[-3000:] for o in outs)
    for p, out in zip(procs, outs):
        assert codes is not None or p.returncode == 0, out[-4000:]
    return outs


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny probes run many times slower with 2 threads on a busy 2-core box."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global RNG state (torch, NumPy, `random`): a test's unseeded draws (its
    random inputs) do not depend on which tests ran before it in the process, which pytest-xdist changes from run
    to run."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
