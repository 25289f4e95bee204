"""HOG descriptors in torch, and CIR's HOG-change term: the AU code's change explains how the frame's edges changed.

`hog_descriptor` is the target of `objective.cir.hog_weight` (docs/method.md "The HOG-change term"). Measured on the
still-head synthetic corpus (docs/benchmarks.md, session 20): the directions in which HOG varies *within* a video
carry the AU probe (8 principal directions: 0.42 mean F1 on validation identities, above HOG itself, 0.36), while the
directions in which *pixels* vary within a video do not (0.16-0.20) — the ceiling every pixel-space reconstruction
term of CIR had met. A code whose change explains the HOG change between two frames of one face is taught what
differs between them in the space where it is an AU and not a shifted texture.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _block_weights(cell: int, device: torch.device) -> torch.Tensor:
    """OpenCV's per-pixel weights of a 2 × 2-cell block [4, 2·cell, 2·cell], cells in the descriptor's order (x0 y0,
    x0 y1, x1 y0, x1 y1): a Gaussian window of σ = block side / 4 centred at pixel (cell, cell), times each pixel's bilinear
    share of the cell (1 − |(p + 0.5)/cell − 0.5 − i| per axis, clipped at 0), as `HOGCache::init` builds them."""
    side = 2 * cell
    pos = torch.arange(side, dtype=torch.float32, device=device)
    d = pos - side / 2  # OpenCV centres the window at pixel `side / 2`, half a pixel off the block's centre
    gauss = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * (side / 4) ** 2))  # [y, x]
    share = (1 - ((pos + 0.5) / cell - 0.5 - torch.arange(2, device=device)[:, None]).abs()).clamp_min(0)  # [2, side]
    return torch.stack([gauss * share[v][:, None] * share[u][None, :] for u in (0, 1) for v in (0, 1)])


@torch.no_grad()
def hog_descriptor(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, cell: int = 8, bins: int = 9,
                   clip: float = 0.2, signed: bool = False, colour: bool = False) -> torch.Tensor:
    """HOG (Dalal & Triggs, CVPR 2005) of normalised images, as the targets of a loss (no gradient): OpenCV's
    `cv2.HOGDescriptor((S, S), (2·cell, 2·cell), (cell, cell), (cell, cell), bins)` computed in torch on the
    training device (equal to it up to float rounding on the same grey or, with `colour`, RGB image;
    `tests/unit/test_hog.py`).

    images: [N, 3, S, S] normalised as the encoder's input, (x - mean) / std with x in 0..255; mean, std: the
    normalisation, shape [3] or broadcastable to [1, 3, 1, 1], in 0..255 units. Grey = ITU-R 601 luma; gradients
    by the centred [-1, 0, 1] filter (reflected borders, OpenCV's BORDER_REFLECT_101); with `colour` the gradients
    of the R, G and B channels instead, each pixel keeping that of the channel with the largest magnitude (Dalal &
    Triggs' colour HOG, section 6.2; OpenCV's `computeGradient` on a 3-channel image, the first channel on ties);
    `bins` orientation bins over [0, π) (unsigned: a dark-to-light edge and a light-to-dark one vote alike) or, with
    `signed`, over [0, 2π) (OpenCV's `signedGradient`: the edge's polarity kept), with linear vote interpolation
    between the two nearest bins, weighted by the gradient magnitude; blocks of 2 × 2 `cell`-px cells at a stride of one cell, each pixel's
    vote weighted by the block's Gaussian window (σ = block side / 4) and shared bilinearly between the block's
    cells; each block L2-Hys normalised (L2 with 0.1 · 4 · bins added to the norm, clipped at `clip`, L2 again). In
    OpenCV's order: blocks column by column, in each the 2 × 2 cells column by column, in each the bins. Returns float32
    [N, (S/cell − 1)² · 4 · bins]: 1,764 at 64 px (3,528 with 18 signed bins).

    Raises ValueError if S is not a multiple of `cell` or is under two cells.
    """
    n, c, h, w = images.shape
    if c != 3 or h != w or h % cell or h < 2 * cell:
        raise ValueError(f"hog_descriptor needs square RGB images whose side is a multiple of {cell} and at least "
                         f"{2 * cell} px, got {tuple(images.shape)}")
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).reshape(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).reshape(1, 3, 1, 1)
    x = images.float() * std + mean
    grey = x if colour else (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    g = F.pad(grey, (1, 1, 1, 1), mode="reflect")
    gx, gy = g[..., 1:-1, 2:] - g[..., 1:-1, :-2], g[..., 2:, 1:-1] - g[..., :-2, 1:-1]  # [N, 1 or 3, S, S]
    if colour:  # each pixel's gradient from its strongest channel
        strongest = (gx * gx + gy * gy).argmax(1, keepdim=True)
        gx, gy = gx.gather(1, strongest), gy.gather(1, strongest)
    magnitude = torch.sqrt(gx * gx + gy * gy)
    period = 2 * math.pi if signed else math.pi
    pos = torch.atan2(gy, gx).remainder(period) / period * bins - 0.5  # bin centres at 0, 1, ..., bins − 1
    low = torch.floor(pos)
    upper_share = pos - low
    low = low.long().remainder(bins)
    votes = torch.zeros(n, bins, h, w, device=images.device)
    votes.scatter_add_(1, low, magnitude * (1 - upper_share))
    votes.scatter_add_(1, (low + 1).remainder(bins), magnitude * upper_share)
    weights = _block_weights(cell, images.device).unsqueeze(1)  # [4, 1, 2·cell, 2·cell]
    blocks = F.conv2d(votes.reshape(n * bins, 1, h, w), weights, stride=cell)  # [N·bins, 4, B, B]
    nb = blocks.shape[-1]
    blocks = blocks.view(n, bins, 4, nb, nb).transpose(1, 2).reshape(n, 4 * bins, nb, nb)  # channel = cell·bins + bin
    blocks = blocks / (blocks.norm(dim=1, keepdim=True) + 0.1 * blocks.shape[1])
    blocks = blocks.clamp(max=clip)
    blocks = blocks / (blocks.norm(dim=1, keepdim=True) + 1e-3)
    return blocks.permute(0, 3, 2, 1).flatten(1)  # OpenCV's order: blocks x-major, then cells, then bins


def hog_change_terms(hog: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CIR's HOG-change term and its floor, from the method's `hog` outputs (tensors [B, F, Dh]):
    `pred` = M (â_t − â_s), the change a linear map of the unit AU codes' change predicts, and `target` =
    HOG(x_t) − HOG(x_s) of the same view's frames.

    Returns `hog_change` = the mean over pairs of |pred − target|² (summed over the descriptor; HOG's blocks are unit
    vectors, so the scale is the descriptor's own, whatever the images) and `hog_copy` = the mean of |target|²,
    the value of predicting no change: `hog_change` below it means the codes told M how the edges moved. Means over
    this rank's clips, so the distributed mean is the global mean."""
    pred, target = hog["pred"].float(), hog["target"].float()
    return {"hog_change": (pred - target).pow(2).sum(-1).mean(),
            "hog_copy": target.pow(2).sum(-1).mean().detach()}


HOG_BASIS_CENTRES = ("frame", "clip")  # `objective.cir.hog_basis_centre` (hog_basis_terms)


def hog_basis_terms(hog_basis: dict[str, torch.Tensor], centre: str = "frame") -> dict[str, torch.Tensor]:
    """The within-clip HOG basis term, from the method's `hog_basis` outputs: `pred` [N, T, k], the head's
    regression of each frame's code, and `target` [N, T, k], the frame's HOG projected on the within-clip
    principal directions and whitened (`aupretrain.methods.hog_basis`). Returns `hog_basis` = the mean over frames
    and directions of (pred − target)², or {} before the basis is fitted.

    `centre` (`objective.cir.hog_basis_centre`): "frame" compares every frame's values as they are (1.0 is the value
    of predicting the mean); "clip" first subtracts from pred and target their own clip's mean over the T frames, so
    the code is asked only how the frame differs from the rest of its clip — not the face's own offset along the
    directions, which is who the face is (its value for predicting no change is the within-clip share of the
    target's variance, below 1). Raises ValueError on another `centre`, or "clip" with T < 2."""
    if centre not in HOG_BASIS_CENTRES:
        raise ValueError(f"objective.cir.hog_basis_centre={centre!r}: must be 'frame' or 'clip'")
    if "target" not in hog_basis:
        return {}
    pred, target = hog_basis["pred"].float(), hog_basis["target"].float()
    if centre == "clip":
        if pred.shape[1] < 2:
            raise ValueError(f"objective.cir.hog_basis_centre='clip' needs clips of >= 2 frames, "
                             f"got {tuple(pred.shape)}")
        pred, target = pred - pred.mean(1, keepdim=True), target - target.mean(1, keepdim=True)
    return {"hog_basis": (pred - target).pow(2).mean()}


__all__ = ["HOG_BASIS_CENTRES", "hog_basis_terms", "hog_change_terms", "hog_descriptor"]
