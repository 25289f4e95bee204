"""Objectives: pure functions of tensors (no process groups). The engine gathers keys across ranks.

`build_objective(cfg.objective)` returns one of: tcl, clp (TCL + CIR), simclr, moco, supervised.
The contract (global term over gathered keys + local per-clip term) is in `base.py`.
"""
from __future__ import annotations

from typing import Any

from .base import Objective, split_views
from .cir import CLPObjective, cir_loss, cir_terms
from .moco import MoCoObjective, moco_loss
from .supervised import SupervisedObjective, supervised_loss
from .tcl import SimCLRObjective, TCLObjective, ranking_loss, tcl_logits, tcl_loss

OBJECTIVES = {o.name: o for o in (TCLObjective, CLPObjective, SimCLRObjective, MoCoObjective, SupervisedObjective)}


def build_objective(cfg: Any) -> Objective:
    """The objective `cfg.name` names (tcl, clp, simclr, moco, supervised), built from `cfg` (the `objective` config
    section; a constructor may raise ValueError for a bad setting). Raises ValueError naming the available ones for an
    unknown name."""
    try:
        return OBJECTIVES[cfg.name](cfg)
    except KeyError:
        raise ValueError(f"unknown objective {cfg.name!r}; available: {sorted(OBJECTIVES)}") from None


__all__ = ["OBJECTIVES", "Objective", "build_objective", "cir_loss", "cir_terms", "moco_loss", "ranking_loss",
           "split_views", "supervised_loss", "tcl_logits", "tcl_loss"]
