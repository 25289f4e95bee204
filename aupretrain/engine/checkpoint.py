"""Checkpoints: <run>/checkpoints/step_<N>/ with DeepSpeed state, meta.json and a COMPLETE marker last."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from ..errors import UsageError
from .distributed import barrier, broadcast_object

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
STOP_RECORD = "last_stop.json"
# What DeepSpeed's own checkpoint files hold besides tensors and plain containers (listed with
# `torch.serialization.get_unsafe_globals_in_checkpoint` over ZeRO 0-3, bf16 and universal checkpoints of
# DeepSpeed 0.19). DeepSpeed loads its files with `torch.load(weights_only=False)`, which runs whatever a pickle
# names; `vet` refuses any file naming anything else before DeepSpeed opens it.
DEEPSPEED_GLOBALS = frozenset({"deepspeed.runtime.fp16.loss_scaler.LossScaler",
                               "deepspeed.runtime.zero.config.ZeroStageEnum",
                               "deepspeed.utils.tensor_fragment.fragment_address"})


def root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag(step: int) -> str:
    return f"step_{step}"


def save(engine, run_dir: str | Path, step: int, meta: dict, is_main: bool, rank: int = 0,
         reader: dict | None = None, keep: int = 0) -> Path:
    """Every rank writes its DeepSpeed shards and its reader state (reader_rank<R>.json); rank 0 writes
    meta.json, then COMPLETE after all ranks are done, then keeps only the newest `keep` (0: all)."""
    d = root(run_dir)
    engine.save_checkpoint(str(d), tag=tag(step), client_state={"step": step})
    out = d / tag(step)
    if reader is not None:
        (out / f"reader_rank{rank}.json").write_text(json.dumps(reader))
    barrier()
    if is_main:
        (out / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=1))
        (out / COMPLETE).write_text("ok\n")
        if keep:
            prune(run_dir, keep)
    barrier()
    return out


def record_stop(run_dir: str | Path, step: int, steps: int, reason: str, world: int, run_id: str | None) -> Path:
    """Rank 0: write `<run>/last_stop.json` (atomically) — where and why this job stopped:
    {"step", "steps", "reason": "signal" | "train.stop_at" | "finished", "world_size", "mlflow_run_id", "time"}.
    Launchers read it: `launchers/slurm/train.sbatch` requeues the job when the reason is "signal"; a job that
    crashed writes none (the launcher removes the previous one before starting)."""
    import os
    import time

    out = Path(run_dir) / STOP_RECORD
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"step": step, "steps": steps, "reason": reason, "world_size": world,
                               "mlflow_run_id": run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1))
    os.replace(tmp, out)
    return out


def prune(run_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints (and any unfinished one older than them);
    returns what was deleted. Only rank 0 calls it, after the newest checkpoint is complete."""
    done = sorted((int(m.group(1)), p) for p in root(run_dir).glob("step_*")
                  if (m := re.fullmatch(r"step_(\d+)", p.name)) and (p / COMPLETE).exists())
    if len(done) <= keep:
        return []
    oldest_kept = done[-keep][0]
    gone = [p for p in root(run_dir).glob("step_*")
            if (m := re.fullmatch(r"step_(\d+)", p.name)) and int(m.group(1)) < oldest_kept]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    if gone:
        log.info("removed %d old checkpoint(s), keeping the newest %d (train.keep_checkpoints)", len(gone), keep)
    return gone


def resolve(run_dir: str | Path, resume) -> tuple[int, Path] | None:
    """The checkpoint to resume from for `train.resume`: `auto` (or true) = the newest complete one in run_dir,
    if any; `never` (or false) = none; a path = that checkpoint folder (`.../step_<N>`, which must be complete)
    or the newest complete checkpoint of that run folder.

    Raises:
        UsageError: a path that holds no complete checkpoint.
    """
    if resume in (True, "auto", "true"):
        return latest(run_dir)
    if resume in (False, None, "never", "false"):
        return None
    p = Path(str(resume))
    if (p / COMPLETE).exists() and re.fullmatch(r"step_(\d+)", p.name):
        return int(p.name.split("_")[1]), p.resolve()
    found = latest(p)
    if found is None:
        raise UsageError(f"train.resume={resume}: no complete checkpoint there (expected a run folder or its "
                         "checkpoints/step_<N> folder with a COMPLETE marker)")
    return found[0], found[1].resolve()


def latest(run_dir: str | Path) -> tuple[int, Path] | None:
    """Newest checkpoint that finished (has COMPLETE); half-written ones are ignored."""
    best = None
    for p in root(run_dir).glob("step_*"):
        m = re.fullmatch(r"step_(\d+)", p.name)
        if m and (p / COMPLETE).exists() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best


def choose(run_dir: str | Path, resume, is_main: bool, rank: int) -> tuple[int, Path] | None:
    """`resolve` on rank 0, broadcast to every rank (NFS caches and node-local views differ between ranks), so
    all ranks load the same checkpoint; a UsageError is raised on every rank alike.

    Raises:
        UsageError: `resolve` refused the setting, or this rank cannot see the chosen checkpoint.
    """
    choice = None
    if is_main:
        try:
            choice = ("ok", resolve(run_dir, resume))
        except UsageError as e:
            choice = ("error", str(e))
    kind, found = broadcast_object(choice)
    if kind == "error":
        raise UsageError(found)
    if found and not (found[1] / COMPLETE).exists():
        raise UsageError(f"rank {rank} cannot see {found[1]}, the checkpoint rank 0 resumes from: run.dir must be "
                         "on storage every rank shares")
    return found


def universal(ckpt_dir: str | Path, is_main: bool) -> Path:
    """The DeepSpeed universal form of a checkpoint (`<ckpt>/universal/`, loadable on any number of ranks with
    `checkpoint.load_universal`), converted once by rank 0 with `deepspeed.checkpoint.ds_to_universal` into a
    temporary folder that is renamed when complete; every rank returns after the barrier.

    Raises:
        RuntimeError: the conversion failed (its output is in the message).
    """
    import subprocess
    import sys

    ckpt_dir = Path(ckpt_dir)
    out = ckpt_dir / "universal"
    if is_main and not (out / COMPLETE).exists():
        tmp = ckpt_dir / ".universal.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("converting %s to a DeepSpeed universal checkpoint (another number of ranks)", ckpt_dir)
        r = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                            str(ckpt_dir), "--output_folder", str(tmp), "--inject_missing_state"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{ckpt_dir}: conversion to a universal checkpoint failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}")
        shutil.copy(ckpt_dir / "meta.json", tmp / "meta.json")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        (out / COMPLETE).write_text("ok\n")
    barrier()
    return out


def vet(ckpt_dir: str | Path) -> None:
    """Refuse a checkpoint folder (a colleague's, one from the internet) whose `.pt` files would run code when
    loaded: each file's pickle stream is read without executing it (no tensors are loaded) and every global it
    names must be in torch's weights-only set or `DEEPSPEED_GLOBALS`.

    Raises:
        UsageError: a file names other globals (the file and the names are in the message), or is not a
            `torch.save` zip file that can be checked.
    """
    import torch

    for f in sorted(Path(ckpt_dir).rglob("*.pt")):
        try:
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(f)))
        except (ValueError, RuntimeError, OSError) as e:
            raise UsageError(f"{f}: refused: not a checkpoint file that can be checked before loading ({e})") from None
        unknown = sorted(names - DEEPSPEED_GLOBALS)
        if unknown:
            raise UsageError(f"{f}: refused: loading it would call {', '.join(unknown)} (a checkpoint holds tensors "
                             "and DeepSpeed's state only); do not load a checkpoint you cannot trust")


def read_meta(ckpt_dir: str | Path) -> dict:
    """A complete checkpoint's meta.json (step, world_size, mlflow_run_id, epoch, config)."""
    return json.loads((Path(ckpt_dir) / "meta.json").read_text())


def load(engine, ckpt_dir: str | Path) -> dict:
    """Load a complete checkpoint folder (`.../checkpoints/step_<N>`) into the engine; returns its meta."""
    ckpt_dir = Path(ckpt_dir)
    _, client = engine.load_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name)
    return {**(client or {}), **read_meta(ckpt_dir)}


def reader_state(ckpt_dir: str | Path, rank: int, world: int) -> dict | None:
    """This rank's saved reader state, if the checkpoint was written by the same number of ranks."""
    path = Path(ckpt_dir) / f"reader_rank{rank}.json"
    meta = read_meta(ckpt_dir)
    if not path.exists() or int(meta.get("world_size", -1)) != world:
        return None
    return json.loads(path.read_text())
