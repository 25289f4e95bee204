"""Two "hosts" on one machine with the deepspeed launcher's no-ssh mode (`launchers/deepspeed/multinode.sh`
with NODE_RANK): each launcher starts its host's rank, the two join one process group of world size 2, train
one run and log one MLflow run."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import ROOT, free_port, run_env, run_together, tracked_runs

pytestmark = pytest.mark.slow


def test_deepspeed_no_ssh_two_hosts_train_one_run(packed, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    run_dir, db, steps = tmp_path / "runs" / "two-hosts", tmp_path / "mlflow.db", 6
    env = dict(HOSTFILE=str(hostfile), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               AUPRETRAIN_VENV=str(ROOT / ".venv"), MLFLOW_TRACKING_URI=f"sqlite:///{db}", OMP_NUM_THREADS="1")
    args = ["experiment=smoke", f"data.shards={packed}", f"run.dir={run_dir}", f"train.steps={steps}",
            "train.eval_at_end=false", f"eval.corpus={tmp_path / 'eval'}"]
    hosts = [subprocess.Popen([str(ROOT / "launchers/deepspeed/multinode.sh"), *args], cwd=tmp_path,
                              env=run_env(NODE_RANK=str(i), **env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True) for i in range(2)]
    outs = run_together(hosts)
    assert ": 2 ranks," in outs[0], outs[0][-3000:]
    stop = json.loads((run_dir / "last_stop.json").read_text())
    assert stop == {**stop, "reason": "finished", "step": steps, "world_size": 2}, stop
    # rank 1 (the second host) wrote its own reader state into the checkpoint
    assert (run_dir / "checkpoints" / f"step_{steps}" / "reader_rank1.json").exists()
    _, runs = tracked_runs(db)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"

