"""Two nodes with their own network stacks on one machine: the Kubernetes entrypoint in two network
namespaces joined by a veth pair, so the rendezvous and the gloo traffic cross a link, not loopback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT, run_env, run_together, tracked_runs

pytestmark = pytest.mark.slow


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """Namespaces aup<n>a/b with 10.77.<n>.1 and .2 on a veth pair. Skipped, with the reason, where namespaces
    cannot be made (no root, no iproute2, or a sandbox that forbids them)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    n = os.getpid() % 200 + 20
    names = [f"aup{n}a", f"aup{n}b"]
    made = _ip("netns", "add", names[0])
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        steps = [("netns", "add", names[1]),
                 ("link", "add", f"veth{n}a", "type", "veth", "peer", "name", f"veth{n}b"),
                 ("link", "set", f"veth{n}a", "netns", names[0]), ("link", "set", f"veth{n}b", "netns", names[1])]
        for i, ns in enumerate(names):
            dev = f"veth{n}{'ab'[i]}"
            steps += [("netns", "exec", ns, "ip", "addr", "add", f"10.77.{n}.{i + 1}/24", "dev", dev),
                      ("netns", "exec", ns, "ip", "link", "set", dev, "up"),
                      ("netns", "exec", ns, "ip", "link", "set", "lo", "up")]
        for s in steps:
            r = _ip(*s)
            assert r.returncode == 0, (s, r.stderr)
        yield [(ns, f"10.77.{n}.{i + 1}", f"veth{n}{'ab'[i]}") for i, ns in enumerate(names)]
    finally:
        for ns in names:
            _ip("netns", "del", ns)


def test_two_network_namespaces_rendezvous_and_train_one_run(two_hosts, packed, tmp_path):
    run_dir, db, steps = tmp_path / "runs" / "netns", tmp_path / "mlflow.db", 6
    procs = []
    for i, (ns, addr, dev) in enumerate(two_hosts):
        env = run_env(NNODES="2", NPROC_PER_NODE="1", MASTER_ADDR=two_hosts[0][1], MASTER_PORT="29400",
                      LOCAL_ADDR=addr, RDZV_ID=f"netns-{os.getpid()}", RUN_DIR=str(run_dir),
                      AUPRETRAIN_SHARDS=str(packed), MLFLOW_TRACKING_URI=f"sqlite:///{db}", GLOO_SOCKET_IFNAME=dev,
                      OMP_NUM_THREADS="1", HOSTNAME=f"node-{i}", JOB_COMPLETION_INDEX=str(i), JOIN_TIMEOUT="120")
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "bash", str(ROOT / "launchers/k8s/entrypoint.sh"),
                                       "experiment=smoke", f"train.steps={steps}", "train.eval_at_end=false",
                                       f"eval.corpus={tmp_path / 'eval'}"], cwd=tmp_path, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    outs = run_together(procs, timeout=240)
    assert ": 2 ranks," in "\n".join(outs)
    stop = json.loads((run_dir / "last_stop.json").read_text())
    assert (stop["reason"], stop["step"], stop["world_size"]) == ("finished", steps, 2)
    _, runs = tracked_runs(db)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
