"""A disk that fills up while a checkpoint is written: the run folder is a small tmpfs; the first checkpoint
completes, then the disk is filled (a few hundred KiB left, so log lines still fit) and the next checkpoint cannot
be written. The job stops with one line naming the checkpoint, the reason (ENOSPC) and the complete checkpoint
that is kept; the incomplete folder is gone (resume never picks it); after space is freed the same command
resumes from the kept checkpoint and finishes."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from aupretrain.engine import checkpoint
from tests.conftest import BIN, run_env
from tests.launch import TRAIN, checkpoint_steps, common, launch, wait_for_checkpoint

pytestmark = pytest.mark.slow

LEFT = 256 * 1024  # bytes left free once the disk is "full": metrics lines fit, a checkpoint (~18 MB) does not


def mount_tmpfs(path, size: str) -> None:
    path.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")


def unmount(path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)  # still busy: detach it


def fill(path, leave: int):
    """Allocate all but `leave` bytes of the file system at `path` to one file; returns that file."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = path / "filler.bin"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(0, free - leave))
    return filler


@pytest.mark.parametrize("ranks", [1, 2])
def test_disk_full_during_a_checkpoint_keeps_the_previous_one_and_the_relaunch_resumes(packed, tmp_path, fault,
                                                                                       ranks):
    """ranks=2: torchrun with both ranks writing to the full disk (rank 0 the module and its optimizer shard, rank
    1 its shard): every rank gets the same error and the job ends at once, no rank waits in a barrier."""
    run_dir = tmp_path / "runs" / "full"
    mount_tmpfs(run_dir, "64m")
    try:
        launcher = [sys.executable] if ranks == 1 else [str(BIN / "torchrun"), "--standalone", "--nproc_per_node",
                                                        str(ranks)]
        cmd = [*launcher, TRAIN, *common(packed, tmp_path, **{
            "run.dir": str(run_dir), "train.steps": 6, "train.checkpoint_every": 2, "train.keep_checkpoints": 1,
            "train.eval_at_end": "false", "objective": "tcl", "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})]
        log = open(tmp_path / "full.log", "w+")
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=run_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_for_checkpoint(proc, run_dir, 2)
            os.killpg(proc.pid, signal.SIGSTOP)  # hold the job (steps 3-4 to go) while the disk fills
            filler = fill(run_dir, LEFT)
            t0 = time.monotonic()
            os.killpg(proc.pid, signal.SIGCONT)
            rc = proc.wait(timeout=240)  # no hang: every rank stops
            took = time.monotonic() - t0
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log.seek(0)
        out = log.read()
        errors = [x for x in out.splitlines() if x.startswith("aupretrain-train: error:")]
        steps = checkpoint_steps(run_dir)
        partial = (run_dir / "checkpoints" / "step_4").exists()
        found = checkpoint.latest(run_dir)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        exp = client.get_experiment_by_name("aupretrain").experiment_id
        status = [x.info.status for x in client.search_runs([exp])]
        filler.unlink()  # space again: the same command resumes (one rank: the resume path is the same for two)
        resumed = done = None
        if ranks == 1:
            r = launch(cmd, tmp_path)
            resumed = re.search(r"resumed from (\S+) at step (\d+)", r.stderr)
            done = (run_dir / "encoder.pt").exists()
            runs = client.search_runs([exp])
        why = re.search(r"(rank \d+), \S+: (ENOSPC: [^(;]*)", errors[0]) if errors else None
        said = f"step_4 not written ({why.group(1)}, {why.group(2).strip()})" if why else f"said {errors[:1]}"
        fault(f"disk full while writing a checkpoint ({ranks} rank{'s' if ranks > 1 else ''})",
              f"exit {rc} {took:.1f} s after the disk filled, one error line: {said}, previous one kept; step_4 "
              f"{'left behind' if partial else 'removed'}, resume picks step_{found[0] if found else None}"
              + (f"; after freeing space the relaunch resumed at step {resumed.group(2) if resumed else None} and "
                 f"{'finished' if done else 'did not finish'}" if ranks == 1 else ""),
              data_lost=not (found and found[0] == 2 and (ranks > 1 or (resumed and done))), detect_s=took)
        assert rc == 1, out[-4000:]
        assert len(errors) == 1, out[-4000:]  # one line, from rank 0 only
        assert not re.search(r'File ".*aupretrain/', out), out[-4000:]  # no traceback of ours (torchrun prints its own)
        e = errors[0]
        assert f"checkpoint {run_dir / 'checkpoints' / 'step_4'} (step 4) could not be written" in e, e
        assert "ENOSPC" in e and "No space left on device" in e, e
        assert f"the previous complete checkpoint {run_dir / 'checkpoints' / 'step_2'} is kept" in e, e
        assert "resumes from step 2" in e and "run the same command again" in e, e
        assert steps == [2] and not partial and found[0] == 2  # the incomplete one is gone, the complete one kept
        assert took < 120, took
        assert status == ["FAILED"], status  # the MLflow run says the job failed
        if ranks > 1:
            return
        assert resumed and resumed.group(1) == str(run_dir / "checkpoints" / "step_2") and resumed.group(2) == "2"
        assert checkpoint_steps(run_dir) == [6] and done  # keep_checkpoints=1 after the finished run
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # the failed job's run, continued
    finally:
        unmount(run_dir)
        shutil.rmtree(tmp_path / "runs", ignore_errors=True)


def test_disk_full_while_exporting_the_encoder_or_the_stop_record_is_one_error(tmp_path, fault):
    """The last writes of a finished run (`encoder.pt`, `last_stop.json`) on a full disk: one EnvironmentFault
    naming the file and ENOSPC, no half-written file left behind (the final checkpoint is complete, so rerunning
    the same command exports again)."""
    from omegaconf import OmegaConf

    from aupretrain.config import load_config
    from aupretrain.data.storage import EnvironmentFault
    from aupretrain.models.encoder import AUEncoder, save_encoder

    run_dir = tmp_path / "full"
    mount_tmpfs(run_dir, "16m")
    try:
        filler = fill(run_dir, 0)
        enc = AUEncoder(OmegaConf.to_container(load_config(["model=resnet_small"]).model, resolve=True), 64)
        t0 = time.monotonic()
        with pytest.raises(EnvironmentFault) as e:
            checkpoint.write_on_main(lambda tmp: save_encoder(enc, tmp, {"step": 6}), run_dir / "encoder.pt",
                                     "the trained encoder", True)
        took = time.monotonic() - t0
        with pytest.raises(EnvironmentFault) as e2:
            checkpoint.record_stop(run_dir, 6, 6, "finished", 1, None)
        left = sorted(p.name for p in run_dir.iterdir())
        fault("disk full while exporting the trained encoder / writing last_stop.json",
              f"one error each: {str(e.value)[:90]}...; files left: {left}", data_lost=left != ["filler.bin"],
              detect_s=took)
        assert f"the trained encoder {run_dir / 'encoder.pt'} could not be written: ENOSPC" in str(e.value)
        assert "stop record" in str(e2.value) and "last_stop.json" in str(e2.value)
        assert e.value.raised_on_rank0 and e2.value.raised_on_rank0
        assert left == ["filler.bin"], left  # no encoder.pt(.tmp) or last_stop.json(.tmp) half written
        e = e2 = None  # the traceback holds torch's zip writer, whose open file keeps the unlinked space
        import gc

        gc.collect()
        filler.unlink()  # space again: the same write succeeds and the file loads
        checkpoint.write_on_main(lambda tmp: save_encoder(enc, tmp, {"step": 6}), run_dir / "encoder.pt",
                                 "the trained encoder", True)
        from aupretrain.models.encoder import load_encoder

        assert load_encoder(run_dir / "encoder.pt").au_dim == enc.au_dim
    finally:
        unmount(run_dir)
