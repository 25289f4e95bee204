"""The end of a finished run: the encoder (and the method's own AU head) exported, the stop recorded, and the AU
probe launched as its own process; and what `aupretrain-export` reads (`read_source`: a run's newest state, chosen
again when a running job prunes it mid-read) and writes (`write_export_folder`)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..data.storage import EnvironmentFault
from ..methods import Method
from ..models.encoder import save_encoder
from . import checkpoint
from .distributed import barrier

log = logging.getLogger("aupretrain.train")
AU_HEAD = "au_head"  # <run>/au_head: the method's own AU classifier as an AU head folder (supervised runs)


def encoder_from_checkpoint(ckpt: Path):
    """(AUEncoder in eval mode, meta) from a complete DeepSpeed checkpoint folder `.../checkpoints/step_<N>`, its
    fp32 weights gathered by `checkpoint.full_weights` (bf16/fp16 runs: the optimizer's fp32 master weights, ZeRO
    1-3). Raises what `full_weights` raises, and ValueError when the weights do not fit the saved model config."""
    from ..models.encoder import AUEncoder

    full = checkpoint.full_weights(ckpt)  # vetted first: DeepSpeed's reader unpickles with weights_only=False
    meta = checkpoint.read_meta(ckpt)
    state = {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}
    cfg = meta["config"]
    enc = AUEncoder(cfg["model"], int(cfg["data"]["input_size"]))
    missing, unexpected = enc.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith(("mean", "std"))]:
        raise ValueError(f"{ckpt}: encoder weights do not match the model config (missing {missing}, unexpected {unexpected})")
    return enc.eval(), meta


READ_TRIES = 4  # a checkpoint pruned while it was read (a running job's train.keep_checkpoints): chosen again


class CheckpointsPruned(EnvironmentFault):
    """A running job pruned (`train.keep_checkpoints`) every checkpoint `aupretrain-export` chose while reading it:
    running the same command again may well succeed."""


def _gone(ckpt: Path, e: BaseException) -> bool:
    """Whether `ckpt` was removed, or lost a file, while it was read (after `e` was raised reading it): its COMPLETE
    marker is gone or `choice.problems` finds a file missing. A file-not-found error with the folder still whole is
    looked at once more after 0.5 s (a removal still under way); any other failure of a whole checkpoint is its own."""
    from .choice import problems

    for again in (True, False):
        if not (ckpt / checkpoint.COMPLETE).exists() or problems(ckpt):
            return True
        missing = isinstance(e, FileNotFoundError) or "doesn't exist" in str(e) or "No such file" in str(e)
        if not (again and missing):
            return False
        time.sleep(0.5)
    return False


def newest_encoder(run_dir: Path, above: int | None = None, warn=log.warning, tries: int = READ_TRIES):
    """(encoder, meta, checkpoint folder) of the newest whole checkpoint of a run folder (`choice.newest_whole`; with
    `above`, only one of a later step), or None when there is none. `warn(text)` is told of each checkpoint passed
    over. A running job may prune the chosen checkpoint while it is read: when it vanished or lost a file
    (`_gone`), the newest whole one is chosen again, up to `tries` times.

    Raises:
        CheckpointsPruned: the chosen checkpoints were removed while they were read on every try.
        what `encoder_from_checkpoint` raises for a checkpoint that is still there.
    """
    from .choice import newest_whole

    gone: list[str] = []
    warned: set[str] = set()
    for _ in range(tries):
        found, skipped = newest_whole(run_dir, above)
        for s in skipped:
            if s not in warned:
                warned.add(s)
                warn(f"skipping checkpoint {s}")
        if found is None:
            if gone:
                break
            return None
        try:
            enc, meta = encoder_from_checkpoint(found[1])
            return enc, meta, found[1]
        except Exception as e:  # noqa: BLE001 - re-raised unless the checkpoint vanished under the reader
            if not _gone(found[1], e):
                raise
            gone.append(found[1].name)
            warn(f"{found[1]} was removed while it was read (a running job pruning its checkpoints); choosing again")
    raise CheckpointsPruned(f"{run_dir}: the running job pruned the checkpoints while they were read "
                            f"({', '.join(gone)} removed mid-read); run the same command again, or raise "
                            "train.keep_checkpoints so an export has time to read one")


def _encoder_file(pt: Path):
    """(encoder, provenance) of an `encoder.pt` file."""
    import torch

    from ..models.encoder import load_encoder

    enc = load_encoder(pt)
    ck = torch.load(pt, weights_only=True)
    return enc, {"step": ck.get("step"), "mlflow_run_id": ck.get("mlflow_run_id"), "source": str(pt)}


def read_source(src: Path, warn=log.warning):
    """What `aupretrain-export SRC` exports: (encoder in eval mode, provenance {"step", "mlflow_run_id", "source"},
    a note for the user or None). SRC is an encoder.pt file, a complete checkpoint folder, or a run folder: there the
    newest state — its encoder.pt, unless a whole checkpoint of a later step is there (a run continued past its end,
    `train.stop_at`), which is then read and named in the note; with no encoder.pt, the newest whole checkpoint
    (`newest_encoder`: chosen again when a running job prunes it mid-read). `warn(text)`: checkpoints passed over.

    Raises:
        FileNotFoundError: nothing to export there, a half-written checkpoint, a named checkpoint removed while it
            was read.
        CheckpointsPruned: a run folder's chosen checkpoints were all pruned while they were read.
        ValueError, pickle.UnpicklingError: a file that cannot be read (`UsageError`: a file that would run code).
    """
    from .choice import problems

    if src.is_file():
        return (*_encoder_file(src), None)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if (src / checkpoint.COMPLETE).exists():
        if wrong := problems(src):
            raise FileNotFoundError(f"{src}: this checkpoint cannot be read: {'; '.join(wrong)}")
        try:
            enc, meta = encoder_from_checkpoint(src)
        except Exception as e:  # noqa: BLE001 - re-raised unless it vanished under the reader
            if not _gone(src, e):
                raise
            raise FileNotFoundError(f"{src}: removed while it was read (a running job pruning its checkpoints: "
                                    "train.keep_checkpoints); export the run folder for its newest one") from None
        return enc, {"step": meta["step"], "mlflow_run_id": meta.get("mlflow_run_id"), "source": str(src)}, None
    if (src / "mp_rank_00_model_states.pt").exists() or list(src.glob("*_model_states.pt")):
        raise FileNotFoundError(f"{src}: a half-written checkpoint (no {checkpoint.COMPLETE} marker: the job writing "
                                "it stopped before it finished)")
    pt = src / "encoder.pt"
    final = _encoder_file(pt) if pt.is_file() else None
    if final is not None and final[1]["step"] is None:  # an encoder.pt that does not say its step: taken as final
        return (*final, None)
    try:
        newer = newest_encoder(src, None if final is None else int(final[1]["step"]), warn)
    except Exception as e:  # noqa: BLE001 - with a readable encoder.pt, a newer checkpoint that fails is passed over
        if final is None:
            raise
        warn(f"{src}: a checkpoint newer than encoder.pt (step {final[1]['step']}) could not be read ({e}); "
             "exported encoder.pt")
        newer = None
    if newer is None:
        if final is None:
            raise FileNotFoundError(f"{src}: no encoder.pt and no complete checkpoint that can be read (a run folder, "
                                    ".../checkpoints/step_N with a COMPLETE marker, or an encoder.pt file)")
        return (*final, None)
    enc, meta, ckpt = newer
    note = None if final is None else (f"{ckpt} (step {meta['step']}) is newer than {pt} (step {final[1]['step']}): "
                                       "exported the checkpoint")
    return enc, {"step": meta["step"], "mlflow_run_id": meta.get("mlflow_run_id"), "source": str(ckpt)}, note


def _file_mode() -> int:
    """The mode a new file gets under this process's umask: 0666 & ~umask."""
    try:
        umask = next(int(x.split()[1], 8) for x in Path("/proc/self/status").read_text().splitlines()
                     if x.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def check_out(out: Path) -> None:
    """Refuse an export folder that cannot be written, before anything is read: OUT (or the nearest folder above it
    that exists) is a file, or a folder this process may not write (permissions, a read-only file system).

    Raises:
        UsageError: naming the path and what is wrong.
    """
    from ..errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: is a file; give a folder for the export")
    above = next((p for p in (out, *out.parents) if p.exists()), None)
    if above is not None and above != out and not above.is_dir():
        raise UsageError(f"{out}: {above} is a file; give a folder for the export")
    if above is not None and not os.access(above, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(above) else "is not writable by this user"
        raise UsageError(f"{out}: {'' if above == out else f'{above} '}{why}; give a folder you can write for the "
                         "export")


def _read_only(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def write_export_folder(enc, out: Path, extra: dict) -> None:
    """Write `<out>/model.safetensors` and `<out>/config.json` (`models.encoder.save_encoder_folder`) through a
    temporary folder inside `out`, each file renamed into place (a reader never sees half a file; a reader of a
    folder being re-exported may see the new weights beside the old config.json for a moment, and `load_encoder`
    then reads the config the weights file carries in its own metadata), with the mode a
    file written by this process gets (0666 & ~umask: the writer safetensors uses makes 0600 files). A temporary
    folder an earlier export left (killed mid-write) is removed once its process is gone.

    Raises:
        UsageError: `out` is a file, or a folder this user may not write (naming it and the reason).
        EnvironmentFault: the write failed otherwise (a full disk ...). Nothing half-written is left either way.
    """
    import errno
    import shutil

    from safetensors import SafetensorError

    from ..errors import UsageError
    from ..models.encoder import save_encoder_folder

    check_out(out)
    tmp = out / f".export-{os.getpid()}.tmp"
    for old in out.glob(".export-*.tmp") if out.is_dir() else []:  # an export killed mid-write (SIGKILL, OOM)
        try:
            os.kill(int(old.name[len(".export-"):-len(".tmp")]), 0)  # its process is still writing: left alone
        except (ValueError, ProcessLookupError):
            shutil.rmtree(old, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_encoder_folder(enc, tmp, extra)
        mode = _file_mode()
        for name in ("model.safetensors", "config.json"):
            os.chmod(tmp / name, mode)
            os.replace(tmp / name, out / name)
    except (OSError, RuntimeError, SafetensorError) as e:  # SafetensorError: its writer's I/O errors
        reason = checkpoint.why(e, out) if isinstance(e, OSError) else " ".join(str(e).split())[:300]
        users = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR)
        if getattr(e, "errno", None) in users or any(t in reason for t in ("Permission denied", "Read-only file")):
            raise UsageError(f"{out}: the export cannot be written there ({reason}); give a folder you can "
                             "write") from None
        raise EnvironmentFault(f"{out}: the export could not be written ({reason}); run the same command again "
                               "once that is fixed") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def master_method(engine, cfg, final_checkpoint: Path) -> tuple[Method | None, bool]:
    """In DeepSpeed's bf16 and fp16 modes the module holds 16-bit copies of the weights; under ZeRO 1-3 the
    optimizer's fp32 master weights are in the checkpoints. Returns (on rank 0, the method rebuilt from the config
    in fp32 with the master weights of `final_checkpoint`, read as `aupretrain-export` reads them:
    `checkpoint.full_weights`; None on the other ranks, and None, False in fp32 or under ZeRO-0, where the module's
    weights are the weights; whether it is used: the same on every rank). Where that checkpoint is not there (a
    run resumed from another run's checkpoint at `train.steps`) or cannot be read, rank 0 warns and every
    rank falls back to the module's weights, cast."""
    from ..methods import build_method
    from .distributed import broadcast_object
    from .step import input_dtype

    if input_dtype(engine) is None or int(engine.zero_optimization_stage()) < 1:  # the same on every rank
        return None, False
    method = None
    if engine.global_rank == 0:
        try:
            if not (final_checkpoint / checkpoint.COMPLETE).exists():
                raise FileNotFoundError(f"{final_checkpoint}: no complete checkpoint of the last step")
            method = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
            missing, unexpected = method.load_state_dict(checkpoint.full_weights(final_checkpoint), strict=False)
            if unexpected or [k for k in missing if not k.endswith(("mean", "std"))]:
                raise ValueError(f"weights do not match the method (missing {missing}, unexpected {unexpected})")
            method.eval()
        except (OSError, ValueError, KeyError) as e:  # UsageError (a vetted file refused) is a ValueError
            log.warning("the fp32 master weights of %s were not read (%s); exporting the 16-bit module's weights, "
                        "cast to fp32", final_checkpoint, " ".join(str(e).split())[:300])
            method = None
    return method, broadcast_object(method is not None)


def export_encoder(engine, path: Path, extra: dict, master: tuple[Method | None, bool] = (None, False)) -> None:
    """Rank 0 writes the encoder's fp32 weights: those of `master` when it is used (`master_method`: 16-bit runs
    under ZeRO 1-3, so `encoder.pt` and an export of the final checkpoint agree), else the module's (gathered first
    under ZeRO-3), cast; collective. A failed write (a full disk ...) raises the same `EnvironmentFault` on every
    rank (`checkpoint.write_on_main`)."""
    import deepspeed

    method, used = master
    if used:
        checkpoint.write_on_main(lambda tmp: save_encoder(method.encoder, tmp, extra), path, "the trained encoder",
                                 engine.global_rank == 0)
        return
    enc = engine.module.encoder
    with deepspeed.zero.GatheredParameters(list(enc.parameters()), modifier_rank=None,
                                           enabled=int(engine.zero_optimization_stage()) == 3):
        checkpoint.write_on_main(lambda tmp: save_encoder(enc, tmp, extra), path, "the trained encoder",
                                 engine.global_rank == 0)


def export_au_head(engine, path: Path, aus, meta: dict, master: tuple[Method | None, bool] = (None, False)) -> bool:
    """Rank 0 writes the method's own AU classifier (`Method.au_head`: the supervised bound's, fitted on the
    pretraining labels) as an AU head folder (`aupretrain.models.head`) that `aupretrain-extract --head` and
    `aupretrain-eval --head` read; collective. Its weights are `master`'s when it is used (`master_method`), else
    the module's. `aus`: a callable giving the AU names (rank 0 only). Returns False when the method has no such
    classifier. A failed write raises `EnvironmentFault` on every rank."""
    import shutil

    import deepspeed

    from ..models.head import save_head

    module = engine.module
    if type(module).au_head is Method.au_head:
        return False
    method, used = master
    if used:
        tensors = method.au_head() if engine.global_rank == 0 else None
    else:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None,
                                               enabled=int(engine.zero_optimization_stage()) == 3):
            tensors = module.au_head()

    def write(tmp: Path) -> None:  # on rank 0; the AU names are read here so a failure is the same one fault
        names = list(aus())
        save_head(tmp, tensors, {"protocol": "linear", "aus": names, "thresholds": [0.5] * len(names),
                                 "code_dim": int(tensors["linear.weight"].shape[1]), **meta})

    if engine.global_rank == 0:
        shutil.rmtree(path, ignore_errors=True)  # a finished run exported again
    checkpoint.write_on_main(write, path, "the AU head", engine.global_rank == 0)
    return True


def export_run(engine, cfg, run_dir: Path, loader, steps: int, run_id: str | None) -> None:
    """Every rank (collective), after the last step: `<run>/encoder.pt` (fp32, recording `run_id`) and
    `<run>/au_head` for methods with their own AU classifier; a barrier follows. Raises EnvironmentFault (on every
    rank alike) when a file cannot be written; the final checkpoint is complete, so a rerun exports again."""
    master = master_method(engine, cfg, checkpoint.root(run_dir) / checkpoint.tag(steps))  # saved before this
    export_encoder(engine, run_dir / "encoder.pt", {"step": steps, "mlflow_run_id": run_id}, master)
    export_au_head(engine, run_dir / AU_HEAD, lambda: loader.labels.names(),
                   {"source": f"training run {run_dir.name}: objective={cfg.objective.name}, fitted on the "
                              f"labels at data.labels={cfg.data.labels}", "dataset": str(cfg.data.shards),
                    "label_threshold": float(cfg.objective.get("label_threshold", 0.5)), "steps": steps}, master)
    barrier()


def evaluation_env(environ) -> dict[str, str]:
    """The end-of-run evaluation's environment: the rank's, less the process-group variables (RANK, LOCAL_RANK,
    WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT: it is no rank), and less the OMP_NUM_THREADS=1 torchrun
    sets itself when it starts several ranks a host (a share for one of them, not the job's CPU budget; the same
    rule as the ranks' `threads.cpu_threads`). A value the user set stays."""
    env = {k: v for k, v in environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                                         "MASTER_ADDR", "MASTER_PORT")}
    if (env.get("OMP_NUM_THREADS") == "1" and "TORCHELASTIC_RUN_ID" in env
            and int(environ.get("LOCAL_WORLD_SIZE", "1") or 1) > 1):
        env.pop("OMP_NUM_THREADS")
    return env


def evaluate_in_own_process(run_dir: Path, config: Path, step: int, run_id: str | None) -> int:
    """`aupretrain-eval` on the exported encoder as a fresh process (spawned, not forked: no CUDA, NCCL or DALI
    threads of the training job are inherited, and torch gets every CPU the job may use on this host, or
    `$OMP_NUM_THREADS` where the user set it: `threads.cpu_threads`); results go to <run>/eval.json and
    the same MLflow run; `<run>/au_head`, when the method wrote one, is scored as a row of its own. Returns its
    exit status (logged as an error when not 0)."""
    import subprocess
    import sys

    head = run_dir / AU_HEAD  # the supervised bound's own classifier: scored as it is, beside the probe
    cmd = [sys.executable, "-m", "aupretrain.cli.evaluate", str(run_dir / "encoder.pt"), "--config", str(config),
           "--step", str(step), *(["--mlflow-run", run_id] if run_id else []),
           *(["--head", str(head)] if (head / "head.json").is_file() else [])]
    rc = subprocess.run(cmd, env=evaluation_env(os.environ)).returncode
    if rc != 0:
        log.error("evaluation failed (exit %d); run it again with: %s", rc, " ".join(cmd))
    return rc
