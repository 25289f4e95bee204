"""The objective contract shared by TCL, CLP, SimCLR, MoCo and the supervised bound.

An objective splits its loss into two parts so the engine can gather negatives across ranks and
accumulate gradients without losing any of them:

- the **global** term couples clips of the whole global batch (contrastive terms): it is computed from
  `features(outputs)` (per-clip tensors) of this rank's anchors against `keys` gathered from every rank;
  under gradient accumulation the engine caches the features of every micro-batch and recomputes one
  micro-batch at a time with gradient, so this term always sees the whole accumulated batch;
- the **local** term is a mean of per-clip terms (ranking, reconstruction, MoCo, supervised), computed
  on one micro-batch's outputs.

Everything here is a function of tensors: no process groups, no model calls. The modules whose outputs the
terms read (decoder, momentum branch, classifier) belong to the method (`aupretrain.methods`).
"""
from __future__ import annotations

from typing import Any

import torch

Parts = dict[str, torch.Tensor]
PER_VIEW = ("a", "p", "z", "k", "au_logits")  # model outputs with view 1 and view 2 stacked on dim 0


def split_views(out: dict[str, Any], b: int) -> dict[str, Any]:
    """Model output over [view1; view2] -> {"z1": .., "z2": .., ...}; other entries pass through."""
    res = {}
    for name, v in out.items():
        if name in PER_VIEW:
            res[f"{name}1"], res[f"{name}2"] = v[:b], v[b:]
        else:
            res[name] = v
    return res


def zero_like(ref: torch.Tensor) -> torch.Tensor:
    """A zero loss connected to `ref`'s graph (keeps every rank's backward identical)."""
    return ref.sum() * 0.0


class Objective:
    """Base of the objectives (the contract of the module docstring). A subclass sets `name` (its `objective.name`)
    and `has_global`; with a global term it implements `features`, `keys` and `global_loss`, and it may add a
    `local_loss`. The loss of a batch is the sum of the terms it has, a scalar tensor; `Parts` are detached named
    terms the engine logs as `train/<name>`. This base has neither term: its `__call__` returns (None, {})."""
    name = "base"
    has_global = False  # whether the objective has a term over the global batch (needs gathered keys)

    def features(self, outputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-clip tensors (dim 0 = clip) the global term needs; cached without grad under accumulation."""
        return {}

    def keys(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """What this rank contributes to the pool shared by all ranks (dim 0 = clip)."""
        raise NotImplementedError

    def global_loss(self, features: dict[str, torch.Tensor], keys: torch.Tensor, offset: int) -> tuple[torch.Tensor, Parts]:
        """Loss of this rank's anchors against all keys; `offset`: index of this rank's first clip in keys."""
        raise NotImplementedError

    def local_loss(self, outputs: dict[str, Any], batch: dict[str, Any]) -> tuple[torch.Tensor | None, Parts]:
        """Mean of per-clip terms over this micro-batch (None when the objective has none)."""
        return None, {}

    def after_step_inputs(self, outputs: dict[str, Any]) -> torch.Tensor | None:
        """What the method's `after_step` needs from every rank, dim 0 = clip (the engine gathers it across ranks
        and concatenates the micro-batches): MoCo's momentum keys [N, d]; CLP's view-1 HOG descriptors [N, T, Dh]
        while its within-clip HOG basis is being fitted. None: nothing."""
        return None

    def __call__(self, outputs: dict[str, Any], batch: dict[str, Any], gather=lambda k: k, offset: int = 0
                 ) -> tuple[torch.Tensor, Parts]:
        """The whole loss of one batch without accumulation (the engine's path for k = 1, and tests)."""
        loss, parts = None, {}
        if self.has_global:
            feats = self.features(outputs)
            loss, parts = self.global_loss(feats, gather(self.keys(feats)), offset)
        local, lp = self.local_loss(outputs, batch)
        if local is not None:
            loss = local if loss is None else loss + local
        return loss, {**parts, **lp}
