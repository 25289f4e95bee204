"""Decoder D(a, p) -> image for cross-identity reconstruction (CIR), and the MoCo momentum branch.

The decoder maps an AU code `a` and an identity code `p` to a normalised image [N, 3, S, S]: a linear
layer to a small feature map, then upsampling stages (nearest x2 + 3x3 conv + norm + ReLU), then a 3x3
conv to RGB. Its output lives in the same normalised space as the encoder's input, so reconstruction
targets are the (augmented, normalised) training views themselves.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import norm_layer


class Decoder(nn.Module):
    def __init__(self, au_dim: int, id_dim: int, output_size: int, widths=(256, 128, 64, 32), start: int = 4,
                 norm: str = "group", norm_groups: int = 8, channels_last: bool = False):
        super().__init__()
        self.channels_last = bool(channels_last)
        widths = tuple(int(w) for w in widths)
        self.output_size = int(output_size)
        self.start = int(start)
        self.fc = nn.Linear(au_dim + id_dim, widths[0] * start * start)
        layers: list[nn.Module] = []
        size, cin = start, widths[0]
        for w in widths[1:]:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, w, 3, 1, 1, bias=False),
                       norm_layer(norm, w, norm_groups), nn.ReLU(inplace=True)]
            size, cin = size * 2, w
        while size < self.output_size:  # more stages at the last width until the output size is reached
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cin, 3, 1, 1, bias=False),
                       norm_layer(norm, cin, norm_groups), nn.ReLU(inplace=True)]
            size *= 2
        self.body = nn.Sequential(*layers)
        self.to_rgb = nn.Conv2d(cin, 3, 3, 1, 1)
        self.width0 = widths[0]

    def forward(self, a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """a [N, au_dim], p [N, id_dim] -> image [N, 3, S, S] (normalised like the encoder's input)."""
        h = self.fc(torch.cat([a, p], dim=-1)).view(a.shape[0], self.width0, self.start, self.start)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        x = self.to_rgb(self.body(torch.relu(h)))
        if x.shape[-1] != self.output_size:  # sizes that are not start * 2^k
            x = F.interpolate(x, size=(self.output_size, self.output_size), mode="bilinear", align_corners=False)
        return x


def build_decoder(model_cfg: dict[str, Any], input_size: int) -> Decoder:
    c = model_cfg["decoder"]
    return Decoder(int(model_cfg["au_dim"]), int(model_cfg["id_dim"]), input_size, c["widths"], c["start"],
                   model_cfg["norm"], int(c["norm_groups"]),
                   bool(model_cfg.get("channels_last", False)))


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
