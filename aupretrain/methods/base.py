"""The method module every objective trains: the AU encoder, the projector g, and the hooks a method with
extra modules overrides (solo-learn's `BaseMethod`; here the losses stay in `aupretrain.objectives`).

A method is an `nn.Module` the engine hands to DeepSpeed. It carries no distribution logic: the engine
gathers keys across ranks and passes them to `after_step`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.encoder import AUEncoder


@torch.no_grad()
def frame_change(clips: torch.Tensor, std: tuple[float, float, float] | torch.Tensor, grid: int = 8) -> torch.Tensor:
    """How much each pair of a clip's frames differs where it differs most, label-free.

    clips: [N, T, 3, S, S] normalised frames (x - mean) / std of one view each (the frames of one view share
    their crop and colour draw, so their differences are the face's own); std: the normalisation's per-channel
    std. Returns [N, T, T] (symmetric, zero diagonal): the largest, over a grid x grid tiling of the frame, of
    the patches' mean absolute difference in pixel units of [0, 1] (channel mean). Computed one frame pair at a
    time, so memory stays at one [N, 3, S, S] difference. Raises ValueError if S < grid.
    """
    n, t, _, s, _ = clips.shape
    if s < grid:
        raise ValueError(f"frame_change: frames of {s} px cannot be tiled by a {grid} x {grid} grid")
    scale = torch.as_tensor(std, dtype=torch.float32, device=clips.device).view(1, 3, 1, 1)
    out = torch.zeros(n, t, t, device=clips.device)
    for i in range(t):
        for j in range(i + 1, t):
            d = ((clips[:, i].float() - clips[:, j].float()).abs() * scale).mean(1, keepdim=True)
            m = F.adaptive_avg_pool2d(d, grid).flatten(1).amax(1)
            out[:, i, j] = out[:, j, i] = m
    return out


class Method(nn.Module):
    """Encoder + projector g (AU code `a` -> unit-norm contrastive embedding `z`): TCL and SimCLR as they are.

    Args:
        model_cfg: the `model` config (encoder widths, code sizes, projector sizes; `aupretrain/configs/model/`).
        input_size: side of the square input in pixels.
        objective_cfg: the `objective` config (read by methods with extra modules; with
            `negative_min_change` > 0 `forward` also measures the frames' `change` for TCL's near-duplicate mask).
    """

    def __init__(self, model_cfg: dict[str, Any], input_size: int, objective_cfg: Any = None):
        super().__init__()
        c = dict(model_cfg)
        self.encoder = AUEncoder(c, input_size)
        self.projector = nn.Sequential(nn.Linear(c["au_dim"], c["proj_hidden"]), nn.ReLU(inplace=True),
                                       nn.Linear(c["proj_hidden"], c["proj_dim"]))
        # TCL's near-duplicate mask needs the frames' change in pixel units: the input normalisation's std
        masking = float((objective_cfg or {}).get("negative_min_change") or 0) > 0
        self.input_std = tuple(map(float, c["std"])) if masking else None

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Refuse settings this method cannot train with (`UsageError`), before any model is built."""

    def request(self, batch: dict[str, Any], clip_len: int) -> dict[str, Any]:
        """Keyword arguments for `forward` on this batch (what the extra modules need from the loader)."""
        return {}

    def codes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [N, 3, S, S] (normalised) -> (a [N, au_dim], p [N, id_dim]). The images are cast to the encoder's
        weight dtype: a decoder's output re-encoded (CIR's cycle) may come back in fp32 beside bf16/fp16 weights."""
        out = self.encoder(images.to(next(self.encoder.parameters()).dtype))
        return out["a"], out["p"]

    def forward(self, clips: torch.Tensor, **request: Any) -> dict[str, Any]:
        """clips [N, T, 3, S, S] (N = 2B: view 1 then view 2 of B clips) -> a, p [N, T, D] and z [N, T, d]
        (unit norm), plus what `extra` adds; with `negative_min_change` set, `change` [B, T, T]: `frame_change` of the
        two views, averaged."""
        n, t = clips.shape[:2]
        frames = clips.flatten(0, 1)
        out = self.encoder(frames)
        z = F.normalize(self.projector(out["a"]), dim=-1)
        res: dict[str, Any] = {"a": out["a"].view(n, t, -1), "p": out["p"].view(n, t, -1), "z": z.view(n, t, -1)}
        if self.input_std is not None:
            change = frame_change(clips, self.input_std)
            res["change"] = 0.5 * (change[: n // 2] + change[n // 2:])
        res.update(self.extra(clips, frames, out, res, **request))
        return res

    def extra(self, clips: torch.Tensor, frames: torch.Tensor, out: dict[str, torch.Tensor],
              res: dict[str, Any], **request: Any) -> dict[str, Any]:
        """Outputs of the method's own modules (frames = clips flattened to [N*T, 3, S, S])."""
        if request:
            raise ValueError(f"{type(self).__name__} takes no request, got {sorted(request)}")
        return {}

    def au_head(self) -> dict[str, torch.Tensor] | None:
        """The method's own AU classifier on the AU code as a linear AU head's tensors (`bn.*`, `linear.*`;
        `aupretrain.models.head`), written to `<run>/au_head` at the end of training; None: it has none."""
        return None

    def clean_fit_steps(self) -> int:
        """How many optimizer steps' worth of un-augmented clips the method's label-free targets still need before
        step 1 (the engine reads them: `engine.prefit.fit_on_clean_clips`); 0 (the default): none."""
        return 0

    @torch.no_grad()
    def clean_fit_inputs(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [N, T, 3, S, S] (normalised, un-augmented) -> what `after_step` accumulates once gathered from every
        rank. Only called while `clean_fit_steps` > 0; NotImplementedError for a method without such a fit."""
        raise NotImplementedError(f"{type(self).__name__} fits nothing on clean clips")

    @torch.no_grad()
    def after_step(self, keys: torch.Tensor | None) -> None:
        """After each optimizer step; `keys` are the objective's momentum keys gathered from every rank."""
