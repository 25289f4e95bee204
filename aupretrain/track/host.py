"""Facts about the hosts and devices a run used, for MLflow (`track/tracker.py`): the tags that let runs be
compared weeks later (versions, git commit, world size, hosts, devices) and one sample of system use under MLflow's
system-metric names."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from omegaconf import DictConfig


def device_description() -> str:
    """This process's device, e.g. "NVIDIA H200 (139.8 GiB)" or "cpu (2 cores)"."""
    import torch

    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        p = torch.cuda.get_device_properties(i)
        return f"{p.name} ({p.total_memory / 2 ** 30:.1f} GiB)"
    return f"cpu ({os.cpu_count()} cores)"


def run_tags(cfg: DictConfig, world_size: int, hosts: list[str] | None = None,
             devices: list[str] | None = None) -> dict[str, str]:
    """Tags that let runs be compared weeks later: versions, git commit, world size, hosts and devices (one
    entry per rank, gathered by the caller; counted, e.g. "2 x cpu (2 cores)"), objective."""
    import collections as _c
    import importlib.metadata as md
    import subprocess

    hosts = hosts or [socket.gethostname()]
    devices = devices or [device_description()]
    tags = {"objective": str(cfg.objective.name), "world_size": str(world_size), "host": hosts[0],
            "hosts": ",".join(dict.fromkeys(hosts)), "nodes": str(len(set(hosts))),
            "devices": "; ".join(f"{n} x {d}" for d, n in _c.Counter(devices).items())}
    for pkg in ("torch", "deepspeed", "nvidia-dali-cuda120", "mlflow", "aupretrain"):
        try:
            tags[f"version.{pkg}"] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            tags["mlflow.source.git.commit"] = sha.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {**tags, **{str(k): str(v) for k, v in cfg.tracking.tags.items()}}


def system_metrics(path: str | Path | None = None) -> dict[str, float]:
    """One sample of host and device use under MLflow's system-metric names (psutil; GPUs through torch.cuda:
    memory from `mem_get_info`, utilisation when NVML is available). `path`: the disk whose use is reported."""
    import psutil
    import torch

    vm = psutil.virtual_memory()
    m = {"system/cpu_utilization_percentage": psutil.cpu_percent(),
         "system/system_memory_usage_megabytes": (vm.total - vm.available) / 2 ** 20,
         "system/system_memory_usage_percentage": vm.percent,
         "system/process_rss_megabytes": psutil.Process().memory_info().rss / 2 ** 20}
    try:
        du = psutil.disk_usage(str(path or "/"))
        m["system/disk_usage_megabytes"], m["system/disk_usage_percentage"] = du.used / 2 ** 20, du.percent
    except OSError:
        pass
    net = psutil.net_io_counters()
    if net is not None:
        m["system/network_receive_megabytes"] = net.bytes_recv / 2 ** 20
        m["system/network_transmit_megabytes"] = net.bytes_sent / 2 ** 20
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            m[f"system/gpu_{i}_memory_usage_megabytes"] = (total - free) / 2 ** 20
            m[f"system/gpu_{i}_memory_usage_percentage"] = 100.0 * (total - free) / total
            try:
                m[f"system/gpu_{i}_utilization_percentage"] = float(torch.cuda.utilization(i))
            except Exception:  # noqa: BLE001 - no NVML
                pass
    return m


__all__ = ["device_description", "run_tags", "system_metrics"]
