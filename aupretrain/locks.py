"""Exclusive locks on folders one process at a time may write (a training run folder, a packer's work folder):
an `flock` on a lock file held for the holder's whole life — the kernel releases it when the process ends, however
it ends — with the holder's pid, host and start time written in the file for the one who is refused."""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)
_held: dict[str, IO] = {}  # this process's open lock files by path: kept open (and locked) until released


def try_lock(path: Path, what: str) -> str | None:
    """Take an exclusive, non-blocking `flock` on the file `path` (created 0664; a colleague's read-only lock file is
    locked through a read-only descriptor) and write "pid P on host H since T" into it; the lock holds until
    `release()` or the process ends. Returns None when taken, or the holder's line when another process holds it.
    On a file system without locks (some FUSE or object-store mounts) it warns once, naming `what`, and returns None
    (unguarded).

    Raises:
        OSError: the lock file cannot be created or opened.
    """
    import fcntl

    release(path)  # taken again by this process (its own open file would be refused as another's)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
    except PermissionError:  # a colleague's lock file in a shared folder: locked read-only, holder not written
        fd = os.open(path, os.O_RDONLY)
    f = os.fdopen(fd, "r+" if os.access(path, os.W_OK) else "r", encoding="utf-8", errors="replace")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = " ".join(f.read(300).split()) or "another process"
        f.close()
        return holder
    except OSError as e:  # no lock support on this file system: unguarded, said once
        log.warning("%s: file locks are not supported here (%s); nothing stops a second process from using it at "
                    "the same time", what, e.strerror or e)
    if f.writable():
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on host {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            f.flush()
        except OSError:  # the holder's line is a courtesy; the lock is what guards
            pass
    _held[str(path)] = f
    return None


def release(path: Path | None = None) -> None:
    """Let go of the lock on `path` this process holds (None: of every lock it holds; a process that ends lets go
    by itself)."""
    for key in [str(path)] if path is not None else list(_held):
        f = _held.pop(key, None)
        if f is not None:
            f.close()


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker, a pack worker): close the inherited lock files without unlocking
    (the lock belongs to the parent's open file), so a child that outlives a killed parent does not hold them."""
    while _held:
        try:
            _held.popitem()[1].close()  # the child's copy of the descriptor; flock holds while the parent's is open
        except OSError:
            pass


os.register_at_fork(after_in_child=_forget_in_child)
