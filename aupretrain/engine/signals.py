"""Preemption: a stop request by signal is turned into a checkpoint at the next step boundary.

SIGTERM (Kubernetes pod termination, SLURM's `--signal=TERM@<seconds>` before a time limit, a user's kill) and
SIGUSR1 set a flag; after every step the ranks agree (one all-reduce of the flag, so a signal that reached only
some ranks, or reached them in different steps, still stops all of them at the same step); the trainer then
saves a checkpoint and returns, and a relaunch with the same `run.dir` continues from it. Repeated signals
are expected (under `srun torchrun`, Slurm signals every process of the step and torchrun forwards its own copy)
and only logged; the third one is handled the usual way (the process dies), so a stuck run can still be killed.
Launchers follow up with SIGKILL after their grace period (30 s for deepspeed and torchrun). SIGINT (Ctrl-C, which a
terminal sends to the whole process group) is a stop request too.

DeepSpeed's local launcher (`deepspeed ... train.py`: the `deepspeed` runner starts `deepspeed.launcher.launch`,
which starts the ranks) forwards no signal when only the runner's pid is signalled: the runner dies and the ranks
train on, orphaned (DeepSpeed installs its handler in pdsh mode only). Each rank of such a launch therefore watches
the runner (`LauncherWatch`) and, once it is gone, stops as on SIGTERM: a checkpoint at the next agreed step.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    """Installs handlers for `signals` (SIGTERM, SIGUSR1) that record a stop request (`received`: the first
    signal number; `count`: signals so far); at the `die_after`-th signal the previous handler (SIG_DFL when it was
    ignored or unknown) is restored and the signal raised again. Outside the main thread no handler is installed."""
    def __init__(self, signals=SIGNALS, die_after: int = 3, watch_every_s: float = 2.0):
        self.received: int | None = None
        self.count = 0
        self.die_after = die_after
        self._previous = {}
        self._watch = LauncherWatch.start(self, watch_every_s)
        for s in signals:
            try:
                if s == signal.SIGINT and signal.getsignal(s) == signal.SIG_IGN:
                    continue  # started in the background by a non-interactive shell: a terminal's Ctrl-C is not ours
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
        """Restore the signal handlers that were in place before this StopRequest; stop watching the launcher."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}  # closing twice restores nothing twice
        if self._watch is not None:
            self._watch.stop.set()


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the field after the state


def deepspeed_runner() -> tuple[int, bytes] | None:
    """(pid, cmdline) of the `deepspeed` runner above this process when DeepSpeed's local launcher started it
    (parent: `deepspeed.launcher.launch`, grandparent: the runner on this host); None otherwise (torchrun, Slurm,
    a plain `python`, pdsh's remote launches, or no /proc)."""
    try:
        parent = os.getppid()
        if b"deepspeed.launcher.launch" not in _cmdline(parent):
            return None
        runner = _parent_of(parent)
        cmd = _cmdline(runner)
    except (OSError, ValueError, IndexError):
        return None
    return (runner, cmd) if runner > 1 and b"deepspeed" in cmd and b"launcher.launch" not in cmd else None


class LauncherWatch:
    """A daemon thread that polls, every `every_s` seconds, whether the `deepspeed` runner that started this rank is
    still there (same pid, same command line); once it is gone it records a stop request on `stop` as SIGTERM would
    (logged once). Only started under DeepSpeed's local launcher (`deepspeed_runner`)."""

    def __init__(self, request: "StopRequest", runner: tuple[int, bytes], every_s: float):
        self.request, (self.pid, self.cmd), self.every_s = request, runner, every_s
        self.stop = threading.Event()
        threading.Thread(target=self._run, name="launcher-watch", daemon=True).start()

    @classmethod
    def start(cls, request: "StopRequest", every_s: float) -> "LauncherWatch | None":
        runner = deepspeed_runner() if every_s > 0 else None
        return cls(request, runner, every_s) if runner else None

    def _run(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                alive = _cmdline(self.pid) == self.cmd  # a reaped pid reads no file; a zombie reads b""
            except OSError:
                alive = False
            if not alive:
                log.warning("the deepspeed launcher (pid %d) is gone, its ranks left running: stopping with a "
                            "checkpoint at the end of this step, as on SIGTERM", self.pid)
                self.request.received = self.request.received or signal.SIGTERM
                return
