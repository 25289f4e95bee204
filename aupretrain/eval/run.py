"""Evaluate an encoder (and the random-init floor) on the configured labelled set; log and print."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..models.encoder import AUEncoder
from .baselines import always_positive, hog_features
from .datasets import LabelledFrames, check_identity_sets, ensure_synthetic, load_synthetic
from .report import embedding_figure, evaluate_codes, evaluate_encoders, figure, print_table, select_mode

log = logging.getLogger(__name__)



def unscored_as_null(results: dict) -> dict:
    """A copy of `results` ({row: `evaluate_codes` result}) for eval.json: the F1 of an AU that no frame of the
    evaluated data (or of a fold's test frames) has is null instead of scikit-learn's 0.0, which reads as a
    measured miss; the means already leave such AUs out (`f1_summary`)."""
    def row(r: dict) -> dict:
        scored = set(r.get("aus_evaluated", r.get("f1", {})))
        out = {**r, "f1": {a: (v if a in scored else None) for a, v in r.get("f1", {}).items()}}
        if "folds" in r:
            out["folds"] = [{**f, "f1": {a: (v if a in f.get("aus_evaluated", f["f1"]) else None)
                                         for a, v in f["f1"].items()}} for f in r["folds"]]
        return out
    return {name: row(r) for name, r in results.items()}

def pack_settings(cfg, size: int):
    """The packer's settings (`pack.*`) at the encoder's input size: evaluation crops = pretraining crops."""
    from dataclasses import replace

    from ..cli.pack import settings_from

    return replace(settings_from(cfg.pack), size=int(size))


def load_data(cfg, encoder: AUEncoder) -> tuple[LabelledFrames, list[np.ndarray] | None, str]:
    """(data, test masks per fold or None for the seeded default, where the folds come from) for
    `eval.dataset`: synthetic (rendered, identity sets checked) or bp4d | disfa | gft at `eval.root`."""
    e = cfg.eval
    name = str(e.get("dataset", "synthetic"))
    if name == "synthetic":
        check_identity_sets(cfg)
        if e.get("au_threshold") is None or not 0 <= float(e.au_threshold) <= 1:
            from ..errors import UsageError

            raise UsageError(f"eval.au_threshold={e.get('au_threshold')}: the synthetic intensities are 0..1; set a "
                             "number in [0, 1] (0.5 in configs/eval/synthetic.yaml)")
        data = load_synthetic(ensure_synthetic(e), float(e.au_threshold), int(e.frame_stride))
        return data, None, f"seeded subject split into {int(e.folds)} folds (seed {int(cfg.run.seed)})"
    from ..errors import UsageError
    from .aligned import default_cache
    from .au_datasets import load_au_dataset
    from .folds import standard_folds

    if not e.get("root"):
        raise UsageError(f"eval.root: set it to the folder of your {name.upper()} copy (eval.root=PATH)")
    cache = e.get("cache")
    cache = None if cache == "none" else Path(cache) if cache else default_cache()
    data = load_au_dataset(name, e.root, pack_settings(cfg, encoder.input_size), cache, int(e.frame_stride),
                           list(e.get("subjects") or []) or None, e.get("au_threshold"))
    masks, source = standard_folds(name, data.subject_names, int(e.folds), int(cfg.run.seed))
    check_folds(name, np.asarray(data.subject_names), masks, e)
    return data, masks, source


def check_folds(name: str, subjects: np.ndarray, masks: list[np.ndarray], e) -> None:
    """Refuse a labelled set too small for its protocol before any probe is fitted: every fold needs a subject to
    test on and one to train on — two with `eval.select=validation` (BP4D / DISFA / GFT's default: subjects are
    held out of the training folds to choose the probe's steps and thresholds). `subjects` [N] is each kept
    frame's subject, `masks` the folds' test masks [N].

    Raises:
        UsageError: naming the subjects kept, the fold short of them, and the settings that fit."""
    from ..errors import UsageError

    validation = select_mode(e, name) == "validation"
    kept = np.unique(subjects)
    for k, test in enumerate(masks):
        trained, tested = np.unique(subjects[~test]), np.unique(subjects[test])
        if len(tested) and len(trained) >= (2 if validation else 1):
            continue
        shown = ", ".join(map(str, kept[:6])) + (" …" if len(kept) > 6 else "")
        short = (f"fold {k + 1} has no subject to test on" if not len(tested) else
                 f"fold {k + 1} trains on {len(trained)} subject(s)")
        need = ("each fold's training part needs 2 subjects or more (validation subjects are held out of it)"
                if validation else "each fold needs a subject to train on and one to test on")
        asked = int(e.get("folds", len(masks)))
        folds = f"{asked} folds" if asked == len(masks) else f"eval.folds={asked} ({len(masks)} made)"
        fixes = ["add subjects"]
        if asked > 2 and len(kept) >= (4 if validation else 2):
            fixes.append("set eval.folds=2")
        if validation and len(kept) >= 2:
            fixes.append("set eval.select=none (fixed probe steps, threshold 0.5)")
        raise UsageError(f"{name}: {len(kept)} subject(s) kept with labelled frames and a face ({shown}) for "
                         f"{folds}: {short}; {need} — {', or '.join(fixes)}")


def check_normalize(e, protocol: str, save_head) -> None:
    """Refuse (UsageError) `eval.normalize` other than none where it cannot hold: fine-tuning trains on frames,
    not on codes, and a saved head would need each video's median code wherever it is applied."""
    mode = str(e.get("normalize", "none"))
    if mode == "none":
        return
    from ..errors import UsageError

    if protocol != "linear":
        raise UsageError(f"eval.normalize={mode} applies to the linear protocol (codes); use eval.protocol=linear "
                         "or eval.normalize=none")
    if save_head is not None:
        raise UsageError(f"--save-head with eval.normalize={mode}: a head on normalised codes would need each "
                         "video's median code wherever it is applied; save heads with eval.normalize=none")


def _save_fig(fig, out_dir, name, tracker):
    import matplotlib.pyplot as plt

    if out_dir is not None:
        fig.savefig(Path(out_dir, name), dpi=110)
    if tracker is not None:
        tracker.log_figure(fig, f"eval/{name}")
    plt.close(fig)


def evaluate(cfg, encoder: AUEncoder, tracker=None, out_dir: str | Path | None = None, step: int | None = None,
             save_head: str | Path | None = None, pretraining_run: str | None = None,
             head: str | Path | None = None) -> dict:
    """Probe `encoder` (and the configured reference rows) on `eval.dataset` with `eval.protocol`; print the
    table, write `<out_dir>/eval.json`, `eval_f1.png` (per-AU F1 bars) and `eval_pca.png` (2-D PCA of the
    codes by identity and by AU), log `eval/*` metrics, tags and both figures. With `save_head` keep a head trained on every frame (see head.py);
    with `head` also score that saved linear head as it is on every frame (row "pretrained (saved head)",
    `eval_head/*`: the supervised bound's own classifier, `<run>/au_head`).
    Raises ValueError (UsageError) for overlapping synthetic identity sets or a bad dataset folder."""
    e = cfg.eval
    seed = int(cfg.run.seed)
    protocol = str(e.get("protocol", "linear"))
    if protocol not in ("linear", "finetune"):
        raise ValueError(f"eval.protocol={protocol!r}: must be linear or finetune")
    check_normalize(e, protocol, save_head)
    data, masks, fold_source = load_data(cfg, encoder)
    encoders = {"pretrained": encoder}
    if e.random_baseline:
        torch.manual_seed(seed + 1)
        c = dict(encoder.config)
        encoders["random-init"] = AUEncoder(c, c.pop("input_size"))
    codes: dict[str, np.ndarray] = {}
    results = evaluate_encoders(encoders, data, e, seed=seed, folds=masks, codes_out=codes)
    if protocol == "finetune":
        from .finetune import evaluate_finetune

        ft = evaluate_finetune(encoder, data, e, seed, masks)
        if "identity_acc" in results["pretrained"]:  # leakage of the frozen code the fine-tuning started from
            ft.update({k: results["pretrained"][k] for k in ("identity_acc", "identity_chance")})
        results = {"pretrained (fine-tuned)": ft, "pretrained (linear)": results.pop("pretrained"), **results}
    if head is not None:
        from .head import score_head

        results = {**{k: v for k, v in results.items() if k.startswith("pretrained")},
                   "pretrained (saved head)": score_head(head, codes["pretrained"], data),
                   **{k: v for k, v in results.items() if not k.startswith("pretrained")}}
    for name in list(e.get("baselines", [])):
        if name == "hog":
            results["HOG"] = evaluate_codes(hog_features(data.frames), data, e, seed=seed, folds=masks)
        elif name == "always_positive":
            results["always-positive"] = always_positive(data)
        else:
            raise ValueError(f"eval.baselines: unknown reference row {name!r} (hog | always_positive)")
    print_table(results, data.aus)
    unscored = [a for a in data.aus if a not in next(iter(results.values())).get("aus_evaluated", data.aus)]
    if unscored:
        log.warning("%s: no frame of the evaluation data has %s: no F1 for %s, and the mean F1 is over the other "
                    "%d AUs", data.dataset, " / ".join(unscored), "it" if len(unscored) == 1 else "them",
                    len(data.aus) - len(unscored))
    summary = {"split": str(e.split), "aus": data.aus, "frames": int(len(data.labels)),
               "identities": len(data.identity_names), "results": unscored_as_null(results), "dataset": data.dataset,
               "protocol": protocol, "select": select_mode(e, data.dataset), "fold_source": fold_source,
               "normalize": str(e.get("normalize", "none")),
               "data_info": data.info, "subjects": list(data.identity_names)}
    if data.dataset != "synthetic":  # identity sets (split) are the synthetic corpus's
        summary.pop("split")
        summary["root"] = str(e.root)
    if pretraining_run:
        summary["pretraining_run"] = pretraining_run
    if save_head is not None:
        from .head import final_finetuned_head, final_linear_head, save_head as write_head

        tensors, meta = (final_finetuned_head(encoder, data, e, seed) if protocol == "finetune"
                         else final_linear_head(codes["pretrained"], data, e, seed, encoder=encoder))
        summary["head"] = str(write_head(save_head, tensors, meta))
    if out_dir is not None:
        Path(out_dir, "eval.json").write_text(json.dumps(summary, indent=1))
    if tracker is not None:
        main = next(iter(results))
        for name, prefix in ((main, "eval"), ("pretrained (linear)", "eval_linear"), ("pretrained (saved head)", "eval_head"),
                             ("random-init", "eval_random"), ("HOG", "eval_hog"),
                             ("always-positive", "eval_always_positive")):
            if name not in results:
                continue
            r = results[name]
            m = {f"{prefix}/f1_mean": r["f1_mean"],
                 **{f"{prefix}/f1/{a}": v for a, v in r["f1"].items() if a in r.get("aus_evaluated", r["f1"])}}
            if "identity_acc" in r:
                m[f"{prefix}/identity_acc"] = r["identity_acc"]
            for f in r.get("folds", []) if name == main else []:
                m[f"{prefix}/fold{f['fold']}/f1_mean"] = f["f1_mean"]
            tracker.log_metrics(m, step=step or 0)
        tracker.set_tags({"eval.dataset": data.dataset, "eval.protocol": protocol,
                          **({"eval.pretraining_run": pretraining_run} if pretraining_run else {})})
        tracker.log_text(json.dumps(summary, indent=1), "eval/eval.json")
    fig = figure(results, data.aus)
    if tracker is not None:
        tracker.log_figure(fig, "eval/f1.png")  # the name training runs have always logged
    _save_fig(fig, out_dir, "eval_f1.png", None)
    _save_fig(embedding_figure(codes["pretrained"], data, seed=seed), out_dir, "eval_pca.png", tracker)
    return summary
