"""A real one-host Slurm cluster for tests: Debian's `slurm-wlm` 22.05 and `munge`, started as root in a
temporary folder (its own munge socket, ports, state and logs), stopped by the pids in its pid files.

    with SlurmCluster(tmp_path / "slurm") as c:
        job = c.sbatch(["launchers/slurm/train.sbatch"], env)
        c.wait(job, {"COMPLETED"})

`ensure_installed()` installs the packages with apt when they are missing (CI runs as root with apt).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
BINARIES = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "squeue", "scancel")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b) and not Path("/usr/sbin", b).exists()]


def ensure_installed() -> str | None:
    """Install slurm-wlm and munge when missing. Returns None when ready, else why not (no root, no apt)."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0:
        return f"Slurm binaries missing ({', '.join(missing_binaries())}) and not root: cannot apt-get install"
    if not shutil.which("apt-get"):
        return "Slurm binaries missing and no apt-get on this machine"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:  # stale package lists: update once
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(cmd, env=env, capture_output=True, check=True)
    return None if not missing_binaries() else f"still missing after apt-get: {missing_binaries()}"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """slurmctld + slurmd on this host, one node with `cpus` CPUs, one default partition, requeue allowed."""

    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int | None = None, cred_expire: int = 10):
        self.root = Path(root)
        # cred_expire (s) is also how long a requeued job waits before it may start again (Slurm's default 120)
        self.cred_expire = cred_expire
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb or 4096
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._pidfiles: list[Path] = []

    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        r = self.root
        for d in ("state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        # munged runs as user munge and wants its socket folder reachable by all: not under pytest's 0700 tmp
        self.munge_dir = m = Path(tempfile.mkdtemp(prefix="aupretrain-munge-"))
        os.chmod(m, 0o755)
        shutil.chown(m, "munge", "munge")
        sock, mpid = m / "munge.socket", m / "munged.pid"
        subprocess.run([_sbin("runuser"), "-u", "munge", "--", _sbin("munged"), f"--socket={sock}",
                        f"--pid-file={mpid}", f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"],
                       check=True)
        self._pidfiles.append(mpid)
        host = socket.gethostname().split(".")[0]
        ctld_port, d_port = _free_ports(2)
        self.conf.write_text(f"""ClusterName=aupretrain-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock},cred_expire={self.cred_expire}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobRequeue=1
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
MinJobAge=600
KillWait=30
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        subprocess.run([_sbin("slurmctld"), "-f", str(self.conf)], env=self.env, check=True)
        self._pidfiles.append(r / "slurmctld.pid")
        subprocess.run([_sbin("slurmd"), "-f", str(self.conf)], env=self.env, check=True)
        self._pidfiles.append(r / "slurmd.pid")
        deadline = time.time() + 60
        while time.time() < deadline:
            out = self.run(["sinfo", "-h", "-o", "%t"], check=False).stdout.strip()
            if out in ("idle", "mix", "alloc"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"Slurm node not idle after 60 s (sinfo: {out!r}); logs in {r / 'log'}")

    def run(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True,
                              check=check, **kw)

    def sbatch(self, args: list[str], env: dict | None = None, cwd: str | Path | None = None) -> int:
        out = self.run(["sbatch", "--parsable", *args], env=env or {}, cwd=cwd).stdout.strip()
        return int(out.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)]).stdout
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def wait(self, job_id: int, states: set[str], timeout: float) -> dict[str, str]:
        deadline = time.time() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.time() > deadline:
                raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: {info}")
            time.sleep(1)

    def stop(self) -> None:
        for pidfile in reversed(self._pidfiles):
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                continue
        for pidfile in self._pidfiles:  # wait for each to go (slurmd kills its jobs' steps first)
            try:
                pid = int(pidfile.read_text().split()[0])
            except (OSError, ValueError):
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)
        if getattr(self, "munge_dir", None):
            shutil.rmtree(self.munge_dir, ignore_errors=True)
