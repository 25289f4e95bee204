"""Supervised upper bound: the same encoder trained on AU labels through a linear classifier on the AU
code (the method's classifier, `aupretrain.methods.supervised`; BCE, per-AU positive weighting from the batch, both views). Needs `data.labels` (the reader
then adds per-frame labels `au` [B, T, A] to each batch)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Objective


def supervised_loss(logits: torch.Tensor, labels: torch.Tensor, max_pos_weight: float = 10.0) -> torch.Tensor:
    """logits, labels [N, C] (labels 0/1). Positive weight per AU = negatives / positives in the batch."""
    logits, labels = logits.float(), labels.float()
    pos = labels.sum(0)
    pos_weight = ((labels.shape[0] - pos) / pos.clamp(min=1)).clamp(1.0, max_pos_weight)
    return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight.detach())


class SupervisedObjective(Objective):
    """Supervised upper bound, local term only: `supervised_loss` of both views' per-frame AU logits
    (`au_logits1/2`, [..., C], C = `objective.au_classes`) against the batch's labels `au` [B, T, C] >=
    `objective.label_threshold`. Parts: `bce`, `label_acc` (fraction of frame-AU decisions, logit > 0, that match).
    Raises ValueError (from `local_loss`) when the batch has no `au` or its AU count is not C."""
    name = "supervised"

    def __init__(self, cfg: Any):
        self.au_classes = int(cfg.au_classes)
        self.threshold = float(cfg.label_threshold)
        self.max_pos_weight = float(cfg.max_pos_weight)

    def local_loss(self, outputs, batch):
        if "au" not in batch:
            raise ValueError("objective=supervised needs AU labels: set data.labels to the folder of "
                             "<video>.labels.json files (e.g. the synthetic corpus)")
        labels = (batch["au"] >= self.threshold).float().to(outputs["au_logits1"].device)
        labels = labels.reshape(-1, labels.shape[-1])
        c = self.au_classes
        if labels.shape[-1] != c:
            raise ValueError(f"objective.au_classes={c} but the shards carry {labels.shape[-1]} AU labels")
        logits = torch.cat([outputs["au_logits1"].reshape(-1, c), outputs["au_logits2"].reshape(-1, c)])
        loss = supervised_loss(logits, torch.cat([labels, labels]), self.max_pos_weight)
        with torch.no_grad():
            acc = ((logits > 0).float() == torch.cat([labels, labels])).float().mean()
        return loss, {"bce": loss.detach(), "label_acc": acc}
