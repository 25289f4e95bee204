"""Run the AU probe protocol on one or more encoders and report per-AU F1 tables and plots."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..models.encoder import AUEncoder
from .datasets import LabelledFrames
from .probe import au_probe, identity_probe, per_au_f1, subject_folds

log = logging.getLogger(__name__)


def identity_split(data: LabelledFrames) -> np.ndarray:
    """Test mask for the identity probe: each identity's later videos (or second half of frames)."""
    test = np.zeros(len(data.identity), bool)
    for i in np.unique(data.identity):
        m = np.flatnonzero(data.identity == i)
        vids = np.unique(data.video[m])
        if len(vids) > 1:
            test[m[data.video[m] != vids[0]]] = True
        else:
            test[m[len(m) // 2:]] = True
    return test


def f1_summary(f1: np.ndarray, data: LabelledFrames) -> dict:
    """Result dict of per-AU F1 [A] on `data`: per-AU F1, their mean over the AUs present in `data`, base rates."""
    present = data.labels.sum(0) > 0
    return {"f1": {a: float(v) for a, v in zip(data.aus, f1)}, "f1_mean": float(f1[present].mean()),
            "au_base_rate": {a: float(v) for a, v in zip(data.aus, data.labels.mean(0))},
            "aus_evaluated": [a for a, ok in zip(data.aus, present) if ok]}


def evaluate_codes(codes: np.ndarray, data: LabelledFrames, cfg_eval, seed: int = 0) -> dict:
    """Subject-exclusive k-fold linear AU probe on codes; F1 over the pooled out-of-fold predictions."""
    p = cfg_eval.probe
    probs = np.zeros_like(data.labels)
    for k, test in enumerate(subject_folds(data.identity, int(cfg_eval.folds), seed)):
        probs[test] = au_probe(codes[~test], data.labels[~test], codes[test], p.steps, p.lr, p.weight_decay,
                               p.batch_size, seed + k)
    out = f1_summary(per_au_f1(data.labels, probs), data)
    if cfg_eval.identity_probe:
        test = identity_split(data)
        out["identity_acc"] = identity_probe(codes[~test], data.identity[~test], codes[test], data.identity[test],
                                             p.steps, p.lr, p.weight_decay, p.batch_size, seed)
        out["identity_chance"] = 1.0 / len(np.unique(data.identity))
    return out


def evaluate_encoders(encoders: dict[str, AUEncoder], data: LabelledFrames, cfg_eval, seed: int = 0) -> dict:
    frames = torch.from_numpy(data.frames)
    results = {}
    for name, enc in encoders.items():
        enc.eval()
        codes = enc.encode(frames, int(cfg_eval.batch_size)).numpy()
        results[name] = evaluate_codes(codes, data, cfg_eval, seed)
        log.info("%s: mean F1 %.3f", name, results[name]["f1_mean"])
    return results


def table(results: dict, aus: list[str]):
    from rich.table import Table

    names = list(results)
    t = Table(title="Linear AU probe, identity-held-out (F1 x 100)")
    t.add_column("AU")
    for n in names:
        t.add_column(n, justify="right")
    first = results[names[0]]
    t.add_column("base rate", justify="right")
    for a in aus:
        t.add_row(a, *[f"{100 * results[n]['f1'][a]:.1f}" for n in names], f"{100 * first['au_base_rate'][a]:.1f}")
    t.add_row("[b]mean[/b]", *[f"[b]{100 * results[n]['f1_mean']:.1f}[/b]" for n in names], "")
    if "identity_acc" in first:
        t.add_row("identity acc (lower = more person-independent)",
                  *[f"{100 * results[n]['identity_acc']:.1f}" if "identity_acc" in results[n] else "–" for n in names],
                  f"chance {100 * first['identity_chance']:.1f}")
    return t


def print_table(results: dict, aus: list[str]) -> None:
    from rich.console import Console

    Console(width=120).print(table(results, aus))


def figure(results: dict, aus: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.5))
    w = 0.8 / len(results)
    x = np.arange(len(aus) + 1)
    for i, (n, r) in enumerate(results.items()):
        ax.bar(x + i * w, [r["f1"][a] for a in aus] + [r["f1_mean"]], w, label=n)
    ax.set_xticks(x + w * (len(results) - 1) / 2, aus + ["mean"])
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Linear AU probe (identity-held-out)")
    fig.tight_layout()
    return fig
