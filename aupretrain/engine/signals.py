"""Preemption: a stop request by signal is turned into a checkpoint at the next step boundary.

SIGTERM (Kubernetes pod termination, SLURM's `--signal=TERM@<seconds>` before a time limit, a user's kill) and
SIGUSR1 set a flag; after every step the ranks agree (one all-reduce of the flag, so a signal that reached only
some ranks, or reached them in different steps, still stops all of them at the same step); the trainer then
saves a checkpoint and returns, and a relaunch with the same `run.dir` continues from it. Repeated signals
are expected (under `srun torchrun`, Slurm signals every process of the step and torchrun forwards its own copy)
and only logged; the third one is handled the usual way (the process dies), so a stuck run can still be killed.
Launchers follow up with SIGKILL after their grace period (30 s for deepspeed and torchrun).
"""
from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Installs handlers for `signals` (SIGTERM, SIGUSR1) that record a stop request (`received`: the first
    signal number; `count`: signals so far); at the `die_after`-th signal the previous handler (SIG_DFL when it was
    ignored or unknown) is restored and the signal raised again. Outside the main thread no handler is installed."""
    def __init__(self, signals=SIGNALS, die_after: int = 3):
        self.received: int | None = None
        self.count = 0
        self.die_after = die_after
        self._previous = {}
        for s in signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test harness): no handler
                pass

    def _handle(self, signum, frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count >= self.die_after:  # a run that does not stop: let the signal act as usual
            log.warning("received %s %d times: giving up on a clean stop", name, self.count)
            previous = self._previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, previous if previous not in (None, signal.SIG_IGN) else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        log.warning("received %s: stopping with a checkpoint at the end of this step", name)
        self.received = self.received or signum

    def agreed(self, device) -> bool:
        """True on every rank once any rank has received a stop signal (collective: call on all ranks)."""
        flag = torch.tensor([1.0 if self.received else 0.0], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        """Restore the signal handlers that were in place before this StopRequest."""
        for s, h in self._previous.items():
            signal.signal(s, h)
