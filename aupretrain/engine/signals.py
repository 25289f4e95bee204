"""Preemption: a stop request by signal is turned into a checkpoint at the next step boundary.

SIGTERM (Kubernetes pod termination, SLURM's `--signal=TERM@<seconds>` before a time limit, a user's kill) and
SIGUSR1 set a flag; after every step the ranks agree (one all-reduce of the flag, so a signal that reached only
some ranks, or reached them in different steps, still stops all of them at the same step); the trainer then
saves a checkpoint and returns, and a relaunch with the same `run.dir` continues from it. A second signal of
the same kind is handled the usual way (the process dies), so a stuck run can still be killed.
"""
from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self, signals=SIGNALS):
        self.received: int | None = None
        self._previous = {}
        for s in signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test harness): no handler
                pass

    def _handle(self, signum, frame) -> None:
        log.warning("received %s: stopping with a checkpoint at the end of this step", signal.Signals(signum).name)
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second signal acts as usual

    def agreed(self, device) -> bool:
        """True on every rank once any rank has received a stop signal (collective: call on all ranks)."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
