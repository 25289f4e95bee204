"""Training engine overhead and scaling: DeepSpeed (ZeRO-2) against a plain PyTorch loop, 2 ranks against 1,
and the data stall of a real run.

    python bench/train.py --json bench/results/train.json                  # CPU preset (resnet_small, 64 px)
    python bench/train.py --device cuda --model resnet18 --size 112 --batch 64 --json bench/results/train_gpu.json

Three step-throughput measurements, each a fresh process running the engine's own `train_step` on one batch of
random clips already in memory (no data loading: the engine's side of a step), one thread per rank on CPU:

- `torch`: one process, a plain `torch.optim.AdamW` loop behind the same interface (bench/train_step.py's
  PlainEngine);
- `deepspeed`: one process, `deepspeed.initialize` with the run's ZeRO config (`configs/deepspeed/`);
- `deepspeed x2`: two ranks under torchrun (gloo on CPU, NCCL on GPUs), the same per-rank batch, negatives
  gathered across ranks.

Ratios (goals from the engine issue): `deepspeed_vs_torch` = frames/s of `deepspeed` / `torch` (>= 0.95) and
`scaling_2_vs_1` = frames/s of `deepspeed x2` / (2 x `deepspeed`) (>= 0.90). `data_stall_pct`: the mean
`perf/data_stall_pct` of a short real run (`aupretrain/train.py experiment=cpu`, 2 ranks, DALI on
the quickstart shards; skipped with --no-stall or when the shards are missing).

JSON: {"rows": [...], "ratios": {"deepspeed_vs_torch", "scaling_2_vs_1"}, "data_stall_pct"}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(a) -> None:
    """One rank: build the model and engine, time `a.reps` steps after `a.warmup`; rank 0 prints a JSON line."""
    import torch

    from aupretrain.config import load_config
    from aupretrain.engine.distributed import barrier, init_distributed
    from aupretrain.engine.step import train_step
    from aupretrain.methods import build_method
    from aupretrain.objectives import build_objective
    from bench.train_step import PlainEngine

    if a.device == "cpu":
        torch.set_num_threads(1)
    cfg = load_config([f"objective={a.objective}", f"model={a.model}", f"data.batch_size={a.batch}",
                       f"data.input_size={a.size}", *a.overrides])
    d = init_distributed() if a.engine == "deepspeed" else None
    rank = d.rank if d else 0
    obj = build_objective(cfg.objective)
    torch.manual_seed(0)
    model = build_method(cfg.objective, cfg.model, a.size)
    if a.engine == "deepspeed":
        import deepspeed

        from aupretrain.engine.optim import build_optimizer, lr_lambda
        from aupretrain.engine.components import deepspeed_config

        ds = deepspeed_config(cfg, d.world)
        opt = build_optimizer(cfg, model, int(ds["train_batch_size"]))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds)
        dev = engine.device
    else:
        dev = torch.device(a.device)
        model = model.to(dev)
        engine = PlainEngine(model, torch.optim.AdamW(model.parameters(), lr=1e-4), dev, False)
    b, t = a.batch, a.frames
    g = torch.Generator(device=dev).manual_seed(1 + rank)
    batch = {"view1": torch.randn(b, t, 3, a.size, a.size, generator=g, device=dev),
             "view2": torch.randn(b, t, 3, a.size, a.size, generator=g, device=dev),
             "identity": torch.arange(b, device=dev) + rank * b, "partner": (torch.arange(b, device=dev) + 1) % b}

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        train_step(engine, obj, [batch], rank)
    sync()
    barrier()
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        train_step(engine, obj, [batch], rank)
        sync()
        times.append(time.perf_counter() - t0)
    barrier()
    world = d.world if d else 1
    step = statistics.median(times)
    if rank == 0:
        print("RESULT " + json.dumps({"step_s": step, "ranks": world, "clip_frames_per_s": world * b * t / step}),
              flush=True)


def measure(a, engine: str, ranks: int) -> dict:
    """Run `worker` in fresh processes (torchrun for DeepSpeed) and return its result line."""
    args = ["--worker", engine, "--objective", a.objective, "--model", a.model, "--size", str(a.size), "--batch",
            str(a.batch), "--frames", str(a.frames), "--device", a.device, "--reps", str(a.reps), "--warmup",
            str(a.warmup), *a.overrides]
    me = str(Path(__file__).resolve())
    if engine == "deepspeed":
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(ranks), me, *args]
    else:
        cmd = [sys.executable, me, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1" if a.device == "cpu" else os.environ.get("OMP_NUM_THREADS", "4")}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return {"engine": engine if ranks == 1 else f"{engine} x{ranks}", **json.loads(line[len("RESULT "):])}


def data_stall(a) -> float | None:
    """Mean perf/data_stall_pct of a short real quickstart run (2 ranks, DALI), or None without shards."""
    shards = ROOT / "shards" / "synthetic"
    if not (shards / "manifest.json").exists():
        print(f"no {shards}: data stall not measured (run ./launchers/quickstart.sh once)", flush=True)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
               str(ROOT / "aupretrain" / "train.py"), "experiment=cpu", f"data.shards={shards}",
               f"train.steps={a.stall_steps}", "train.log_every=5", "train.eval_at_end=false",
               "train.online_probe.every=0", f"run.dir={run}", f"tracking.uri=sqlite:///{tmp}/m.db"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise RuntimeError(f"stall run failed:\n{r.stderr[-4000:]}")
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        stalls = [x["perf/data_stall_pct"] for x in rows if "perf/data_stall_pct" in x][1:]  # the first window warms up
        return float(statistics.mean(stalls)) if stalls else None


def _devices() -> int:
    import torch

    return torch.cuda.device_count()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=["torch", "deepspeed"], help=argparse.SUPPRESS)
    ap.add_argument("--objective", default="clp")
    ap.add_argument("--model", default="resnet_small")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="clips per rank per step")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--stall-steps", type=int, default=30)
    ap.add_argument("--no-stall", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every measurement (after --)")
    a = ap.parse_args()
    if a.worker:
        a.engine = a.worker
        worker(a)
        return
    from bench.common import report

    two = a.device == "cpu" or _devices() >= 2  # two ranks need two GPUs (one NCCL rank per device)
    if not two:
        print("one GPU: 2 ranks not measured (scaling_2_vs_1 is null)", flush=True)
    rows = [measure(a, "torch", 1), measure(a, "deepspeed", 1), *([measure(a, "deepspeed", 2)] if two else [])]
    for r in rows:
        print(r, flush=True)
    fps = {r["engine"]: r["clip_frames_per_s"] for r in rows}
    ratios = {"deepspeed_vs_torch": fps["deepspeed"] / fps["torch"],
              "scaling_2_vs_1": fps["deepspeed x2"] / (2 * fps["deepspeed"]) if two else None}
    stall = None if a.no_stall else data_stall(a)
    report(f"Engine step ({a.objective}, {a.model}, {a.size} px, {a.batch} clips x {a.frames} frames per rank, "
           f"{a.device}, 1 thread per rank on CPU)", rows, a.json,
           {"ratios": ratios, "data_stall_pct": stall, "settings": vars(a)})
    print(json.dumps({"ratios": ratios, "data_stall_pct": stall}, indent=1))


if __name__ == "__main__":
    main()
