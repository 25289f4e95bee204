"""The run folder of a training job: resolved the same on every rank, created and checked writable by rank 0, and
held by one job at a time.

Two jobs in one run folder (a relaunch while the first job's ranks still run — `kill -9` of torchrun's agent leaves
them running in their own sessions —, a double submission, a colleague's job) would prune each other's checkpoints
and interleave their metrics. Rank 0 holds an exclusive `flock` on `<run>/.lock` for its whole life (the kernel
releases it when the process ends, however it ends); a second job's rank 0 finds it held and the job is refused
with one line naming the holder's pid, host and start time, exit 1 (a conflict that clears, which a scheduler may
retry; not 2, a setting to fix). On a file system without locks (some FUSE or object store mounts) the job warns
and goes on unguarded.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from .. import locks
from ..errors import UsageError
from ..locks import try_lock
from .distributed import DistInfo, barrier, broadcast_object

log = logging.getLogger("aupretrain.train")

LOCK = ".lock"
BUSY = "busy:"  # marks `_claim`'s message for a held lock: a conflict that clears, not a setting to fix


def _claim(path: Path) -> str | None:
    """Rank 0: create `path`, check a file can be written there and take its lock; the one-line error, or None.
    EnvironmentFault-like conditions (a read-only or full file system) are errors of the setting here: the job has
    not started and nothing can be written."""
    shown = f"run.dir={path}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{shown}: a file is in the way (run.dir must be a folder)"
    except NotADirectoryError:
        return f"{shown}: a part of the path is a file, not a folder"
    except OSError as e:
        return f"{shown}: cannot create the run folder ({e.strerror or e})"
    probe = path / f".write-check-{os.getpid()}"
    try:  # the folder must take files (checkpoints, the record), whoever made the lock file
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        return (f"{shown}: the run folder cannot be written ({e.strerror or e}"
                f"{': a read-only file system' if e.errno == errno.EROFS else ''}); give a writable run.dir")
    holder = try_lock(path / LOCK, shown)
    if holder is not None:
        return (f"{BUSY}{shown} is in use by another job ({holder}); two jobs in one run folder would prune each "
                f"other's checkpoints — run the same command again once it has ended (or stop it), or give another "
                f"run.dir (if no job runs there — an NFS lock a crashed client left — remove {path / LOCK})")
    return None


def release() -> None:
    """Let go of the run folder's lock this process holds (the end of a training job; a process that ends lets go
    by itself)."""
    locks.release()


def resolve_run_dir(cfg: DictConfig, d: DistInfo) -> Path:
    """The run folder, absolute, the same on every rank: `run.dir`, else `<run.root>/<run.name>-<YYYYmmdd-HHMMSS>`
    (rank 0's local time, broadcast). Rank 0 creates it, checks it can be written and takes its lock (`_claim`);
    collective.

    Raises (on every rank alike):
        UsageError: a file in the way, a folder that cannot be created or written (a read-only file system, no
            permission) — exit 2.
        EnvironmentFault: a run folder another job holds — exit 1: it clears when that job ends (or, on NFS, when
            a dead client's lock lease expires), so a scheduler's retry (a Kubernetes Job's backoff) may succeed.
    """
    if cfg.run.dir:
        path = Path(cfg.run.dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S") if d.is_main else None
        path = Path(cfg.run.root) / f"{cfg.run.name}-{broadcast_object(stamp)}"
    path = Path(os.path.abspath(path))
    error = broadcast_object(_claim(path) if d.is_main else None)
    if error and error.startswith(BUSY):  # exit 1, not 2: a scheduler retries it (the holder ends, a lease expires)
        from ..data.storage import EnvironmentFault

        fault = EnvironmentFault(error[len(BUSY):])
        fault.raised_on_rank0 = True
        raise fault
    if error:
        raise UsageError(error)
    barrier()
    return path.resolve()
