"""MoCo v2's method: the online encoder + projector, and its own momentum branch (EMA key encoder + queue).

He et al., "Momentum Contrast for Unsupervised Visual Representation Learning", CVPR 2020; Chen et al.,
"Improved Baselines with Momentum Contrastive Learning" (MoCo v2), 2020. The loss is
`aupretrain.objectives.moco`.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .base import Method


class MomentumBranch(nn.Module):
    """MoCo's key encoder (an EMA copy of encoder + projector, never trained by gradients) and its queue.

    The queue is a buffer, so it is saved and restored with the model. It starts as random unit vectors (as
    in MoCo); the engine feeds `enqueue` with the keys of every rank (gathered), so the queue's negatives are
    the same on every rank.
    """

    def __init__(self, encoder: nn.Module, projector: nn.Module, queue_size: int, dim: int, momentum: float):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.projector = copy.deepcopy(projector)
        for p in self.parameters():
            p.requires_grad_(False)
        self.momentum = float(momentum)
        self.register_buffer("queue", F.normalize(torch.randn(int(queue_size), dim), dim=-1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def keys(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, S, S] -> unit-norm keys [N, d] from the momentum encoder."""
        return F.normalize(self.projector(self.encoder(frames)["a"]), dim=-1)

    @torch.no_grad()
    def update(self, encoder: nn.Module, projector: nn.Module) -> None:
        """EMA step: theta_k <- m theta_k + (1 - m) theta_q."""
        m = self.momentum
        for online, target in ((encoder, self.encoder), (projector, self.projector)):
            for q, k in zip(online.parameters(), target.parameters()):
                k.mul_(m).add_(q.detach().to(k.dtype), alpha=1 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys [N, d] into the ring buffer (the newest N keys win when N exceeds its size)."""
        k = keys.detach().to(self.queue.dtype)[-self.queue.shape[0]:]
        n, size = k.shape[0], self.queue.shape[0]
        idx = (int(self.queue_ptr) + torch.arange(n, device=k.device)) % size
        self.queue[idx] = k
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)

    def negatives(self) -> torch.Tensor:
        """The queue [K, d] (a copy: the optimizer step must not see it change)."""
        return self.queue.detach().clone()


class MoCoMethod(Method):
    """Adds `k` [N, T, d] (momentum keys of every frame) and `queue` [K, d]; `after_step` runs the EMA update
    and enqueues the keys gathered from every rank. Settings: `objective.queue_size`, `objective.momentum`."""

    def __init__(self, model_cfg: dict[str, Any], input_size: int, objective_cfg: Any = None):
        super().__init__(model_cfg, input_size, objective_cfg)
        self.momentum = MomentumBranch(self.encoder, self.projector, int(objective_cfg["queue_size"]),
                                       int(model_cfg["proj_dim"]), float(objective_cfg["momentum"]))

    @classmethod
    def check(cls, cfg: Any) -> None:
        ds = cfg.deepspeed
        if int(ds.zero_optimization.stage) == 3:
            raise UsageError("objective=moco needs ZeRO stage 0, 1 or 2 (the EMA update reads the full online weights)")
        if ds.get("bf16", {}).get("enabled") or ds.get("fp16", {}).get("enabled"):
            raise UsageError("objective=moco with deepspeed.bf16/fp16: the key encoder's EMA (m=0.999) does not "
                             "move in 16-bit weights; use deepspeed.torch_autocast.enabled=true (fp32 weights, "
                             "bf16 compute)")

    def extra(self, clips, frames, out, res, **request):
        super().extra(clips, frames, out, res, **request)
        n, t = clips.shape[:2]
        return {"k": self.momentum.keys(frames).view(n, t, -1), "queue": self.momentum.negatives()}

    @torch.no_grad()
    def after_step(self, keys: torch.Tensor | None) -> None:
        self.momentum.update(self.encoder, self.projector)
        if keys is not None:
            self.momentum.enqueue(keys)
