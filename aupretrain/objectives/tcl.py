"""Margin temporal contrastive loss (TCL) within clips: pure functions of tensors, no process groups.

For anchor frame t of clip b in view v, the positive is the same frame in the other view; negatives are
the other frames of the same clip with |t-u| > window (in the other view only unless `same_view_negatives`),
and every frame of every other clip of the global batch. An additive margin m is subtracted from the
positive cosine similarity:

    l = -log exp((s+ - m)/tau) / (exp((s+ - m)/tau) + sum_neg exp(s-/tau))

Why same-view neighbours are not negatives by default: frame t+1 of the anchor's own view shares the
anchor's crop, colour distortion and blur, and 80 ms of motion changes few pixels, so it is closer to the
anchor than the positive (the same frame under another distortion) and the task cannot be solved
(measured: `tcl_acc` ~ 0 all run). Other-view neighbours carry the same distortion as the positive, so the
only thing that tells the positive from them is what changed in the face between the frames (AUs, pose).

Near-duplicate negatives (`negative_min_change`, off by default): a face that holds its expression shows the
anchor's own AUs in the clip's other frames, and a negative that is the anchor's own image up to sensor noise
asks the code to tell identical faces apart (measured on the synthetic renderer: 47 % of the in-clip pairs of
4-frame clips at stride 4 differ by at most 0.05 in every AU). The method measures, label-free, how much two
frames of a clip differ where they differ most (`aupretrain.methods.base.frame_change`: the largest mean absolute
difference over a grid of patches, since AUs are local); same-clip negatives below the threshold are masked out
of the denominator, as supervised-contrastive and debiased-contrastive losses drop likely false negatives
(Khosla et al., NeurIPS 2020; Chuang et al., NeurIPS 2020). Head motion changes every patch, so the mask only
finds held expressions in stabilised faces (docs/method.md).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Objective


def tcl_logits(anchors: torch.Tensor, keys: torch.Tensor, offset: int, view: int, temperature: float, margin: float,
               window: int, cross_clip_weight: float = 1.0, same_view_negatives: bool = False,
               change: torch.Tensor | None = None, min_change: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of local anchors against all keys, with masking and margin applied; and the positive index.

    anchors: [B, T, d] unit-norm embeddings of this rank's clips in `view` (0 or 1).
    keys:    [G, 2, T, d] unit-norm embeddings of every clip of the global batch, both views; this rank's
             clips are keys[offset:offset + B].
    change:  [B, T, T] `frame_change` of this rank's clips (optional); with min_change > 0, same-clip frames
             that differ from the anchor's frame by less than min_change are not negatives.
    Returns logits [B*T, G*2*T] (fp32; masked keys at -inf) and the positive's column [B*T].
    """
    b, t, d = anchors.shape
    g = keys.shape[0]
    dev = anchors.device
    dtype = torch.promote_types(anchors.dtype, torch.float32)  # fp32 logits and softmax also under bf16/fp16
    anchors, keys = anchors.to(dtype), keys.to(dtype)
    logits = (anchors.reshape(b * t, d) @ keys.reshape(g * 2 * t, d).T / temperature).view(b, t, g, 2, t)
    # Masks and margin only touch each anchor's own clip: a [T, 2, T] pattern (anchor frame, key view, key
    # frame) applied to the diagonal blocks, so no [B*T, G*2*T] index or mask tensors are ever built.
    i = torch.arange(t, device=dev)
    dt = (i[:, None, None] - i[None, None, :]).abs()  # [t, 1, t]
    positive = (torch.arange(2, device=dev)[None, :, None] == 1 - view) & (dt == 0)  # [t, 2, t]
    excluded = (dt <= window) & ~positive  # self, and neighbours inside the temporal window
    if not same_view_negatives:  # the anchor's own view of its clip holds no negatives
        excluded = excluded | (torch.arange(2, device=dev)[None, :, None] == view).expand(t, 2, t)
    if change is not None and min_change > 0:  # [b, t, 1, t]: near-duplicates of the anchor's frame
        excluded = excluded | ((change.to(dev)[:, :, None, :] < min_change) & ~positive)
    own = torch.arange(b, device=dev)
    block = logits[own, :, offset + own].masked_fill(excluded, float("-inf")) - positive.to(logits.dtype) * (margin / temperature)
    if cross_clip_weight <= 0:  # negatives from the same clip only
        logits = torch.full_like(logits, float("-inf"))
    elif cross_clip_weight != 1:  # weight w on each other-clip term of the denominator: + log w on its logit
        logits = logits + math.log(cross_clip_weight)
    logits[own, :, offset + own] = block
    a = torch.arange(b * t, device=dev)
    target = ((offset + a // t) * 2 + (1 - view)) * t + a % t
    return logits.view(b * t, g * 2 * t), target


def ranking_loss(z: torch.Tensor, margin: float) -> torch.Tensor:
    """Temporal ranking within a clip: frames closer in time must be more similar to the anchor.

    z: [B, T, d]. For anchor t and frames u, w with |t-u| < |t-w|: max(0, margin - (s(t,u) - s(t,w))).
    """
    b, t, _ = z.shape
    z = z.float()
    s = torch.einsum("btd,bud->btu", z, z)
    idx = torch.arange(t, device=z.device)
    dist = (idx[:, None] - idx[None, :]).abs()  # [t, u]
    valid = (dist[:, :, None] < dist[:, None, :]) & (dist[:, :, None] > 0)  # [t, u, w]
    if not valid.any():
        return z.sum() * 0
    hinge = F.relu(margin - (s[:, :, :, None] - s[:, :, None, :]))  # [b, t, u, w]
    return hinge[:, valid].mean()


def tcl_loss(z1: torch.Tensor, z2: torch.Tensor, keys: torch.Tensor, offset: int, temperature: float = 0.1,
             margin: float = 0.2, window: int = 0, symmetric: bool = True, rank_weight: float = 0.0,
             rank_margin: float = 0.05, cross_clip_weight: float = 1.0, same_view_negatives: bool = False,
             change: torch.Tensor | None = None, min_change: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TCL loss of this rank's anchors (mean over anchors). Returns (loss, named parts).

    z1, z2: [B, T, d] the two views' embeddings; change: [B, T, T] `frame_change` (used with min_change > 0).
    Parts: `tcl` (the InfoNCE term), `tcl_acc` (fraction of anchors whose most similar unmasked key, margin
    removed, is their positive: retrieval accuracy over the whole global batch), `tcl_clip_acc` (the same
    among the keys of the anchor's own clip only: can the code tell frame t from the clip's other frames?
    chance = 1 / the number of unmasked keys of the clip) and, with min_change > 0, `tcl_near_duplicates`
    (the fraction of ordered same-clip frame pairs below min_change, masked as negatives)."""
    def direction(z, view):
        logits, target = tcl_logits(z, keys, offset, view, temperature, margin, window, cross_clip_weight,
                                    same_view_negatives, change, min_change)
        with torch.no_grad():  # retrieval diagnostics on the similarities without the margin
            raw = logits + F.one_hot(target, logits.shape[1]) * (margin / temperature)
            acc = (raw.argmax(1) == target).float().mean()
            n, t2 = raw.shape[0], 2 * z.shape[1]
            own = raw.view(n, -1, t2).gather(1, (target // t2).view(n, 1, 1).expand(n, 1, t2)).squeeze(1)
            clip_acc = (own.argmax(1) == target % t2).float().mean()
        return F.cross_entropy(logits, target), torch.stack([acc, clip_acc])

    nce, acc = direction(z1, 0)
    if symmetric:
        nce2, acc2 = direction(z2, 1)
        nce, acc = 0.5 * (nce + nce2), 0.5 * (acc + acc2)
    parts = {"tcl": nce.detach(), "tcl_acc": acc[0], "tcl_clip_acc": acc[1]}
    if change is not None and min_change > 0:
        t = change.shape[1]
        off_diagonal = ~torch.eye(t, dtype=torch.bool, device=change.device)
        parts["tcl_near_duplicates"] = (change[:, off_diagonal] < min_change).float().mean()
    loss = nce
    if rank_weight > 0:
        r = 0.5 * (ranking_loss(z1, rank_margin) + ranking_loss(z2, rank_margin))
        parts["rank"] = r.detach()
        loss = loss + rank_weight * r
    return loss, parts


class TCLObjective(Objective):
    """Margin temporal contrastive learning within clips (global term) + optional ranking term (local).

    With `cross_clip_weight` <= 0 (negatives from the anchor's own clip only) no anchor's loss reads another
    clip's keys: TCL is then a local term, a mean over this rank's clips (`has_global` False), with the same loss
    and gradients as the global term whose other clips' logits are all -inf — and the engine gathers no keys
    across ranks and, under gradient accumulation, runs no extra forward pass to cache the other micro-batches'
    features (`engine.step.train_step`)."""

    name = "tcl"
    has_global = True

    def __init__(self, cfg: Any):
        self.temperature = float(cfg.temperature)
        self.margin = float(cfg.margin)
        self.window = int(cfg.window)
        self.symmetric = bool(cfg.symmetric)
        self.rank_weight = float(cfg.rank_weight)
        self.rank_margin = float(cfg.rank_margin)
        self.cross_clip_weight = float(cfg.cross_clip_weight)
        self.same_view_negatives = bool(cfg.get("same_view_negatives", False))
        self.min_change = float(cfg.get("negative_min_change", 0.0))
        self.has_global = self.cross_clip_weight > 0  # own-clip negatives only: a local term

    def features(self, outputs):
        """z1, z2 [B, T, d]; and `change` [B, T, T] when the method measured it (`negative_min_change` > 0)."""
        feats = {"z1": outputs["z1"], "z2": outputs["z2"]}
        if self.min_change > 0:
            if "change" not in outputs:
                raise ValueError("objective.negative_min_change > 0 needs the method's frame change (outputs['change'])")
            feats["change"] = outputs["change"]
        return feats

    def keys(self, features):
        """z of both views, [B, 2, T, d]."""
        return torch.stack([features["z1"], features["z2"]], dim=1)

    def global_loss(self, features, keys, offset):
        return tcl_loss(features["z1"], features["z2"], keys, offset, self.temperature, self.margin, self.window,
                        self.symmetric, 0.0, self.rank_margin, self.cross_clip_weight, self.same_view_negatives,
                        features.get("change"), self.min_change)

    def local_loss(self, outputs, batch):
        """The ranking term (`rank_weight` > 0) and, with own-clip negatives only (`has_global` False), TCL itself:
        `global_loss` against this micro-batch's own keys (offset 0). None when there is neither."""
        loss, parts = None, {}
        if not self.has_global:
            feats = self.features(outputs)
            loss, parts = self.global_loss(feats, self.keys(feats), 0)
        if self.rank_weight > 0:
            r = 0.5 * (ranking_loss(outputs["z1"], self.rank_margin) + ranking_loss(outputs["z2"], self.rank_margin))
            loss = self.rank_weight * r if loss is None else loss + self.rank_weight * r
            parts = {**parts, "rank": r.detach()}
        return loss, parts


class SimCLRObjective(TCLObjective):
    """SimCLR baseline: NT-Xent with every frame an instance (positive = the same frame in the other view,
    negatives = every other frame of the global batch in both views). It is TCL with no margin, no ranking term
    and full-weight negatives, so both share one tested implementation. `cfg.window` (default 0) leaves the
    anchor's own-clip frames with |t-u| <= window out of the negatives: at >= T-1 only other clips' frames are
    negatives, as when SimCLR (Chen et al., ICML 2020) draws one frame per video."""

    name = "simclr"

    def __init__(self, cfg: Any):
        self.temperature = float(cfg.temperature)
        self.margin, self.window, self.symmetric = 0.0, int(cfg.get("window", 0)), True
        self.rank_weight, self.rank_margin, self.cross_clip_weight = 0.0, 0.0, 1.0
        self.same_view_negatives = True  # every other frame of the batch, both views, is a negative
        self.min_change = 0.0

    def global_loss(self, features, keys, offset):
        loss, parts = super().global_loss(features, keys, offset)
        return loss, {"nt_xent": parts["tcl"], "acc": parts["tcl_acc"], "clip_acc": parts["tcl_clip_acc"]}
