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
import socket
import time
from pathlib import Path

from omegaconf import DictConfig

from ..errors import UsageError
from .distributed import DistInfo, barrier, broadcast_object

log = logging.getLogger("aupretrain.train")

LOCK = ".lock"
BUSY = "busy:"  # marks `_claim`'s message for a held lock: a conflict that clears, not a setting to fix
_held: list = []  # rank 0's open lock file: kept open (and locked) until the process ends


def _claim(path: Path) -> str | None:
    """Rank 0: create `path`, check a file can be written there and take its lock; the one-line error, or None.
    EnvironmentFault-like conditions (a read-only or full file system) are errors of the setting here: the job has
    not started and nothing can be written."""
    import fcntl

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
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o664)
    except PermissionError:  # a colleague's lock file in a shared folder: locked read-only, holder not written
        fd = os.open(path / LOCK, os.O_RDONLY)
    f = os.fdopen(fd, "r+" if os.access(path / LOCK, os.W_OK) else "r", encoding="utf-8", errors="replace")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = " ".join(f.read(300).split()) or "another process"
        f.close()
        return (f"{BUSY}{shown} is in use by another job ({holder}); two jobs in one run folder would prune each "
                f"other's checkpoints — run the same command again once it has ended (or stop it), or give another "
                f"run.dir (if no job runs there — an NFS lock a crashed client left — remove {path / LOCK})")
    except OSError as e:  # no lock support on this file system: unguarded, said once
        log.warning("%s: file locks are not supported here (%s); nothing stops a second job from using this run "
                    "folder at the same time", shown, e.strerror or e)
    if f.writable():
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on host {socket.gethostname()} since "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            f.flush()
        except OSError:  # the holder's line is a courtesy; the lock is what guards
            pass
    _held.append(f)
    return None


def release() -> None:
    """Let go of the run folder's lock this process holds (the end of a training job; a process that ends lets go
    by itself)."""
    while _held:
        _held.pop().close()


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker, a pack worker): close the inherited lock file without unlocking
    (the lock belongs to the parent's open file), so a child that outlives a killed rank 0 does not hold it."""
    while _held:
        try:
            _held.pop().close()  # the child's copy of the descriptor; flock holds while the parent's is open
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_in_child)


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
