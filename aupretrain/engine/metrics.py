"""Throughput and data-stall accounting for the training loop."""
from __future__ import annotations

import time


class StepTimer:
    """Accumulates wall time, time spent waiting for data, and frames over a logging window."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        """Start a new window now: wall clock restarted, data wait, frames and steps set to 0."""
        self.t0 = time.perf_counter()
        self.data_s = 0.0
        self.frames = 0
        self.steps = 0

    def data_wait(self, seconds: float) -> None:
        """Add `seconds` spent waiting for a batch to this window."""
        self.data_s += seconds

    def step(self, frames: int) -> None:
        """Count one finished step of `frames` frames (this rank's)."""
        self.frames += frames
        self.steps += 1

    def summary(self, world: int) -> dict[str, float]:
        """The window's perf metrics, then `reset`: seconds per step, frames/s over all `world` ranks (this rank's
        frames x world) and the percentage of wall time spent waiting for data."""
        wall = max(time.perf_counter() - self.t0, 1e-9)
        out = {"perf/step_s": wall / max(self.steps, 1),
               "perf/frames_per_s": self.frames * world / wall,
               "perf/data_stall_pct": 100.0 * self.data_s / wall}
        self.reset()
        return out
