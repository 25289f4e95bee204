"""Diagnostic for the quality issue: can the project's AUEncoder learn AUs from labels at all?

Trains `AUEncoder` + a linear AU classifier directly on decoded synthetic frames (no shards, DALI or
DeepSpeed: this isolates the model, input size, augmentation and optimiser from the pipeline), then scores
the classifier on the evaluation identities of `configs/eval/` (disjoint from the training identities).

    python bench/supervised_diag.py --json bench/results/sup_64.json --size 64 --steps 1000
    python bench/supervised_diag.py --size 112 --scale 0.8 1.0 --shift 0.05 --bright 0.2 [hydra overrides]

Rendered training corpora are kept under --corpus-root (default data/diag); decoded frames are cached
next to them (cache.npz). Figures and their commands: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import report  # noqa: E402

from aupretrain.config import load_config  # noqa: E402
from aupretrain.synth.corpus import write_corpus  # noqa: E402
from aupretrain.eval.datasets import ensure_synthetic, load_synthetic  # noqa: E402
from aupretrain.eval.probe import per_au_f1  # noqa: E402
from aupretrain.models.encoder import AUEncoder, save_encoder  # noqa: E402


def frames_of(root: Path, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Decoded frames [N, H, W, 3] uint8 and AU labels [N, A] of a corpus, cached in <root>/cache.npz."""
    cache = root / "cache.npz"
    if cache.exists():
        z = np.load(cache)
        return z["frames"], z["labels"]
    d = load_synthetic(root, threshold)
    np.savez(cache, frames=d.frames, labels=d.labels)
    return d.frames, d.labels


def augment(x: torch.Tensor, size: int, scale, shift: float, rot: float, bright: float) -> torch.Tensor:
    """x float [B, 3, H, W] in 0..255 -> [B, 3, size, size]: one random similarity warp + brightness per frame."""
    b = x.shape[0]
    s = torch.empty(b).uniform_(*scale).sqrt()  # side fraction of the crop
    ang = torch.empty(b).uniform_(-rot, rot) * np.pi / 180
    tx, ty = torch.empty(b).uniform_(-shift, shift), torch.empty(b).uniform_(-shift, shift)
    theta = torch.stack([torch.stack([s * ang.cos(), -s * ang.sin(), tx], 1),
                         torch.stack([s * ang.sin(), s * ang.cos(), ty], 1)], 1)
    if scale == (1.0, 1.0) and shift == 0 and rot == 0:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    else:
        grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if bright:
        x = x * torch.empty(b, 1, 1, 1).uniform_(1 - bright, 1 + bright) + torch.empty(b, 1, 1, 1).uniform_(-30 * bright, 30 * bright)
    return x.clamp(0, 255)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--corpus-root", default="data/diag")
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--frames", type=int, default=80)
    ap.add_argument("--size", type=int, default=64, help="model input (pixels)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64, help="frames per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--scale", type=float, nargs=2, default=[1.0, 1.0], help="crop area fraction range")
    ap.add_argument("--shift", type=float, default=0.0, help="max translation (fraction of half the side)")
    ap.add_argument("--rot", type=float, default=0.0, help="max rotation (degrees)")
    ap.add_argument("--bright", type=float, default=0.0, help="brightness/offset jitter amplitude")
    ap.add_argument("--split", choices=["validation", "test"], default="validation",
                    help="evaluation identities: validation for every tuning run; test only to report a setting "
                         "chosen on validation")
    ap.add_argument("--save-encoder", help="also write the trained encoder here (encoder.pt, for aupretrain-eval)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (model=..., model.au_grid=0, eval.*)")
    a = ap.parse_args()
    cfg = load_config(["model=resnet_small", f"eval.split={a.split}", *a.overrides])  # tune on validation; --split test only reports
    thr = float(cfg.eval.au_threshold)
    train_root = Path(a.corpus_root) / f"train-{a.identities}x{a.videos}x{a.frames}"
    if not (train_root / "corpus.json").exists():
        write_corpus(train_root, a.identities, a.videos, a.frames, seed=0)
    x_tr, y_tr = frames_of(train_root, thr)
    eval_root = ensure_synthetic(cfg.eval)
    x_ev, y_ev = frames_of(Path(eval_root), thr)
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    enc = AUEncoder(OmegaConf.to_container(cfg.model, resolve=True), a.size)
    clf = torch.nn.Linear(enc.au_dim, y_tr.shape[1])
    opt = torch.optim.AdamW([*enc.parameters(), *clf.parameters()], lr=a.lr, weight_decay=a.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.steps, pct_start=0.05)
    X, Y = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    pos = Y.mean(0)
    pos_weight = ((1 - pos) / pos.clamp(min=1e-3)).clamp(1, 10)
    g = torch.Generator().manual_seed(0)
    t0, losses = time.time(), []
    enc.train()
    for step in range(a.steps):
        idx = torch.randint(len(X), (a.batch,), generator=g)
        x = augment(X[idx].permute(0, 3, 1, 2).float(), a.size, tuple(a.scale), a.shift, a.rot, a.bright)
        loss = F.binary_cross_entropy_with_logits(clf(enc((x - enc.mean) / enc.std)["a"]), Y[idx], pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    train_s = time.time() - t0
    enc.eval()
    if a.save_encoder:
        save_encoder(enc, a.save_encoder)
    with torch.no_grad():
        probs_tr = torch.sigmoid(clf(enc.encode(X[:: max(1, len(X) // 4000)]))).numpy()
        probs_ev = torch.sigmoid(clf(enc.encode(torch.from_numpy(x_ev)))).numpy()
    f1_tr = per_au_f1(y_tr[:: max(1, len(X) // 4000)], probs_tr)
    f1_ev = per_au_f1(y_ev, probs_ev)
    rows = [{"split": a.split, "size": a.size, "steps": a.steps, "train identities": a.identities, "final train BCE": float(np.mean(losses[-50:])),
             "F1 train frames": float(f1_tr.mean()), "F1 eval identities": float(f1_ev.mean()), "train s": train_s}]
    report("Supervised AUEncoder, trained on labels, scored on held-out identities", rows, a.json,
           {"args": vars(a), "per_au_f1_eval": f1_ev.tolist(), "per_au_f1_train": f1_tr.tolist()})


if __name__ == "__main__":
    main()
