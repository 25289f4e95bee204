"""MoCo v2 baseline: queries from the online encoder, keys from the momentum encoder, a queue of past
keys (from every rank) as negatives. Every frame is an instance, as in the SimCLR baseline.

    l = -log exp(q.k+/tau) / (exp(q.k+/tau) + sum_{n in queue} exp(q.n/tau))

Symmetric by default (q of view 1 against k of view 2 and the reverse). The queue and the EMA update
live in the method's momentum branch (`aupretrain.methods.moco`); the engine enqueues the keys gathered from all ranks after each
optimizer step — the view-2 keys only, since both views' keys of a frame are near-duplicates. As in MoCo
the queue starts as random unit vectors.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .base import Objective


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k [N, d] unit-norm (k without grad), queue [M, d]. Returns (loss, top-1 accuracy)."""
    q, k, queue = q.float(), k.float(), queue.float()  # fp32 logits also under bf16/fp16 training
    pos = (q * k.detach()).sum(-1, keepdim=True)
    logits = torch.cat([pos, q @ queue.detach().T], dim=1) / temperature
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    acc = (logits.detach().argmax(1) == 0).float().mean()
    return F.cross_entropy(logits, target), acc


class MoCoObjective(Objective):
    """MoCo v2 (He et al., CVPR 2020; Chen et al. 2020), local term only: `moco_loss` of the queries z1 [..., d]
    against the momentum keys k2 of the other view and `outputs["queue"]` [M, d] (every frame an instance; averaged
    with q2 against k1 when `objective.symmetric`) at `objective.temperature`. Parts: `moco`, `moco_acc` (top-1 of
    the positive). `after_step_inputs`: the view-2 keys [N, d], detached, for the queue."""
    name = "moco"
    has_global = False  # negatives come from the queue (already holding every rank's keys)

    def __init__(self, cfg: Any):
        self.temperature = float(cfg.temperature)
        self.symmetric = bool(cfg.symmetric)

    def local_loss(self, outputs, batch):
        d = outputs["z1"].shape[-1]
        q1, q2 = outputs["z1"].reshape(-1, d), outputs["z2"].reshape(-1, d)
        k1, k2 = outputs["k1"].reshape(-1, d), outputs["k2"].reshape(-1, d)
        loss, acc = moco_loss(q1, k2, outputs["queue"], self.temperature)
        if self.symmetric:
            loss2, acc2 = moco_loss(q2, k1, outputs["queue"], self.temperature)
            loss, acc = 0.5 * (loss + loss2), 0.5 * (acc + acc2)
        return loss, {"moco": loss.detach(), "moco_acc": acc}

    def after_step_inputs(self, outputs):
        return outputs["k2"].reshape(-1, outputs["k2"].shape[-1]).detach()
