"""How many intra-op CPU threads a process of this project gives torch (the trainer's ranks, the evaluation)."""
from __future__ import annotations

import os


def cpu_threads(setting: int | None = None, local_ranks: int = 1) -> int:
    """Threads for one process: `setting` when given (`train.torch_threads`, `aupretrain-eval --threads`), else
    $OMP_NUM_THREADS (what Slurm's --cpus-per-task launchers export) — except the 1 torchrun puts there itself when
    it is unset and it starts several ranks —, else the CPUs this process may run on (its affinity: a Slurm CPU
    allocation, `taskset`; not the machine's core count) shared among the `local_ranks` processes on this host.
    Always >= 1. (PyTorch's own default is the machine's core count, which oversubscribes a CPU allocation: PyTorch
    docs, "CPU threading and TorchScript inference".)"""
    if setting:
        return int(setting)
    omp = os.environ.get("OMP_NUM_THREADS", "")
    torchrun_default = omp == "1" and "TORCHELASTIC_RUN_ID" in os.environ and local_ranks > 1
    if omp.isdigit() and int(omp) > 0 and not torchrun_default:
        return int(omp)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, local_ranks))


__all__ = ["cpu_threads"]
