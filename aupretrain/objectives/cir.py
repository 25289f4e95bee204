"""Cross-identity reconstruction (CIR) losses and the CLP objective (TCL + CIR).

CLP's CIR pass (`aupretrain.methods.clp.cir_forward`) returns, per clip A and selected frame t,
the self reconstruction, the cross-identity image "A showing its partner B's AUs" re-encoded, and the
cycle reconstruction. The terms (all means over this rank's clips; clips without a partner of another
identity contribute only the self term):

    L_self  = |D(a_t^A, p_s^A) - x_t^A|_1
    L_cycle = |D(a(x_x), p_s^B) - x_t^B|_1
    L_au    = 1 - cos(a(x_x), sg(a_t^B))      AU consistency: B's AUs on A's face keep B's AU code
    L_id    = 1 - cos(p(x_x), sg(p_s^A))      identity consistency: the face stays A

sg = stop-gradient on the targets (`stop_grad_targets`, default on), so the consistency terms move the
codes of the synthesised image towards the real codes rather than both towards each other.

With a source-frame decoder (`cir.source_frame`) the parts also carry `rec_copy` = |x_s^A - x_t^A|_1, the self
term of a decoder that copies its source unchanged: `rec_self` below it means the AU code told the decoder
something about frame t. It is logged, never trained. With `cir.rec_blur` every L1 term compares blurred images.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .base import Objective, zero_like
from .hog import HOG_BASIS_CENTRES, hog_basis_terms, hog_change_terms
from .identity import between_clip_share, identity_confusion_terms
from .tcl import TCLObjective


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of the last two axes: x [..., C, H, W] float -> same shape; `sigma` in pixels, a
    kernel of 2·ceil(2σ)+1 taps, replicated borders; differentiable; x itself when sigma <= 0. (The loaders'
    `data.augment.blur_clips` blurs uint8-range views with OpenCV on CPU — not differentiable, so a loss cannot
    use it.)"""
    if sigma <= 0:
        return x
    r = max(1, math.ceil(2 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32, device=x.device) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).to(x.dtype)
    c, h, w = x.shape[-3:]
    y = x.reshape(-1, c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y.reshape(x.shape)


def _per_clip_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred.float() - target.float()).abs().flatten(1).mean(1)  # [B]


def _per_clip_cos(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (1 - F.cosine_similarity(pred.float(), target.float(), dim=-1)).mean(1)  # [B, F, D] -> [B]


def cir_terms(cir: dict[str, torch.Tensor], stop_grad_targets: bool = True, blur: float = 0.0
              ) -> dict[str, torch.Tensor]:
    """The four CIR terms, each a mean over this rank's clips (clips without a partner count as 0 in the
    partner terms, so every rank divides by the same B and the distributed mean is the global mean). `blur`:
    the reconstructions and their targets are compared after a Gaussian blur of that sigma (pixels,
    `cir.rec_blur`), so the frames' own pixel noise, which no code can predict, does not swamp the change."""
    valid = cir["valid"].float()
    b = valid.shape[0]
    sg = (lambda t: t.detach()) if stop_grad_targets else (lambda t: t)
    bl = lambda t: gaussian_blur(t.float(), blur)  # noqa: E731
    target_self = bl(cir["target_self"])  # blurred once: the self term and the copy floor share it
    return {
        "rec_self": _per_clip_l1(bl(cir["rec_self"]), target_self).mean(),
        "rec_cycle": (valid * _per_clip_l1(bl(cir["rec_cycle"]), bl(cir["target_cycle"]))).sum() / b,
        "au_consistency": (valid * _per_clip_cos(cir["a_cross"], sg(cir["a_target"]))).sum() / b,
        "id_consistency": (valid * _per_clip_cos(cir["p_cross"], sg(cir["p_target"]))).sum() / b,
        **({"rec_copy": _per_clip_l1(bl(cir["source_self"]), target_self).mean()} if "source_self" in cir else {}),
    }


def cir_loss(cir: dict[str, torch.Tensor], weights: dict[str, float], stop_grad_targets: bool = True,
             blur: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CLP's CIR loss (Li & Shan, "Contrastive Learning of Person-independent Representations for Facial Action Unit
    Detection", IEEE TIP 2023; the terms of the module docstring): sum of `weights[name] * term` over `weights`
    ({"rec_self", "rec_cycle", "au_consistency", "id_consistency"}: weight), each term from `cir_terms`, as a scalar
    tensor on `cir["rec_self"]`'s graph (0 with no weights). `cir`: `methods.clp.cir_forward`'s dict (`valid` [B];
    images and codes [B, F, ...] at F frames per clip). Returns (loss, every term detached, `rec_copy` included).
    Raises KeyError for a weight name that is not a term."""
    terms = cir_terms(cir, stop_grad_targets, blur)
    loss = zero_like(cir["rec_self"])
    for name, weight in weights.items():  # `rec_copy` has no weight: a logged reference only
        loss = loss + float(weight) * terms[name]
    return loss, {k: v.detach() for k, v in terms.items()}


class CLPObjective(TCLObjective):
    """CLP: `tcl_weight` x TCL (global, negatives from every rank) + CIR (local, on view 1 of each clip and its
    partner)."""

    name = "clp"

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        c = cfg.cir
        self.cir_weights = {"rec_self": float(c.self_weight), "rec_cycle": float(c.cycle_weight),
                            "au_consistency": float(c.au_weight), "id_consistency": float(c.id_weight)}
        self.stop_grad_targets = bool(c.stop_grad_targets)
        self.rec_blur = float(c.rec_blur)
        self.hog_weight = float(c.get("hog_weight", 0.0))
        if self.hog_weight < 0:
            raise ValueError(f"objective.cir.hog_weight={self.hog_weight}: must be >= 0")
        self.hog_basis_weight = float(c.get("hog_basis_weight", 0.0))
        if self.hog_basis_weight < 0:
            raise ValueError(f"objective.cir.hog_basis_weight={self.hog_basis_weight}: must be >= 0")
        self.hog_basis_centre = str(c.get("hog_basis_centre", "frame"))
        if self.hog_basis_centre not in HOG_BASIS_CENTRES:  # refused here, not at the basis' fit
            raise ValueError(f"objective.cir.hog_basis_centre={self.hog_basis_centre!r}: must be one of "
                             f"{', '.join(HOG_BASIS_CENTRES)}")
        self.id_adversary_weight = float(c.get("id_adversary_weight", 0.0))
        if self.id_adversary_weight < 0:
            raise ValueError(f"objective.cir.id_adversary_weight={self.id_adversary_weight}: must be >= 0")
        self.between_clip_weight = float(c.get("between_clip_weight", 0.0))
        if self.between_clip_weight < 0:
            raise ValueError(f"objective.cir.between_clip_weight={self.between_clip_weight}: must be >= 0")
        self.tcl_weight = float(cfg.get("tcl_weight", 1.0))
        if self.tcl_weight < 0:
            raise ValueError(f"objective.tcl_weight={self.tcl_weight}: must be >= 0")

    def global_loss(self, features, keys, offset):
        """TCL's term weighted by `objective.tcl_weight` (the logged parts stay unweighted)."""
        loss, parts = super().global_loss(features, keys, offset)
        return self.tcl_weight * loss, parts

    def after_step_inputs(self, outputs):
        """View 1's HOG [B, T, Dh] while the method's within-clip HOG basis is being fitted, else None."""
        return outputs.get("hog_basis", {}).get("stats")

    def local_loss(self, outputs, batch):
        loss, parts = cir_loss(outputs["cir"], self.cir_weights, self.stop_grad_targets, self.rec_blur)
        if "hog" in outputs:  # `cir.hog_weight` > 0: the method's HOG-change pass
            hog = hog_change_terms(outputs["hog"])
            loss = loss + self.hog_weight * hog["hog_change"]
            parts = {**parts, **{k: v.detach() for k, v in hog.items()}}
        if "hog_basis" in outputs:  # `cir.hog_basis_weight` > 0: zero (but on the graph) until the basis is fitted
            basis = hog_basis_terms(outputs["hog_basis"], self.hog_basis_centre)
            loss = loss + self.hog_basis_weight * basis.get("hog_basis", zero_like(outputs["hog_basis"]["pred"]))
            parts = {**parts, **{k: v.detach() for k, v in basis.items()}}
        if "id_adversary" in outputs:  # `cir.id_adversary_weight` > 0: the classifier's CE trains it alone
            adv = identity_confusion_terms(outputs["id_adversary"], batch["identity"])
            loss = loss + adv["id_adv_ce"] + self.id_adversary_weight * adv["id_adv_confusion"]
            parts = {**parts, **{k: v.detach() for k, v in adv.items()}}
        if "between_clip" in outputs:  # `cir.between_clip_weight` > 0: the code outside the basis head's rows
            share = between_clip_share(outputs["between_clip"])
            loss = loss + self.between_clip_weight * share
            parts = {**parts, "between_clip_share": share.detach()}
        rank, rank_parts = super().local_loss(outputs, batch)
        if rank is not None:
            loss = loss + rank
        return loss, {**parts, **rank_parts}


__all__ = ["CLPObjective", "Objective", "cir_loss", "cir_terms", "gaussian_blur"]
