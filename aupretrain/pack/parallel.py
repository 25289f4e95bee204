"""Ordered, lazy map over worker processes (or in-process when workers <= 1) with a bounded number of
items in flight, so a million inputs never become a million pending futures; the pool is always shut down.

A worker that dies (killed for memory, a crash in a native library) breaks the whole pool. With `on_crash`,
the items that were in flight are then run again one at a time, each alone in a fresh process: the one that
kills its process alone becomes `on_crash(item, error)`, the others their normal results, and the map goes on.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _alone(fn: Callable[[T], R], item: T, on_crash: Callable[[T, BaseException], R]) -> R:
    with ProcessPoolExecutor(1) as pool:
        try:
            return pool.submit(fn, item).result()
        except BrokenProcessPool as e:
            return on_crash(item, e)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None,
                 on_crash: Callable[[T, BaseException], R] | None = None) -> Iterator[R]:
    """fn over items in order; at most `window` (default 4 x workers) items submitted ahead of the consumer."""
    if workers <= 1:
        yield from map(fn, items)
        return
    window = window or 4 * workers
    source = iter(items)
    pool = ProcessPoolExecutor(workers)
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
                pool = ProcessPoolExecutor(workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
