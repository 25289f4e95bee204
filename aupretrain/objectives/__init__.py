"""Objectives: pure functions of tensors (no process groups). The engine gathers keys across ranks.

Contract: `loss, parts = objective(outputs, batch, keys, offset)` where `outputs` is the model output of
this rank's clips for both views, `keys` what `objective.keys(outputs)` returned, gathered from every rank
(with gradient) and concatenated in rank order, and `offset` the index of this rank's first clip in it.
`parts` are detached named terms the engine logs as train/<name>.
"""
from __future__ import annotations

from typing import Any

import torch

from .tcl import ranking_loss, tcl_logits, tcl_loss


class TCLObjective:
    name = "tcl"

    def __init__(self, cfg: Any):
        self.temperature = float(cfg.temperature)
        self.margin = float(cfg.margin)
        self.window = int(cfg.window)
        self.symmetric = bool(cfg.symmetric)
        self.rank_weight = float(cfg.rank_weight)
        self.rank_margin = float(cfg.rank_margin)
        self.cross_clip_weight = float(cfg.cross_clip_weight)

    def keys(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What every rank contributes to the shared pool: z of both views, [B, 2, T, d]."""
        return torch.stack([outputs["z1"], outputs["z2"]], dim=1)

    def __call__(self, outputs, batch, keys, offset):
        return tcl_loss(outputs["z1"], outputs["z2"], keys, offset, self.temperature, self.margin, self.window,
                        self.symmetric, self.rank_weight, self.rank_margin, self.cross_clip_weight)


class SimCLRObjective(TCLObjective):
    """SimCLR baseline: NT-Xent with every frame an instance (positive = the same frame in the other view,
    negatives = every other frame of the global batch in both views). It is TCL with no margin, no temporal
    window, no ranking term and full-weight negatives, so both share one tested implementation."""

    name = "simclr"

    def __init__(self, cfg: Any):
        self.temperature = float(cfg.temperature)
        self.margin, self.window, self.symmetric = 0.0, 0, True
        self.rank_weight, self.rank_margin, self.cross_clip_weight = 0.0, 0.0, 1.0

    def __call__(self, outputs, batch, keys, offset):
        loss, parts = super().__call__(outputs, batch, keys, offset)
        return loss, {"nt_xent": parts["tcl"], "acc": parts["tcl_acc"]}


OBJECTIVES = {"tcl": TCLObjective, "simclr": SimCLRObjective}


def build_objective(cfg: Any):
    try:
        return OBJECTIVES[cfg.name](cfg)
    except KeyError:
        raise ValueError(f"unknown objective {cfg.name!r}; available: {sorted(OBJECTIVES)}") from None


__all__ = ["build_objective", "ranking_loss", "tcl_logits", "tcl_loss", "OBJECTIVES"]
