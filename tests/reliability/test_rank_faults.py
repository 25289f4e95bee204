"""Faults of a training process: a preemption signal (SIGTERM, then SIGUSR1 and Ctrl-C's SIGINT on relaunches; the
`deepspeed` launcher killed alone) and kill -9 of one
rank mid-run (the job fails fast naming the rank; a relaunch continues bit-exactly from the last complete
checkpoint)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import BIN, free_port, run_env
from tests.launch import TRAIN, checkpoint_steps, common, launch, wait_for_checkpoint

pytestmark = pytest.mark.slow


def _read_until(proc, lines: list[str], pattern: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    for line in proc.stderr:
        lines.append(line)
        if re.search(pattern, line) or time.time() > deadline:
            return


def test_preemption_sigterm_stops_with_a_checkpoint_and_the_run_continues(packed, tmp_path, fault):
    """SIGTERM mid-run: the process finishes its step, checkpoints and exits 0 within the grace time; the
    relaunch resumes there and, stopped by SIGUSR1, does the same, and so does the next one on SIGINT (Ctrl-C). (One rank of a 2-rank torchrun job being
    signalled is the Kubernetes entrypoint test's case, test_k8s.py.)"""
    run_dir = tmp_path / "runs" / "preempted"
    cmd = [sys.executable, TRAIN, *common(packed, tmp_path, **{
        "run.dir": str(run_dir), "train.eval_at_end": "false", "train.steps": 500, "tracking.enabled": "false",
        "objective": "tcl"})]
    resumed = None  # the step the second job resumes from
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        # SIGINT as a terminal's job gets it: a suite started in the background of a non-interactive shell hands its
        # children SIGINT ignored, which the trainer then leaves alone (not ours); reset it as an interactive shell does
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=run_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        lines: list[str] = []
        try:
            start = 3 if resumed is None else resumed + 3
            _read_until(proc, lines, rf"step {start}/500")  # training under way
            t0 = time.monotonic()
            os.kill(proc.pid, sig)
            _, rest = proc.communicate(timeout=300)
            took = time.monotonic() - t0
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        err = "".join(lines) + rest
        name = signal.Signals(sig).name
        steps = checkpoint_steps(run_dir)
        fault(f"{name} (preemption) mid-run", f"checkpoint at step {steps[-1] if steps else None}, exit "
              f"{proc.returncode} {took:.1f} s after the signal" + (f"; resumed from step {resumed}" if resumed else ""),
              data_lost=not steps or (resumed is not None and steps[-1] <= resumed), detect_s=took)
        assert proc.returncode == 0, err[-3000:]
        assert f"received {name}" in err and "(signal): run again" in err, err[-3000:]
        assert took < 60, f"{name}: {took:.0f} s from the signal to the exit"  # within a pod's grace period
        assert steps and (resumed or 2) < steps[-1] < 500 and not (run_dir / "encoder.pt").exists()
        assert (run_dir / "checkpoints" / f"step_{steps[-1]}" / "reader_rank0.json").exists()
        if resumed is not None:
            assert f"at step {resumed} (data stream continues where it stopped)" in err
        resumed = steps[-1]


def test_resume_bit_exact(packed, tmp_path, fault):
    """kill -9 rank 1 of a 2-rank torchrun job once its step-4 checkpoint is complete: the job fails fast with an
    error naming the rank (no hang); the relaunch resumes from the last complete checkpoint and every per-step loss
    after it equals the uninterrupted run's exactly (fp32 on CPU; data stream, RNGs, optimizer, schedule)."""
    def losses(run_dir):
        out = {}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "train/loss" in rec:
                out[rec["step"]] = rec["train/loss"]  # a relaunch's rows come later and win
        return out

    def cmd(name):
        return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", TRAIN,
                *common(packed, tmp_path, **{"run.dir": str(tmp_path / "runs" / name), "train.eval_at_end": "false",
                                             "train.steps": 16, "train.checkpoint_every": 4,
                                             "train.keep_checkpoints": 0, "objective": "tcl"})]

    launch(cmd("straight"), tmp_path)
    killed = tmp_path / "runs" / "killed"
    log = open(tmp_path / "killed.log", "w+")
    proc = subprocess.Popen(cmd("killed"), cwd=tmp_path, env=run_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for_checkpoint(proc, killed, 4)
        rank1 = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
        assert len(rank1) == 1, rank1
        t0 = time.monotonic()
        rank1[0].kill()  # SIGKILL: no handler, no clean-up, as the kernel's OOM killer or a dead node
        rc = proc.wait(timeout=180)  # no hang: torchrun notices the dead worker and stops the other rank
        took = time.monotonic() - t0
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    log.seek(0)
    out = log.read()
    named = re.search(r"rank\s*:\s*1\b", out) is not None and ("-9" in out or "SIGKILL" in out)
    assert rc != 0 and named, out[-4000:]
    assert not (killed / "encoder.pt").exists()
    r = launch(cmd("killed"), tmp_path)
    k = int(re.search(r"at step (\d+) \(data stream continues where it stopped\)", r.stderr).group(1))
    a, b = losses(tmp_path / "runs" / "straight"), losses(killed)
    same = [b[s] for s in range(k + 1, 17)] == [a[s] for s in range(k + 1, 17)]
    fault("kill -9 one rank mid-step", f"torchrun ended the job (exit {rc}) {took:.1f} s later naming rank 1 "
          f"(SIGKILL); the relaunch resumed at step {k}, losses of steps {k + 1}-16 "
          f"{'equal' if same else 'differ from'} the uninterrupted run's", data_lost=not same, detect_s=took)
    assert 4 <= k < 16
    assert same, (k, a, b)


def test_the_deepspeed_launcher_killed_alone_stops_its_ranks_with_a_checkpoint(packed, tmp_path, fault):
    """Field report: `kill <pid of deepspeed>` killed only DeepSpeed's runner (it forwards signals in pdsh mode
    only); the ranks trained on, orphaned, holding the run's lock. Each rank now watches the runner and stops as
    on SIGTERM: a checkpoint, a stop record, the ranks gone, the lock free for the relaunch."""
    run_dir = tmp_path / "runs" / "orphaned"
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), TRAIN,
           *common(packed, tmp_path, **{"run.dir": str(run_dir), "train.eval_at_end": "false", "train.steps": 500,
                                        "tracking.enabled": "false", "objective": "tcl"})]
    log = tmp_path / "ds.log"
    with open(log, "w") as out:
        runner = subprocess.Popen(cmd, cwd=tmp_path, env=run_env(), stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        deadline = time.time() + 300
        while "step 3/500" not in log.read_text():
            assert runner.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        ranks = psutil.Process(runner.pid).children(recursive=True)
        t0 = time.monotonic()
        runner.send_signal(signal.SIGTERM)  # the runner's pid only, as `kill PID` does
        runner.wait(timeout=60)
        gone, alive = psutil.wait_procs(ranks, timeout=120)
        took = time.monotonic() - t0
    finally:
        try:
            os.killpg(runner.pid, signal.SIGKILL)
        except ProcessLookupError:  # every process of the group has exited
            pass
    text = log.read_text()
    steps = checkpoint_steps(run_dir)
    stop = json.loads((run_dir / "last_stop.json").read_text()) if (run_dir / "last_stop.json").exists() else {}
    fault("SIGTERM to the deepspeed launcher's pid only", f"the ranks saw the launcher gone and stopped: checkpoint at "
          f"step {steps[-1] if steps else None}, stop record {stop.get('reason')}, every rank gone {took:.1f} s after "
          "the signal", data_lost=not steps, detect_s=took)
    assert not alive, [p.cmdline() for p in alive]
    assert "the deepspeed launcher (pid" in text and "is gone" in text, text[-3000:]
    assert steps and 3 <= steps[-1] < 500 and stop.get("reason") == "signal", text[-3000:]
    r = launch([sys.executable, TRAIN, *common(packed, tmp_path, **{
        "run.dir": str(run_dir), "train.eval_at_end": "false", "train.steps": steps[-1] + 1,
        "tracking.enabled": "false", "objective": "tcl"})], tmp_path)  # the lock is free: the relaunch goes on
    assert f"at step {steps[-1]}" in r.stderr and (run_dir / "encoder.pt").exists(), r.stderr[-3000:]
