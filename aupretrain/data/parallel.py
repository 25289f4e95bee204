"""Ordered, lazy map over worker processes (or in-process when workers <= 1) with a bounded number of
items in flight, so a million inputs never become a million pending futures; the pool is always shut down."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None) -> Iterator[R]:
    """fn over items in order; at most `window` (default 4 x workers) items submitted ahead of the consumer."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ProcessPoolExecutor(workers)
    pending: deque = deque()
    try:
        for x in items:
            pending.append(pool.submit(fn, x))
            if len(pending) >= (window or 4 * workers):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
