"""Training-step throughput and memory of each objective with the real model, on one device.

    python bench/train_step.py --json bench/results/train_step.json                          # CPU preset
    python bench/train_step.py --device cuda --model resnet18 --size 112 --batch 64 --bf16   # a GPU
    python bench/train_step.py --objectives clp_hog_basis --accum 2 [--gathered]     # gradient accumulation

One process, random clips [B, T, 3, S, S] already on the device (no data loading: this is the compute
side of a step), the engine's own `train_step` without DeepSpeed (a plain optimizer behind the same
interface, world size 1: nothing to gather). Reports clip frames/s (T frames per clip, two views each)
and, on CUDA, the allocator's peak memory of the step. `--accum K`: K micro-batches of `--batch` clips a step.
`--gathered`: an objective whose TCL has own-clip negatives only (`objective.cross_clip_weight=0`, e.g.
clp_hog_basis) computed through the global path as before session 51 (the same loss; the feature-cache pass
under accumulation) instead of as a local term.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class PlainEngine:
    """The slice of DeepSpeed's engine interface that `train_step` uses, over a plain torch optimizer
    (one device, one process, no accumulation), so the benchmark runs where DeepSpeed is not installed."""

    def __init__(self, module, optimizer, device, bf16: bool):
        self.module, self.optimizer, self.device, self.bf16 = module, optimizer, device, bf16

    def __call__(self, *args, **kwargs):
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.module(*args, **kwargs)

    def backward(self, loss, scale_wrt_gas=True):
        loss.float().backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def run(name: str, a) -> dict:
    import torch

    from aupretrain.config import load_config
    from aupretrain.engine.step import train_step
    from aupretrain.methods import build_method
    from aupretrain.objectives import build_objective

    cfg = load_config([f"objective={name}", f"model={a.model}"])
    obj = build_objective(cfg.objective)
    if a.gathered:
        obj.has_global = True  # the same TCL (other clips' logits -inf) through gather + feature cache
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = build_method(cfg.objective, cfg.model, a.size).to(dev)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    engine = PlainEngine(model, opt, dev, a.bf16)
    b, t = a.batch, a.frames
    g = torch.Generator(device=dev).manual_seed(1)
    batch = {"view1": torch.randn(b, t, 3, a.size, a.size, generator=g, device=dev),
             "view2": torch.randn(b, t, 3, a.size, a.size, generator=g, device=dev),
             "identity": torch.arange(b, device=dev), "partner": (torch.arange(b, device=dev) + 1) % b,
             "au": (torch.rand(b, t, int(cfg.objective.get("au_classes", 10)), generator=g, device=dev) > 0.7).float()}
    cuda = dev.type == "cuda"
    basis = getattr(model, "hog_basis", None)
    if basis is not None:  # fitted as after 100 steps of training, so the timed steps pay for the basis term
        clips = max(4, 2 * basis.k, basis.whiten // 4 + 1)  # the whitened fit needs more frames than its rank
        basis.accumulate(torch.rand(clips, 4, basis.dim, generator=g, device=dev))
        if not basis.is_fitted:
            basis.fit()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(a.warmup):
        train_step(engine, obj, [batch] * a.accum, 0)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(a.reps):
        t0 = time.perf_counter()
        train_step(engine, obj, [batch] * a.accum, 0)
        sync()
        times.append(time.perf_counter() - t0)
    # CUDA: the allocator's peak during the step; CPU: not measured (one process runs every objective, and a
    # resident-memory high-water mark cannot be reset between them; bench/loss.py measures the CPU side)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else float("nan")
    step = statistics.median(times)
    n = b * a.accum
    return {"objective": name, "model": a.model, "size": a.size, "clips": n, "accum": a.accum, "gathered": a.gathered,
            "own_clip_local": not obj.has_global and obj.name in ("tcl", "clp"), "bf16": a.bf16, "frames": t,
            "step_s": step, "clip_frames_per_s": n * t / step, "images_per_s": 2 * n * t / step,
            "peak_mib": peak, "params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objectives", nargs="+", default=["tcl", "clp", "clp_hog_basis", "simclr", "moco",
                                                            "supervised"])
    ap.add_argument("--model", default="resnet_small")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="clips per micro-batch")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per step (gradient accumulation)")
    ap.add_argument("--gathered", action="store_true", help="own-clip TCL through the global path (see above)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch

    from bench.common import report

    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    for name in a.objectives:
        rows.append(run(name, a))
        print(rows[-1], flush=True)
    tcl = next((r for r in rows if r["objective"] == "tcl"), None)
    for r in rows:
        r["cost_vs_tcl"] = r["step_s"] / tcl["step_s"] if tcl else float("nan")
    report(f"Training step per objective ({a.model}, {a.size} px, {a.batch} clips x {a.frames} frames, {a.device})",
           rows, a.json)


if __name__ == "__main__":
    main()
