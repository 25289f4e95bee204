"""Checkpoints: <run>/checkpoints/step_<N>/ with DeepSpeed state, meta.json and a COMPLETE marker last. Which one a
job resumes from is `choice.py`'s."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from .distributed import barrier, broadcast_object
from .vetting import vet  # noqa: F401  (checkpoint.vet: what resume and export call)

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
STOP_RECORD = "last_stop.json"


def root(run_dir: str | Path) -> Path:
    """The checkpoints folder of a run: `<run_dir>/checkpoints`."""
    return Path(run_dir) / "checkpoints"


def tag(step: int) -> str:
    """Folder name of the checkpoint at `step`: "step_<step>"."""
    return f"step_{step}"


def save(engine, run_dir: str | Path, step: int, meta: dict, is_main: bool, rank: int = 0,
         reader: dict | None = None, keep: int = 0) -> Path:
    """Every rank writes its DeepSpeed shards and its reader state (reader_rank<R>.json); rank 0 writes
    meta.json, then COMPLETE after all ranks are done, then keeps only the newest `keep` (0: all).

    A write that fails on any rank (disk full, quota, a read-only or vanished file system) fails the checkpoint
    on every rank alike, without a hang: the failure is kept while DeepSpeed goes through its collectives as
    usual, the ranks then agree, rank 0 removes the incomplete folder (no COMPLETE marker: resume never picks
    it), and every rank raises the same error. The previous complete checkpoint is untouched (pruning only ever
    follows a COMPLETE marker), so a relaunch resumes from it.

    Raises:
        EnvironmentFault: the checkpoint could not be written (the message names it, the rank, the reason and
            the complete checkpoint a relaunch resumes from).
    """
    d = root(run_dir)
    out = d / tag(step)
    errors: list[tuple[str, BaseException]] = []
    if is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            errors.append((str(out), e))
    _fail_together(errors, out, run_dir, step, is_main, rank)
    with _write_errors_kept(engine, errors):  # DeepSpeed's own files (its barriers are passed on every rank)
        engine.save_checkpoint(str(d), tag=tag(step), client_state={"step": step}, save_latest=False)
    if reader is not None and not errors:
        _write(out / f"reader_rank{rank}.json", json.dumps(reader), errors)
    _fail_together(errors, out, run_dir, step, is_main, rank)
    if is_main:
        _write(out / "meta.json", json.dumps({"step": step, **meta}, indent=1), errors)
        if not errors:
            _write(out / COMPLETE, "ok\n", errors)  # last, and atomically: a COMPLETE marker is never empty
    _fail_together(errors, out, run_dir, step, is_main, rank)
    if is_main and keep:
        prune(run_dir, keep)
    barrier()
    return out


def _write(path: Path, text: str, errors: list) -> None:
    """Write `text` to `path` through a temporary name (renamed when written); a failure goes to `errors`."""
    import os

    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        errors.append((str(path), e))
        tmp.unlink(missing_ok=True)


class _write_errors_kept:
    """Within the block, a file DeepSpeed fails to write on this rank (`checkpoint_engine.save`, the recovery
    scripts rank 0 copies) is appended to `errors` instead of raised, and later files are skipped: DeepSpeed
    then passes its barriers on every rank as usual and no rank waits for one that left the sequence."""

    def __init__(self, engine, errors: list):
        self.engine, self.errors = engine, errors
        self.ce = engine.checkpoint_engine

    def __enter__(self):
        # DeepSpeed 0.19's engine: checkpoint_engine.save for every file, _copy_recovery_script on rank 0
        self.real = real_save, real_copy = self.ce.save, getattr(self.engine, "_copy_recovery_script", None)

        def save(state_dict, path, *a, **kw):
            if self.errors:  # the checkpoint is lost already: write nothing more
                return None
            try:
                return real_save(state_dict, path, *a, **kw)
            except Exception as e:  # noqa: BLE001 - OSError, or torch's RuntimeError from its zip writer
                self.errors.append((str(path), e))

        def copy(save_path):
            if not self.errors and real_copy is not None:
                try:
                    real_copy(save_path)
                except OSError as e:
                    self.errors.append((str(save_path), e))

        self.ce.save = save
        if real_copy is not None:
            self.engine._copy_recovery_script = copy
        return self

    def __exit__(self, *exc):
        self.ce.save = self.real[0]
        if self.real[1] is not None:
            self.engine._copy_recovery_script = self.real[1]
        return False


def _free(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def why(e: BaseException, path: str | Path) -> str:
    """The reason a write failed, in words. torch.save reports a full disk as a RuntimeError of its zip writer
    ("unexpected pos ..."), without errno: a file system with (almost) no space left is then named as such."""
    import errno
    import os

    code = getattr(e, "errno", None)
    if isinstance(e, OSError) and code:
        return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"
    free = _free(Path(path).parent)
    text = " ".join(str(e).split())[:200]
    if free is not None and free < 1 << 20:
        return f"ENOSPC: No space left on device ({free} bytes free; {type(e).__name__}: {text})"
    return f"{type(e).__name__}: {text}"


def _fail_together(errors: list, out: Path, run_dir: str | Path, step: int, is_main: bool, rank: int) -> None:
    """Collective: every rank's write failures so far; if any rank has one, rank 0 removes `out` and every rank
    raises the same EnvironmentFault."""
    from ..data.storage import EnvironmentFault
    from .distributed import gather_objects

    mine = [(rank, path, why(e, path)) for path, e in errors]
    failed = [r for per_rank in gather_objects(mine) for r in per_rank]
    if not failed:
        return
    msg = None
    if is_main:
        shutil.rmtree(out, ignore_errors=True)
        prev = latest(run_dir)
        free = _free(out.parent)
        r, path, reason = failed[0]
        others = f" (and {len(failed) - 1} more write(s))" if len(failed) > 1 else ""
        kept = (f"the previous complete checkpoint {prev[1]} is kept and a relaunch resumes from step {prev[0]}"
                if prev else "there is no earlier complete checkpoint: a relaunch starts from step 0")
        msg = (f"checkpoint {out} (step {step}) could not be written: rank {r}, {path}: {reason}{others}; the "
               f"incomplete folder was removed; {kept}. Free space on {out.parent}"
               f"{f' ({free / 2 ** 20:.1f} MiB free now)' if free is not None else ''} and run the same command "
               "again")
    fault = EnvironmentFault(broadcast_object(msg))
    fault.raised_on_rank0 = True  # every rank raises the same message: rank 0 reports it
    raise fault


def write_on_main(write, path: str | Path, what: str, is_main: bool, collective: bool = True) -> None:
    """Rank 0 calls `write(tmp)` to write `path` through a temporary file (or folder) renamed into place (a
    reader never sees half a file); a failure (a full disk, a read-only or vanished folder; also torch.save's errno-less
    "unexpected pos") removes the temporary file and becomes ONE `EnvironmentFault` naming `what`, `path` and the
    reason. `collective=True`: every rank calls this and every rank raises the same fault (a broadcast, so no rank
    is left waiting); `collective=False`: only rank 0 calls it and raises.

    Raises:
        EnvironmentFault: the write failed (`raised_on_rank0` is set: rank 0 reports it).
    """
    import os

    from ..data.storage import EnvironmentFault

    path = Path(path)
    msg = None
    if is_main:
        tmp = path.with_name(path.name + ".tmp")
        try:
            write(tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as e:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            free = _free(path.parent)
            msg = (f"{what} {path} could not be written: {why(e, path)}"
                   f"{f' ({free / 2 ** 20:.1f} MiB free now)' if free is not None else ''}")
    if collective:
        msg = broadcast_object(msg)
    if msg:
        fault = EnvironmentFault(msg)
        fault.raised_on_rank0 = True
        raise fault


def record_stop(run_dir: str | Path, step: int, steps: int, reason: str, world: int, run_id: str | None) -> Path:
    """Rank 0: write `<run>/last_stop.json` (atomically) — where and why this job stopped:
    {"step", "steps", "reason": "signal" | "train.stop_at" | "finished", "world_size", "mlflow_run_id", "time"}.
    Launchers read it: `launchers/slurm/train.sbatch` requeues the job when the reason is "signal"; a job that
    crashed writes none (the launcher removes the previous one before starting). Rank 0 only; a failed write
    raises `EnvironmentFault` (`write_on_main`)."""
    import time

    out = Path(run_dir) / STOP_RECORD
    text = json.dumps({"step": step, "steps": steps, "reason": reason, "world_size": world,
                       "mlflow_run_id": run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1)
    write_on_main(lambda tmp: tmp.write_text(text), out, "the stop record", True, collective=False)
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


def latest(run_dir: str | Path) -> tuple[int, Path] | None:
    """Newest checkpoint that finished (has COMPLETE); half-written ones are ignored."""
    best = None
    for p in root(run_dir).glob("step_*"):
        m = re.fullmatch(r"step_(\d+)", p.name)
        if m and (p / COMPLETE).exists() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best


def universal(ckpt_dir: str | Path, is_main: bool, run_dir: str | Path | None = None) -> Path:
    """The DeepSpeed universal form of a checkpoint, loadable on any number of ranks with
    `checkpoint.load_universal`: `<ckpt>/universal/` when it exists already or the checkpoint is this job's own
    (inside `run_dir`) and writable; else — another run's checkpoint (`train.resume=PATH`) or a read-only one —
    `<run_dir>/universal/<step_N>-<hash of its path>/`, so nothing is written into another run's folder. Converted
    once by rank 0 with `deepspeed.checkpoint.ds_to_universal` into a temporary folder that is renamed when
    complete; every rank returns after the barrier.

    Raises:
        RuntimeError: the conversion failed (its output is in the message).
    """
    import hashlib
    import os
    import subprocess
    import sys

    ckpt_dir = Path(ckpt_dir)
    out = ckpt_dir / "universal"
    own = run_dir is None or ckpt_dir.resolve().is_relative_to(Path(run_dir).resolve())
    if run_dir is not None and not (out / COMPLETE).exists() and not (own and os.access(ckpt_dir, os.W_OK)):
        tag = hashlib.sha1(str(ckpt_dir.resolve()).encode()).hexdigest()[:8]
        out = Path(run_dir) / "universal" / f"{ckpt_dir.name}-{tag}"
    if is_main and not (out / COMPLETE).exists():
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("converting %s to a DeepSpeed universal checkpoint in %s (another number of ranks)", ckpt_dir, out)
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


def read_meta(ckpt_dir: str | Path) -> dict:
    """A complete checkpoint's meta.json (step, world_size, mlflow_run_id, epoch, config)."""
    return json.loads((Path(ckpt_dir) / "meta.json").read_text())


def full_weights(ckpt_dir: str | Path) -> dict:
    """The whole model's weights {name: fp32 tensor} from a complete checkpoint folder, any ZeRO stage, without an
    engine: a stage-0 checkpoint holds the full module (`torch.load(weights_only=True)`); stages 1–3 are gathered
    from their partitions by DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` (bf16 runs keep fp32 master
    weights there). Every file is `vet`ted first, since DeepSpeed's reader unpickles freely.

    Raises:
        UsageError: a file would run code when loaded (`vet`).
        FileNotFoundError: meta.json or the model states are missing.
    """
    import torch

    ckpt_dir = Path(ckpt_dir)
    vet(ckpt_dir)
    meta = read_meta(ckpt_dir)
    if int(meta["config"]["deepspeed"]["zero_optimization"]["stage"]) == 0:  # no partitions: the full module
        full = torch.load(ckpt_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
        return {k: v.float() if v.is_floating_point() else v for k, v in full.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir.parent), tag=ckpt_dir.name)
    return {k: v.detach() for k, v in full.items()}  # DeepSpeed returns them as leaves that require grad


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
