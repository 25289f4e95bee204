"""`eval.protocol=finetune`: the whole encoder plus a linear AU head trained per fold (AdamW, a few epochs,
a small learning rate, BCE with per-AU positive weights), the number of epochs, the learning rate and the
per-AU thresholds chosen on validation subjects carved from the training folds — never on the test fold.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from ..models.encoder import AUEncoder
from .datasets import LabelledFrames
from .folds import validation_subjects
from .probe import best_thresholds, per_au_f1, pos_weights
from .report import _fold_entry, f1_summary, record, select_mode

log = logging.getLogger(__name__)


class FineTuned(nn.Module):
    """A copy of the encoder and a linear head: RGB uint8 frames [N, H, W, 3] -> AU logits [N, A]."""

    def __init__(self, encoder: AUEncoder, n_aus: int):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.head = nn.Linear(encoder.au_dim, n_aus)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """AU logits [N, A] of aligned face crops `frames`, RGB uint8 [N, H, W, 3] (channels last, as decoded),
        resized and normalised by the encoder's own `AUEncoder.preprocess`. Gradients flow into the encoder."""
        return self.head(self.encoder(self.encoder.preprocess(frames))["a"])


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict(model: FineTuned, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(AU present) [N, A] of frames [N, H, W, 3] uint8."""
    model.eval()
    dev = next(model.parameters()).device
    out = [torch.sigmoid(model(torch.from_numpy(frames[i:i + batch_size]).to(dev))).float().cpu()
           for i in range(0, len(frames), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.head.out_features), np.float32)


def train(encoder: AUEncoder, frames: np.ndarray, labels: np.ndarray, epochs: int, lr: float, weight_decay: float,
          batch_size: int, seed: int, after_epoch=None) -> FineTuned:
    """Fine-tune a copy of `encoder` + a linear head on frames [N, H, W, 3] uint8 and labels [N, A] {0,1}
    for `epochs` passes (AdamW, constant lr, shuffled with `seed`). `after_epoch(epoch, model)` is called
    after each epoch (1-based). Returns the model in eval mode."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    dev = _device()
    model = FineTuned(encoder, labels.shape[1]).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weights(labels).to(dev))
    y = torch.as_tensor(labels, dtype=torch.float32)
    bs = max(2, min(batch_size, len(frames)))
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(frames), generator=g)
        for i in range(0, len(order) - bs + 1, bs):  # whole batches (bs <= N); the remainder waits for the next epoch's shuffle
            idx = order[i:i + bs].numpy()
            opt.zero_grad(set_to_none=True)
            loss_fn(model(torch.from_numpy(frames[idx]).to(dev)), y[idx].to(dev)).backward()
            opt.step()
        if after_epoch is not None:
            after_epoch(epoch, model)
    return model.eval()


def select_finetune(encoder, data: LabelledFrames, train_mask: np.ndarray, cfg_eval, seed: int,
                    selection_log: list | None = None, fold: int = 0) -> dict:
    """Choose epochs (from `finetune.epochs`), lr (from `finetune.lr`) and per-AU thresholds on validation
    subjects carved from `train_mask`; only indices in `train_mask` are read."""
    f = cfg_eval.finetune
    val = validation_subjects(data.identity, train_mask, float(cfg_eval.get("validation_fraction", 0.25)), seed)
    fit = train_mask & ~val
    record(selection_log, fold, "select_fit", fit)
    record(selection_log, fold, "select_score", val)
    epochs = sorted(int(e) for e in f.epochs)
    best: dict = {}
    for lr in f.lr:
        def score(epoch, model, lr=float(lr)):
            if epoch not in epochs:
                return
            probs = predict(model, data.frames[val], int(f.batch_size))
            thr, f1 = best_thresholds(data.labels[val], probs, cfg_eval.get("select_thresholds", [0.5]))
            present = data.labels[val].sum(0) > 0
            s = float(f1[present].mean()) if present.any() else 0.0
            if not best or s > best["validation_f1"]:
                best.update(epochs=epoch, lr=lr, thresholds=thr, validation_f1=s)

        train(encoder, data.frames[fit], data.labels[fit], epochs[-1], float(lr), float(f.weight_decay),
              int(f.batch_size), seed, score)
    best["validation_subjects"] = sorted(data.identity_names[i] for i in np.unique(data.identity[val]))
    return best


def evaluate_finetune(encoder: AUEncoder, data: LabelledFrames, cfg_eval, seed: int = 0,
                      folds: list[np.ndarray] | None = None, selection_log: list | None = None) -> dict:
    """Per fold: select (eval.select=validation) or take the first lr and the largest epoch count with
    threshold 0.5 (none), fine-tune on all training folds, predict the test fold. Same result keys as
    `report.evaluate_codes` (without the identity probe)."""
    from .probe import subject_folds

    f = cfg_eval.finetune
    mode = select_mode(cfg_eval, data.dataset)
    masks = folds if folds is not None else subject_folds(data.identity, int(cfg_eval.folds), seed)
    pred = np.zeros_like(data.labels)
    per_fold = []
    for k, test in enumerate(masks):
        trn = ~test
        if mode == "validation":
            sel = select_finetune(encoder, data, trn, cfg_eval, seed + k, selection_log, k)
        else:
            sel = {"epochs": max(int(e) for e in f.epochs), "lr": float(f.lr[0]), "thresholds": np.full(len(data.aus), 0.5)}
        record(selection_log, k, "fit", trn)
        record(selection_log, k, "predict", test)
        model = train(encoder, data.frames[trn], data.labels[trn], sel["epochs"], sel["lr"], float(f.weight_decay),
                      int(f.batch_size), seed + k)
        probs = predict(model, data.frames[test], int(f.batch_size))
        pred[test] = probs >= sel["thresholds"]
        extra = {k2: v for k2, v in sel.items() if k2 != "thresholds"}
        per_fold.append(_fold_entry(k, test, data, probs, sel["thresholds"], extra))
        log.info("fine-tune fold %d: mean F1 %.3f", k + 1, per_fold[-1]["f1_mean"])
    out = f1_summary(per_au_f1(data.labels, pred, 0.5), data)
    out.update({"select": mode, "protocol": "finetune", "folds": per_fold,
                "f1_fold_mean": float(np.mean([x["f1_mean"] for x in per_fold]))})
    return out
