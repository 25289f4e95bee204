"""Run the AU probe protocol on one or more encoders and report per-AU F1 tables and plots."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..models.encoder import AUEncoder
from .datasets import LabelledFrames
from .folds import validation_subjects
from .probe import au_probe, best_thresholds, identity_probe, per_au_f1, subject_folds

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


def select_mode(cfg_eval, dataset: str = "synthetic") -> str:
    """`eval.select`: none (fixed `probe.steps`, threshold 0.5) | validation (steps from `select_steps` and a
    per-AU threshold from `select_thresholds`, chosen on validation subjects carved from the training folds)
    | auto (none on the synthetic set, validation on BP4D / DISFA / GFT)."""
    mode = str(cfg_eval.get("select", "none"))
    if mode == "auto":
        return "none" if dataset == "synthetic" else "validation"
    if mode not in ("none", "validation"):
        raise ValueError(f"eval.select={mode!r}: must be none, validation or auto")
    return mode


def record(selection_log: list | None, fold: int, stage: str, mask: np.ndarray) -> None:
    """Append {fold, stage, index (the frame indices used)} to `selection_log` (if given). Stages:
    select_fit / select_score (choosing settings: must never touch the test fold), fit, predict."""
    if selection_log is not None:
        selection_log.append({"fold": fold, "stage": stage, "index": np.flatnonzero(mask)})


def select_linear(codes: np.ndarray, data: LabelledFrames, train: np.ndarray, cfg_eval, seed: int,
                  selection_log: list | None = None, fold: int = 0) -> dict:
    """Choose the probe's steps (from `select_steps`) and per-AU thresholds (from `select_thresholds`) on a
    validation split of the training frames `train` [N] bool, by subject (`validation_fraction` of the
    training subjects). Only indices in `train` are read. Returns {steps, thresholds [A], validation_f1,
    validation_subjects}."""
    p = cfg_eval.probe
    val = validation_subjects(data.identity, train, float(cfg_eval.get("validation_fraction", 0.25)), seed)
    fit = train & ~val
    record(selection_log, fold, "select_fit", fit)
    record(selection_log, fold, "select_score", val)
    best = None
    for steps in cfg_eval.get("select_steps", [p.steps]):
        probs = au_probe(codes[fit], data.labels[fit], codes[val], int(steps), p.lr, p.weight_decay, p.batch_size, seed)
        thr, f1 = best_thresholds(data.labels[val], probs, cfg_eval.get("select_thresholds", [0.5]))
        present = data.labels[val].sum(0) > 0
        score = float(f1[present].mean()) if present.any() else 0.0
        if best is None or score > best["validation_f1"]:
            best = {"steps": int(steps), "thresholds": thr, "validation_f1": score}
    best["validation_subjects"] = sorted(data.identity_names[i] for i in np.unique(data.identity[val]))
    return best


def _fold_entry(k, test, data, pred_probs, thr, extra) -> dict:
    labels = data.labels[test]
    f1 = per_au_f1(labels, pred_probs, thr)
    present = labels.sum(0) > 0
    return {"fold": k + 1, "test_subjects": sorted(data.identity_names[i] for i in np.unique(data.identity[test])),
            "frames": int(test.sum()), "f1": {a: float(v) for a, v in zip(data.aus, f1)},
            "f1_mean": float(f1[present].mean()) if present.any() else 0.0,
            "aus_evaluated": [a for a, ok in zip(data.aus, present) if ok],
            "thresholds": {a: float(t) for a, t in zip(data.aus, np.broadcast_to(thr, (len(data.aus),)))}, **extra}


def normalize_codes(codes: np.ndarray, data: LabelledFrames, mode: str = "none") -> np.ndarray:
    """Codes [N, D] as the probe sees them. `none`: unchanged. `video_median`: each video's median code
    subtracted from its frames (person-specific normalisation: Baltrusaitis, Mahmoud & Robinson, "Cross-dataset
    learning and person-specific normalisation for automatic Action Unit detection", FG 2015; OpenFace's AU
    models) — a person's constant appearance cancels, what changes within the video stays. It reads every frame
    of a video, the test videos' too (offline use of a whole video, as OpenFace does). Raises ValueError for an
    unknown mode."""
    if mode == "none":
        return codes
    if mode != "video_median":
        raise ValueError(f"eval.normalize={mode!r}: must be none or video_median")
    out = np.empty_like(codes)
    for v in np.unique(data.video):
        m = data.video == v
        out[m] = codes[m] - np.median(codes[m], axis=0, keepdims=True)
    return out


def evaluate_codes(codes: np.ndarray, data: LabelledFrames, cfg_eval, seed: int = 0,
                   folds: list[np.ndarray] | None = None, selection_log: list | None = None) -> dict:
    """Subject-exclusive k-fold linear AU probe on codes [N, D]; F1 over the pooled out-of-fold predictions
    (`f1`, `f1_mean`), per fold (`folds`) and their mean (`f1_fold_mean`).

    Codes are first normalised as `eval.normalize` says (`normalize_codes`). folds: test masks [N] bool
    (default: `eval.folds` seeded subject folds, the synthetic protocol). With
    `eval.select=none` each fold's probe runs `probe.steps` steps and thresholds at 0.5 (the synthetic
    default, unchanged); with `validation` both are chosen by `select_linear` on subjects of the training folds
    only — the test fold is read once, to predict. Every index set used is appended to `selection_log`.
    """
    p = cfg_eval.probe
    codes = normalize_codes(codes, data, str(cfg_eval.get("normalize", "none")))
    mode = select_mode(cfg_eval, data.dataset)
    masks = folds if folds is not None else subject_folds(data.identity, int(cfg_eval.folds), seed)
    probs = np.zeros_like(data.labels)
    thr_all = np.full(data.labels.shape, 0.5)
    per_fold = []
    for k, test in enumerate(masks):
        train = ~test
        if mode == "validation":
            sel = select_linear(codes, data, train, cfg_eval, seed + k, selection_log, k)
            steps, thr = sel["steps"], sel["thresholds"]
            extra = {"steps": steps, "validation_f1": sel["validation_f1"],
                     "validation_subjects": sel["validation_subjects"]}
        else:
            steps, thr, extra = int(p.steps), np.full(len(data.aus), 0.5), {"steps": int(p.steps)}
        record(selection_log, k, "fit", train)
        record(selection_log, k, "predict", test)
        probs[test] = au_probe(codes[train], data.labels[train], codes[test], steps, p.lr, p.weight_decay,
                               p.batch_size, seed + k)
        thr_all[test] = thr
        per_fold.append(_fold_entry(k, test, data, probs[test], thr, extra))
    out = f1_summary(per_au_f1(data.labels, probs, 0.5) if mode == "none" else
                     per_au_f1(data.labels, (probs >= thr_all).astype(np.float32), 0.5), data)
    out.update({"select": mode, "folds": per_fold, "f1_fold_mean": float(np.mean([f["f1_mean"] for f in per_fold]))})
    if cfg_eval.identity_probe:
        test = identity_split(data)
        out["identity_acc"] = identity_probe(codes[~test], data.identity[~test], codes[test], data.identity[test],
                                             p.steps, p.lr, p.weight_decay, p.batch_size, seed)
        out["identity_chance"] = 1.0 / len(np.unique(data.identity))
    return out


def evaluate_encoders(encoders: dict[str, AUEncoder], data: LabelledFrames, cfg_eval, seed: int = 0,
                      folds: list[np.ndarray] | None = None, codes_out: dict | None = None) -> dict:
    """`evaluate_codes` on each encoder's codes of `data.frames`; `codes_out` (if given) receives the codes
    [N, D] by encoder name (for plots)."""
    frames = torch.from_numpy(data.frames)
    results = {}
    for name, enc in encoders.items():
        enc.eval()
        codes = enc.encode(frames, int(cfg_eval.batch_size)).numpy()
        if codes_out is not None:
            codes_out[name] = codes
        results[name] = evaluate_codes(codes, data, cfg_eval, seed, folds)
        log.info("%s: mean F1 %.3f", name, results[name]["f1_mean"])
    return results


def table(results: dict, aus: list[str]):
    """A rich Table of `results` ({encoder: `evaluate_codes` result}): per-AU F1 x100 per encoder for `aus` ("–" for
    an AU with no positive frame, which the mean leaves out), the first encoder's base rate, the mean F1 row and, when the first has one, identity accuracy with chance."""
    from rich.table import Table

    names = list(results)
    t = Table(title="Linear AU probe, identity-held-out (F1 x 100)")
    t.add_column("AU")
    for n in names:
        t.add_column(n, justify="right")
    first = results[names[0]]
    t.add_column("base rate", justify="right")
    scored = set(first.get("aus_evaluated", aus))
    own = {n: set(results[n].get("aus_evaluated", aus)) for n in names}  # a saved head's untrained AUs too
    for a in aus:  # an AU with no positive frame has no F1: shown as such, and left out of the mean
        t.add_row(a, *[f"{100 * results[n]['f1'][a]:.1f}" if a in scored and a in own[n] else "–" for n in names],
                  f"{100 * first['au_base_rate'][a]:.1f}" if a in scored else "0 (no positive frame: not scored)")
    t.add_row("[b]mean[/b]", *[f"[b]{100 * results[n]['f1_mean']:.1f}[/b]" for n in names], "")
    if "identity_acc" in first:
        t.add_row("identity acc (lower = more person-independent)",
                  *[f"{100 * results[n]['identity_acc']:.1f}" if "identity_acc" in results[n] else "–" for n in names],
                  f"chance {100 * first['identity_chance']:.1f}")
    return t


def print_table(results: dict, aus: list[str]) -> None:
    """Print `table(results, aus)` to stdout (120 columns)."""
    from rich.console import Console

    Console(width=120).print(table(results, aus))


def figure(results: dict, aus: list[str]):
    """A matplotlib Figure (Agg backend): grouped bars of each encoder's per-AU F1 and mean F1 (0..1)."""
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


def embedding_figure(codes: np.ndarray, data: LabelledFrames, max_points: int = 4000, seed: int = 0):
    """2-D PCA map of codes [N, D] (scikit-learn PCA, at most `max_points` frames drawn at random): one
    panel coloured by identity, then one per AU (present / absent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(codes), min(max_points, len(codes)), replace=False))
    xy = PCA(2, random_state=seed).fit_transform(codes[pick].astype(np.float64)) if codes.shape[1] >= 2 else \
        np.stack([codes[pick, 0], np.zeros(len(pick))], 1)
    panels = 1 + len(data.aus)
    cols = min(panels, 5)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    ax = axes.flat[0]
    ax.scatter(xy[:, 0], xy[:, 1], c=data.identity[pick], cmap="tab20", s=3)
    ax.set_title("identity")
    for j, a in enumerate(data.aus):
        ax = axes.flat[j + 1]
        on = data.labels[pick, j] > 0
        ax.scatter(xy[~on, 0], xy[~on, 1], c="lightgrey", s=3)
        ax.scatter(xy[on, 0], xy[on, 1], c="crimson", s=3)
        ax.set_title(f"{a} (red: present)")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    fig.suptitle("AU codes, PCA (2-D)")
    fig.tight_layout()
    return fig
