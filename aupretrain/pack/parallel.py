"""Ordered, lazy map over worker processes (or in-process when workers <= 1) with a bounded number of
items in flight, so a million inputs never become a million pending futures; the pool is always shut down.

A worker that dies (killed for memory, a crash in a native library) breaks the whole pool. With `on_crash`,
the items that were in flight are then run again one at a time, each alone in a fresh process: the one that
kills its process alone becomes `on_crash(item, error)`, the others their normal results, and the map goes on.
Workers end with their parent (`_watch_parent`), and an interrupted map terminates them (`_stop`).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _watch_parent() -> None:
    """Worker initializer: SIGTERM back to its default (the packer's own handler is for the main process), and a
    daemon thread that ends the worker within a second of its parent's death — a packer killed with SIGKILL (the
    OOM killer, a scheduler's last word) never shuts its pool down, and its workers would run on as orphans. The
    parent is the process that started this worker, read here: the packer under `fork`, the server process under
    `forkserver` (the default from Python 3.14) or `spawn`'s, which ends with the packer."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, initializer=_watch_parent)


def _stop(pool: ProcessPoolExecutor) -> None:
    """End a pool now (an interrupt, an error of the consumer): queued items cancelled, workers terminated instead
    of finishing the videos they hold. `ProcessPoolExecutor` has no public way to end its workers before Python
    3.14 (`terminate_workers`), hence its `_processes` table, read defensively."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)


def _alone(fn: Callable[[T], R], item: T, on_crash: Callable[[T, BaseException], R]) -> R:
    pool = _pool(1)
    try:
        return pool.submit(fn, item).result()
    except BrokenProcessPool as e:
        return on_crash(item, e)
    except BaseException:  # an interrupt while the item runs: its worker ends now, not when the item is done
        _stop(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None,
                 on_crash: Callable[[T, BaseException], R] | None = None) -> Iterator[R]:
    """fn over items in order; at most `window` (default 4 x workers) items submitted ahead of the consumer."""
    if workers <= 1:
        yield from map(fn, items)
        return
    window = window or 4 * workers
    source = iter(items)
    pool = _pool(workers)
    pending: deque = deque()  # (item, future) in input order
    try:
        while True:
            for x in source:
                pending.append((x, pool.submit(fn, x)))
                if len(pending) >= window:
                    break
            if not pending:
                return
            x, fut = pending.popleft()
            try:
                yield fut.result()
            except BrokenProcessPool:
                if on_crash is None:
                    raise
                pool.shutdown(wait=True, cancel_futures=True)
                retry = [x, *(y for y, _ in pending)]
                pending.clear()
                for y in retry:  # in order; each alone, so a crash names its own input
                    yield _alone(fn, y, on_crash)
                pool = _pool(workers)
    except BaseException:  # KeyboardInterrupt, the consumer's error or its giving up (GeneratorExit)
        _stop(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
