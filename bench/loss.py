"""Time and memory of each objective's loss (forward + backward) against batch size and world size.

    python bench/loss.py --json bench/results/loss.json

Each configuration runs in fresh processes (one per rank, gloo on 127.0.0.1): random unit-norm embeddings
z1, z2 [B, T, d] with gradient, keys gathered across ranks with gradient (the engine's gather_with_grad),
the objective's loss and backward, each objective with its defaults from configs/objective/. CLP adds the
CIR terms on tensors of the decoder's output shape; MoCo scores against a full queue.
- measured: 1 and 2 real ranks; median step time and rank 0's peak memory above its state before the
  first step (resident memory on the CPU, the CUDA allocator's peak with --device cuda);
- emulated: one process computing exactly what one rank of a world of W computes (its anchors against W
  ranks' keys, gradients into all of them), without the communication;
- analytic: the size of the logit matrices a rank holds. Local loss (this rank's anchors x all keys) grows
  linearly with the world size; a global loss (every rank scoring the whole batch) would grow quadratically.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OBJECTIVES = ["tcl", "simclr", "clp", "moco"]  # configured defaults from configs/objective/<name>.yaml


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(a) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from aupretrain.config import load_config
    from aupretrain.engine.distributed import gather_with_grad
    from aupretrain.objectives import build_objective

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // a.world))
    if a.world > 1:
        dist.init_process_group("gloo", rank=a.rank, world_size=a.world)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    cfg = load_config([f"objective={a.objective}"]).objective
    obj = build_objective(cfg)
    queue = int(cfg.get("queue_size", 0))
    g = torch.Generator(device=dev).manual_seed(a.rank)
    b, t, d, s, f = a.batch, a.frames, a.dim, a.size, 2
    randn = lambda *shape: torch.randn(*shape, generator=g, device=dev)  # noqa: E731

    def inputs():
        z1 = F.normalize(randn(b, t, d), dim=-1).requires_grad_()
        z2 = F.normalize(randn(b, t, d), dim=-1).requires_grad_()
        out = {"z1": z1, "z2": z2}
        if a.objective == "moco":
            out |= {"k1": z2.detach(), "k2": z1.detach(), "queue": F.normalize(randn(queue, d), dim=-1)}
        if a.objective == "clp":
            out["cir"] = {"rec_self": randn(b, f, 3, s, s).requires_grad_(), "target_self": randn(b, f, 3, s, s),
                          "rec_cycle": randn(b, f, 3, s, s).requires_grad_(), "target_cycle": randn(b, f, 3, s, s),
                          "a_cross": randn(b, f, 256).requires_grad_(), "a_target": randn(b, f, 256),
                          "p_cross": randn(b, f, 256).requires_grad_(), "p_target": randn(b, f, 256),
                          "valid": torch.ones(b, dtype=torch.bool, device=dev)}
        return out

    def gather(keys):
        if a.emulate <= 1:
            return gather_with_grad(keys)
        # One process standing in for a rank of a world of `emulate`: the other ranks' keys arrive as the
        # all-gather would deliver them (and receive gradients), without the communication.
        others = F.normalize(randn((a.emulate - 1) * keys.shape[0], *keys.shape[1:]), dim=-1).requires_grad_()
        return torch.cat([keys, others])

    def step():
        loss, _ = obj(inputs(), {}, gather, a.rank * b)
        loss.backward()

    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = rss_mib()
    times = []
    for i in range(a.warmup + a.reps):
        if a.world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    if cuda:
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    if a.rank == 0:
        print(json.dumps({"step_ms": 1000 * statistics.median(times), "peak_mib": peak}))
    if a.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def measure(objective: str, batch: int, world: int, a, emulate: int = 0) -> dict:
    from tests.conftest import free_port

    # glibc: serve every block over 64 KiB by mmap and give it back when freed, so the resident-memory peak
    # follows the live tensors instead of the allocator's cached arenas
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONWARNINGS="ignore",
               MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0", MALLOC_ARENA_MAX="2")
    args = ["--objective", objective, "--batch", str(batch), "--world", str(world), "--frames", str(a.frames),
            "--dim", str(a.dim), "--size", str(a.size), "--reps", str(a.reps), "--warmup", str(a.warmup),
            "--device", a.device, "--emulate", str(emulate)]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--rank", str(r), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for r in range(world)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        if p.returncode != 0:
            raise RuntimeError(f"{objective} B={batch} world={world} failed:\n{err[-3000:]}")
    return json.loads(outs[0][0].strip().splitlines()[-1])


def logit_mib(objective: str, batch: int, frames: int, world: int, local: bool = True, queue: int = 0) -> float:
    """Size of the similarity matrices one rank holds (fp32; both directions for symmetric objectives)."""
    anchors = batch * frames * (world if not local else 1)
    if objective == "moco":  # queue negatives: independent of the world size; no global term to compare with
        return 2 * anchors * (1 + queue) * 4 / 2**20 if local else float("nan")
    return 2 * anchors * (world * batch * 2 * frames) * 4 / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--objective", default="tcl", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--objectives", nargs="+", default=OBJECTIVES)
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128], help="clips per rank")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2], help="world sizes to measure")
    ap.add_argument("--emulated-worlds", type=int, nargs="+", default=[4, 8],
                    help="world sizes emulated by one process (the rank's tensors, no communication)")
    ap.add_argument("--analytic-worlds", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--device", default="cpu", help="cpu | cuda (memory: RSS on the CPU, allocator peak on CUDA)")
    ap.add_argument("--emulate", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--size", type=int, default=112, help="CLP: decoder output size")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.worker:
        return worker(a)
    from aupretrain.config import load_config
    from bench.common import report

    queue = int(load_config(["objective=moco"]).objective.queue_size)
    rows = []

    def row(objective, batch, world, kind, m=None):
        rows.append({"objective": objective, "clips/rank": batch, "world": world, "kind": kind,
                     "step_ms": m["step_ms"] if m else float("nan"), "peak_mib": m["peak_mib"] if m else float("nan"),
                     "logits_mib/rank": logit_mib(objective, batch, a.frames, world, queue=queue),
                     "global_loss_logits_mib": logit_mib(objective, batch, a.frames, world, local=False)})
        if m:
            print(rows[-1], flush=True)

    for objective in a.objectives:
        for batch in a.batches:
            for world in a.worlds:
                row(objective, batch, world, "measured", measure(objective, batch, world, a))
            for world in a.emulated_worlds:
                row(objective, batch, world, "emulated", measure(objective, batch, 1, a, emulate=world))
            for world in a.analytic_worlds:
                row(objective, batch, world, "analytic")
    report(f"Objective loss fwd+bwd per rank (T={a.frames}, d={a.dim}; {a.device})", rows, a.json,
           {"frames": a.frames, "dim": a.dim, "size": a.size, "device": a.device})


if __name__ == "__main__":
    main()
