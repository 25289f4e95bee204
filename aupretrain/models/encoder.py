"""AUEncoder (trunk + AU head + identity head + preprocessing) and the pretraining model around it."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .cir import CIRRequest, cir_forward
from .decoder import MomentumBranch, build_decoder
from .resnet import ResNetTrunk


class AUEncoder(nn.Module):
    """frames -> AU code `a` (what AU detection uses) and identity/appearance code `p`.

    `encode(frames_uint8)` takes RGB uint8 [N, H, W, 3] (any size) and applies the same resize and
    normalisation as training; `forward` takes normalised float [N, 3, S, S].
    """

    def __init__(self, model_cfg: dict[str, Any], input_size: int):
        super().__init__()
        c = dict(model_cfg)
        self.config = {**c, "input_size": int(input_size)}
        self.input_size = int(input_size)
        self.trunk = ResNetTrunk(tuple(c["widths"]), tuple(c["blocks"]), c["stem_width"], c["stem_stride"],
                                 c["stem_pool"], c["norm"], c["norm_groups"])
        d = self.trunk.out_dim
        g = int(c.get("au_grid", 0))
        # AU code from a coarse spatial grid of the feature map: AUs are local (brows, lids, lip corners),
        # so where a feature fires matters; the identity code is global (average-pooled).
        self.au_head = nn.Sequential(nn.AdaptiveAvgPool2d(g), nn.Flatten(), nn.Linear(d * g * g, c["au_dim"])) if g else \
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(d, c["au_dim"]))
        self.id_head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(d, c["id_dim"]))
        self.register_buffer("mean", torch.tensor(c["mean"]).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(c["std"]).view(1, 3, 1, 1) * 255.0, persistent=False)

    @property
    def au_dim(self) -> int:
        return self.au_head[-1].out_features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {"a": self.au_head(h), "p": self.id_head(h)}

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """RGB uint8 [N, H, W, 3] -> normalised float [N, 3, S, S]."""
        x = frames.permute(0, 3, 1, 2).float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """AU codes [N, au_dim] of RGB uint8 frames [N, H, W, 3]."""
        dev = next(self.parameters()).device
        out = [self(self.preprocess(frames[i:i + batch_size].to(dev)))["a"].float().cpu()
               for i in range(0, len(frames), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.au_dim)


class PretrainModel(nn.Module):
    """Encoder + projector g (a -> unit-norm contrastive embedding z), and the parts an objective asks for:
    a decoder (CIR), a momentum branch with its queue (MoCo), an AU classifier (supervised bound).
    No distribution logic here: the engine gathers and feeds keys across ranks.
    """

    def __init__(self, model_cfg: dict[str, Any], input_size: int, decoder: bool = False,
                 momentum: dict[str, Any] | None = None, au_classes: int = 0):
        super().__init__()
        c = dict(model_cfg)
        self.encoder = AUEncoder(c, input_size)
        self.projector = nn.Sequential(nn.Linear(c["au_dim"], c["proj_hidden"]), nn.ReLU(inplace=True),
                                       nn.Linear(c["proj_hidden"], c["proj_dim"]))
        self.decoder = build_decoder(c, input_size) if decoder else None
        self.momentum = MomentumBranch(self.encoder, self.projector, int(momentum["queue_size"]), int(c["proj_dim"]),
                                       float(momentum["momentum"])) if momentum else None
        self.classifier = nn.Linear(c["au_dim"], au_classes) if au_classes else None

    def _codes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.encoder(images)
        return out["a"], out["p"]

    def forward(self, clips: torch.Tensor, cir: CIRRequest | None = None) -> dict[str, Any]:
        """clips [N, T, 3, S, S] (N = 2B: view 1 then view 2 of B clips) -> a, p [N, T, D], z [N, T, d] (unit
        norm); with a CIR request also `cir` (the reconstruction pass on view 1); with a momentum branch
        `k` [N, T, d] (momentum keys) and `queue` [M, d]; with a classifier `au_logits` [N, T, C]."""
        n, t = clips.shape[:2]
        frames = clips.flatten(0, 1)
        out = self.encoder(frames)
        z = F.normalize(self.projector(out["a"]), dim=-1)
        res: dict[str, Any] = {"a": out["a"].view(n, t, -1), "p": out["p"].view(n, t, -1), "z": z.view(n, t, -1)}
        if cir is not None:
            if self.decoder is None:
                raise ValueError("a CIR request needs the model built with decoder=True")
            b = cir.partner.shape[0]
            res["cir"] = cir_forward(self._codes, self.decoder, clips[:b], res["a"][:b], res["p"][:b], cir)
        if self.momentum is not None:
            res["k"] = self.momentum.keys(frames).view(n, t, -1)
            res["queue"] = self.momentum.negatives()
        if self.classifier is not None:
            res["au_logits"] = self.classifier(out["a"]).view(n, t, -1)
        return res

    @torch.no_grad()
    def after_step(self, keys: torch.Tensor | None) -> None:
        """After an optimizer step: EMA-update the momentum branch and enqueue the keys of every rank."""
        if self.momentum is not None:
            self.momentum.update(self.encoder, self.projector)
            if keys is not None:
                self.momentum.enqueue(keys)


def save_encoder(encoder: AUEncoder, path, extra: dict | None = None) -> None:
    torch.save({"format": "aupretrain-encoder/1", "config": encoder.config,
                "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}, **(extra or {})}, path)


def load_encoder(path, map_location: str = "cpu") -> AUEncoder:
    """Load an exported encoder (`<run>/encoder.pt`) for feature extraction or fine-tuning.

    The file is read with `torch.load(weights_only=True)`: tensors, numbers, strings, lists and dicts only,
    so a file carrying any other pickled object is refused (`pickle.UnpicklingError`) instead of running it.

    Raises:
        pickle.UnpicklingError: the file holds objects other than plain data.
        ValueError: not an aupretrain encoder file.
    """
    ck = torch.load(path, map_location=map_location, weights_only=True)
    if ck.get("format") != "aupretrain-encoder/1":
        raise ValueError(f"{path}: not an aupretrain encoder file (format={ck.get('format')!r})")
    cfg = dict(ck["config"])
    enc = AUEncoder(cfg, cfg.pop("input_size"))
    enc.load_state_dict(ck["state_dict"])
    return enc.eval()
