"""Evaluate an encoder (and the random-init floor) on the configured labelled set; log and print."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.encoder import AUEncoder
from .baselines import always_positive, hog_features
from .datasets import check_identity_sets, ensure_synthetic, load_synthetic
from .report import evaluate_codes, evaluate_encoders, figure, print_table


def evaluate(cfg, encoder: AUEncoder, tracker=None, out_dir: str | Path | None = None, step: int | None = None) -> dict:
    """Probe `encoder` (and the configured reference rows) on the `eval.split` identities; print the table,
    write `<out_dir>/eval.json`, log `eval/*` metrics. Raises ValueError if the pretraining, validation and
    test identity sets of the config overlap."""
    e = cfg.eval
    check_identity_sets(cfg)
    data = load_synthetic(ensure_synthetic(e), float(e.au_threshold), int(e.frame_stride))
    encoders = {"pretrained": encoder}
    if e.random_baseline:
        torch.manual_seed(int(cfg.run.seed) + 1)
        c = dict(encoder.config)
        encoders["random-init"] = AUEncoder(c, c.pop("input_size"))
    results = evaluate_encoders(encoders, data, e, seed=int(cfg.run.seed))
    refs = list(e.get("baselines", []))
    for name in refs:
        if name == "hog":
            results["HOG"] = evaluate_codes(hog_features(data.frames), data, e, seed=int(cfg.run.seed))
        elif name == "always_positive":
            results["always-positive"] = always_positive(data)
        else:
            raise ValueError(f"eval.baselines: unknown reference row {name!r} (hog | always_positive)")
    print_table(results, data.aus)
    summary = {"split": str(e.split), "aus": data.aus, "frames": int(len(data.labels)),
               "identities": len(data.identity_names), "results": results}
    if out_dir is not None:
        Path(out_dir, "eval.json").write_text(json.dumps(summary, indent=1))
    if tracker is not None:
        for name, prefix in (("pretrained", "eval"), ("random-init", "eval_random"), ("HOG", "eval_hog"),
                             ("always-positive", "eval_always_positive")):
            if name not in results:
                continue
            r = results[name]
            m = {f"{prefix}/f1_mean": r["f1_mean"], **{f"{prefix}/f1/{a}": v for a, v in r["f1"].items()}}
            if "identity_acc" in r:
                m[f"{prefix}/identity_acc"] = r["identity_acc"]
            tracker.log_metrics(m, step=step or 0)
        tracker.log_text(json.dumps(summary, indent=1), "eval/eval.json")
        import matplotlib.pyplot as plt

        fig = figure(results, data.aus)
        tracker.log_figure(fig, "eval/f1.png")
        plt.close(fig)
    return summary
