"""Room to learn: identity-disjoint linear AU probes on the synthetic eval corpus with simple features.

    python bench/quality.py --json bench/results/quality.json [hydra overrides of eval.*]
Rows: always-positive, raw pixels, HOG, ground-truth landmarks (pose-normalised), random-init encoder.
A representation worth pretraining should sit between raw pixels and landmarks.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import report  # noqa: E402

from aupretrain.config import load_config  # noqa: E402
from aupretrain.data.synth.corpus import load_labels  # noqa: E402
from aupretrain.eval.datasets import ensure_synthetic, load_synthetic  # noqa: E402
from aupretrain.eval.report import evaluate_codes  # noqa: E402
from aupretrain.models.encoder import AUEncoder  # noqa: E402


def landmarks(root: Path) -> np.ndarray:
    out = []
    for p in sorted(root.glob("*/*.mp4")):
        lm = np.asarray(load_labels(p)["landmarks"], np.float32)  # [F, K, 2]
        lm = lm - lm.mean(1, keepdims=True)
        lm = lm / np.linalg.norm(lm, axis=(1, 2), keepdims=True)
        out.append(lm.reshape(len(lm), -1))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    cfg = load_config(a.overrides)
    root = ensure_synthetic(cfg.eval)
    d = load_synthetic(root, float(cfg.eval.au_threshold))
    feats = {
        "raw pixels (24x24 RGB)": np.stack([cv2.resize(f, (24, 24), interpolation=cv2.INTER_AREA)
                                            for f in d.frames]).reshape(len(d.frames), -1).astype(np.float32) / 255,
    }
    hog = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), 9)
    feats["HOG (64 px)"] = np.stack([hog.compute(cv2.cvtColor(cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA),
                                                               cv2.COLOR_RGB2GRAY)).ravel() for f in d.frames])
    feats["ground-truth landmarks"] = landmarks(root)
    torch.manual_seed(0)
    from omegaconf import OmegaConf

    enc = AUEncoder(OmegaConf.to_container(cfg.model, resolve=True), int(cfg.data.input_size)).eval()
    feats[f"random-init encoder ({cfg.model.name}, {cfg.data.input_size} px)"] = enc.encode(torch.from_numpy(d.frames)).numpy()
    base = d.labels.mean(0)
    rows = [{"features": "always positive", "dim": 0, "f1_mean": float(np.mean(2 * base / (1 + base)))}]
    per_au = {}
    for name, x in feats.items():
        r = evaluate_codes(x, d, cfg.eval)
        rows.append({"features": name, "dim": int(x.shape[1]), "f1_mean": r["f1_mean"]})
        per_au[name] = r["f1"]
    report(f"Identity-disjoint linear AU probe, {len(d.identity_names)} identities, {len(d.labels)} frames", rows,
           a.json, {"per_au": per_au, "aus": d.aus, "base_rate": dict(zip(d.aus, base.tolist()))})


if __name__ == "__main__":
    main()
