"""One optimizer step: forward, gathered negatives, contrastive-correct gradient accumulation, backward.

With k micro-batches per step (DeepSpeed's `gradient_accumulation_steps`), plain accumulation would
score each micro-batch only against its own negatives. Instead (as OpenCLIP's accum-freq does):

1. forward every micro-batch without gradient and cache the features of the objective's global term;
2. for each micro-batch j: forward it again with gradient, put its live features in place of its cached
   ones, gather keys from every rank (with gradient), and compute the global loss of *all* k micro-batches'
   anchors against all keys, plus micro-batch j's local (per-clip) terms divided by k; backward.

Micro-step j then yields exactly dL/df_j * df_j/dtheta of the loss L of the whole accumulated batch, and the
k backward passes sum to the gradient of one batch k times the size (`engine.backward(...,
scale_wrt_gas=False)`: every micro-step already carries the full loss, so DeepSpeed must not divide by k).
Forward passes must be deterministic (no dropout; GroupNorm, not BatchNorm) for the cache to match.
"""
from __future__ import annotations

from typing import Any

import torch

from ..objectives.base import Objective, split_views
from .distributed import gather_no_grad, gather_with_grad


def input_dtype(engine) -> torch.dtype | None:
    """DeepSpeed's bf16/fp16 modes hold the module's parameters in that type and do not cast inputs."""
    if getattr(engine, "bfloat16_enabled", lambda: False)():
        return torch.bfloat16
    if getattr(engine, "fp16_enabled", lambda: False)():
        return torch.float16
    return None


def join_views(batch: dict[str, Any], device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Both views as one [2B, T, 3, S, S] input on `device`. Views laid out channels-last in memory (the DALI
    reader's: `stride(-3) == 1`) are joined in that layout, which the model's channels-last convolutions read
    without a copy; others are joined as they are."""
    v1, v2 = batch["view1"], batch["view2"]
    if v1.stride(-3) == 1 and v2.stride(-3) == 1:
        x = torch.cat([v1.movedim(-3, -1), v2.movedim(-3, -1)]).movedim(-1, -3)
    else:
        x = torch.cat([v1, v2])
    return x.to(device, dtype=dtype, non_blocking=True)


def _add(parts_sum: dict[str, torch.Tensor], parts: dict[str, torch.Tensor], scale: float) -> None:
    for name, v in parts.items():
        v = v.detach().float() * scale
        parts_sum[name] = parts_sum[name] + v if name in parts_sum else v


def train_step(engine, objective: Objective, batches: list[dict[str, Any]], rank: int
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the k = len(batches) micro-steps of one optimizer step on this rank.

    `engine` is a DeepSpeed engine around an `aupretrain.methods.Method` (forward, backward(loss, scale_wrt_gas=...), step()) configured with
    gradient_accumulation_steps = k. Returns the loss of the whole step (detached) and its named parts.
    """
    k = len(batches)
    b = batches[0]["view1"].shape[0]
    t = batches[0]["view1"].shape[1]
    device, dtype = engine.device, input_dtype(engine)
    cache: list[dict[str, torch.Tensor]] = []
    if objective.has_global and k > 1:
        with torch.no_grad():
            for batch in batches:  # features only: no decoder pass, no request
                out = engine(join_views(batch, device, dtype))
                cache.append({n: v.detach() for n, v in objective.features(split_views(out, b)).items()})
    method = engine.module
    total = torch.zeros((), device=device)
    parts: dict[str, torch.Tensor] = {}
    queued: list[torch.Tensor] = []
    for j, batch in enumerate(batches):
        outputs = split_views(engine(join_views(batch, device, dtype), **method.request(batch, t)), b)
        loss = None
        if objective.has_global:
            feats = objective.features(outputs)
            if k > 1:
                feats = {n: torch.cat([v if i == j else cache[i][n] for i in range(k)]) for n, v in feats.items()}
            loss, global_parts = objective.global_loss(feats, gather_with_grad(objective.keys(feats)), rank * k * b)
            if j == 0:  # the same value in every micro-step
                total = total + loss.detach()
                _add(parts, global_parts, 1.0)
        local, local_parts = objective.local_loss(outputs, batch)
        if local is not None:
            loss = local / k if loss is None else loss + local / k
            total = total + local.detach() / k
            _add(parts, local_parts, 1.0 / k)
        step_inputs = objective.after_step_inputs(outputs)
        if step_inputs is not None:
            queued.append(step_inputs)
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()
    method.after_step(gather_no_grad(torch.cat(queued)) if queued else None)
    return total, parts
