"""The training loop's metrics: throughput and data-stall accounting, skipped samples, logging every N steps."""
from __future__ import annotations

import logging
import time

from ..data.integrity import BAD_JPEG, BAD_JSON, FRAME_SIZE

log = logging.getLogger("aupretrain.train")


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


RUNTIME_DAMAGE = (BAD_JPEG, BAD_JSON, FRAME_SIZE)  # found by a rank while reading (the same keys on all)


def skipped_metrics(loader, found: dict[str, float] | None = None) -> dict[str, float]:
    """`data/skipped` and `data/skipped/<reason>`: samples left out at start (rank 0's check) plus the damaged
    samples every rank found while reading (`found`, summed over ranks)."""
    out = {f"data/skipped/{r}": float(n) for r, n in loader.skipped.items()}
    for r, n in (found or {}).items():
        out[f"data/skipped/{r}"] = out.get(f"data/skipped/{r}", 0.0) + round(n)
    out["data/skipped"] = sum(out.values())
    return out


class StepMetrics:
    """The loop's metrics component: times every step, and every `train.log_every` steps (and at `end`) averages
    the loss and its terms over ranks (collective), adds throughput, data stall, skipped samples, learning rate
    and data epoch, and sends them to the tracker (`<run>/metrics.jsonl` and MLflow); a progress bar on rank 0
    (log lines instead when there is no terminal). `history`: the mean `train/loss` of each logged step."""

    def __init__(self, cfg, tracker, loader, world: int, is_main: bool, start: int, steps: int):
        from tqdm import tqdm

        self.tracker, self.loader, self.world, self.is_main, self.steps = tracker, loader, world, is_main, steps
        self.every = int(cfg.train.log_every)
        self.frames_per_step = (int(cfg.deepspeed.get("gradient_accumulation_steps", 1)) * int(cfg.data.batch_size)
                                * loader.clip_len)
        self.timer = StepTimer()
        self.history: list[float] = []
        self.bar = tqdm(total=steps, initial=start, desc="train", disable=not is_main or None)

    def data_wait(self, seconds: float) -> None:
        """Time this step spent waiting for its batches."""
        self.timer.data_wait(seconds)

    def step(self, n: int, end: int, loss, parts: dict, lr: float) -> None:
        """Step `n` (1-based) is done with `loss` (a scalar tensor) and `parts` (named scalar tensors); logs when
        due. Collective on logging steps (every rank calls it every step)."""
        import torch

        from .distributed import mean_across_ranks

        self.timer.step(self.frames_per_step)
        self.bar.update(1)
        if n % self.every and n != end:
            return
        m = mean_across_ranks({"train/loss": loss.detach(), **{f"train/{k}": v for k, v in parts.items()},
                               **{f"found/{r}": torch.tensor(float(self.loader.found_damaged.get(r, 0)))
                                  for r in RUNTIME_DAMAGE}})
        m.update(skipped_metrics(self.loader, {r: m.pop(f"found/{r}") * self.world for r in RUNTIME_DAMAGE}))
        m.update(self.timer.summary(self.world))
        m["train/lr"] = lr
        m["data/epoch"] = self.loader.epoch
        self.history.append(m["train/loss"])
        self.tracker.log_metrics(m, step=n)
        self.bar.set_postfix(loss=f"{m['train/loss']:.3f}", fps=f"{m['perf/frames_per_s']:.0f}")
        if self.is_main and self.bar.disable:  # no terminal (batch jobs, CI): progress as log lines
            terms = " ".join(f"{k[6:]} {v:.3f}" for k, v in m.items() if k.startswith("train/") and k != "train/lr")
            log.info("step %d/%d %s lr %.2e %.0f frames/s stall %.1f%%", n, self.steps, terms, m["train/lr"],
                     m["perf/frames_per_s"], m["perf/data_stall_pct"])

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()
