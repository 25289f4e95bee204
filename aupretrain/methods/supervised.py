"""The supervised bound's method: the encoder + a linear AU classifier on the AU code (its own module)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models.head import linear_head_tensors
from .base import Method


class SupervisedMethod(Method):
    """Adds `au_logits` [N, T, C] = classifier(a); C = `objective.au_classes`."""

    def __init__(self, model_cfg: dict[str, Any], input_size: int, objective_cfg: Any = None,
                 au_classes: int | None = None):
        super().__init__(model_cfg, input_size, objective_cfg)
        c = int(au_classes if au_classes is not None else objective_cfg["au_classes"])
        self.classifier = nn.Linear(int(model_cfg["au_dim"]), c)

    def extra(self, clips, frames, out, res, **request):
        super().extra(clips, frames, out, res, **request)
        n, t = clips.shape[:2]
        return {"au_logits": self.classifier(out["a"]).view(n, t, -1)}

    def au_head(self) -> dict[str, torch.Tensor]:
        """The classifier trained on the pretraining labels as a linear AU head (an identity BatchNorm, then
        this Linear): `aupretrain-extract --head` and `aupretrain-eval --head` apply it as it is."""
        return linear_head_tensors(self.classifier)
