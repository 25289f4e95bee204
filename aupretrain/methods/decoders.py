"""CIR's decoders, owned by CLP's method (`aupretrain.methods.clp`): D(a, p) maps an AU code `a` and an identity
code `p` to a normalised image [N, 3, S, S] — a linear layer to a small feature map, then upsampling stages
(nearest x2 + 3x3 conv + norm + ReLU), then a 3x3 conv to RGB. Its output lives in the same normalised space as the
encoder's input, so reconstruction targets are the (augmented, normalised) training views themselves.

`Decoder` (with `source=True` it also reads the source frame x_s; with `flow=True` it warps x_s), `LinearFlowDecoder`
(a warp linear in the code's change, the same for every face), `warp` and `build_decoder` (which one, from config).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.resnet import norm_layer

class Decoder(nn.Module):
    """D(a, p) -> image, or with `source=True` D(a, p, x_s) -> x_s + residual: the source frame passes through
    a full-resolution conv branch that joins the code's upsampled map before the RGB layer, and the output is
    the source plus a predicted change, so reproducing the source costs nothing and what the codes must carry is
    what differs between frame s and frame t (GANimation's and TCAE's conditioning on the source face: Pumarola
    et al., ECCV 2018; Li et al., CVPR 2019).

    With `flow=True` (needs `source=True`) the decoder also reads the source frame's AU code a_s and predicts a
    displacement field instead of a residual: D(a, p, x_s, a_s) = grid_sample(x_s, identity + flow), flow
    [N, 2, S, S] = `flow_max` · tanh(conv(h)) in `grid_sample`'s normalised coordinates (1.0 = half the side),
    zero at initialisation (the decoder starts as the copy of x_s); the source also joins every upsampling stage
    (its full-resolution features average-pooled to the stage's size), so the field can find facial parts in x_s
    with a receptive field of the whole face. A warp explains an AU's few-pixel movement of
    brows, lids and lip corners with a smooth field a coarse code can drive, where a residual must place each
    changed pixel (TCAE's AU flow: Li et al., CVPR 2019; FAb-Net: Wiles et al., BMVC 2018)."""

    def __init__(self, au_dim: int, id_dim: int, output_size: int, widths=(256, 128, 64, 32), start: int = 4,
                 norm: str = "group", norm_groups: int = 8, channels_last: bool = False, source: bool = False,
                 flow: bool = False, flow_max: float = 0.2):
        super().__init__()
        if flow and not source:
            raise ValueError("a flow decoder warps its source frame: flow=True needs source=True")
        self.channels_last = bool(channels_last)
        widths = tuple(int(w) for w in widths)
        if int(start) < 1 or not widths or min(widths) < 1:  # start 0 would double 0 forever below
            raise ValueError(f"model.decoder.start must be >= 1 and model.decoder.widths whole numbers >= 1, got "
                             f"start={start}, widths={list(widths)}")
        self.output_size = int(output_size)
        self.start = int(start)
        self.flow, self.flow_max = bool(flow), float(flow_max)
        self.fc = nn.Linear(au_dim * (2 if flow else 1) + id_dim, widths[0] * start * start)
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
        self.source = None
        if source:  # the source frame's branch at full resolution, joined to the code's map
            self.source = nn.Sequential(nn.Conv2d(3, cin, 3, 1, 1, bias=False), norm_layer(norm, cin, norm_groups),
                                        nn.ReLU(inplace=True))
            self.join = nn.Sequential(nn.Conv2d(2 * cin, cin, 3, 1, 1, bias=False), norm_layer(norm, cin, norm_groups),
                                      nn.ReLU(inplace=True))
        # The flow decoder also sees the source at every stage below full resolution (U-Net-style skips: the
        # source's full-resolution features average-pooled to the stage's size, a conv, then merged with the
        # stage's map), so where a brow or a lip corner sits in frame s is known with more than a 5 x 5 view.
        self.skips = nn.ModuleList()
        if flow:
            for k in range(len(layers) // 4 - 1):  # every stage but the last (the full-resolution join)
                w = layers[4 * k + 1].out_channels
                self.skips.append(nn.ModuleDict({
                    "source": nn.Sequential(nn.Conv2d(cin, w, 3, 1, 1, bias=False), norm_layer(norm, w, norm_groups),
                                            nn.ReLU(inplace=True)),
                    "merge": nn.Sequential(nn.Conv2d(2 * w, w, 3, 1, 1, bias=False), norm_layer(norm, w, norm_groups),
                                           nn.ReLU(inplace=True))}))
        self.to_rgb = nn.Conv2d(cin, 2 if flow else 3, 3, 1, 1)  # the flow field's two channels, or RGB
        if flow:  # identity warp at initialisation
            nn.init.zeros_(self.to_rgb.weight)
            nn.init.zeros_(self.to_rgb.bias)
        self.width0 = widths[0]

    def forward(self, a: torch.Tensor, p: torch.Tensor, source: torch.Tensor | None = None,
                a_source: torch.Tensor | None = None) -> torch.Tensor:
        """a [N, au_dim], p [N, id_dim] (with `source=True` also the source images [N, 3, S, S]; with `flow=True`
        also the source's AU codes a_source [N, au_dim]) -> image [N, 3, S, S] (normalised like the encoder's
        input). Raises ValueError when `source` or `a_source` is given to a decoder built without its use, or
        missing from one built with it."""
        if (source is None) != (self.source is None):
            raise ValueError("this decoder was built with source=%s; got source=%s"
                             % (self.source is not None, None if source is None else tuple(source.shape)))
        if (a_source is None) == self.flow:
            raise ValueError("this decoder was built with flow=%s; got a_source=%s"
                             % (self.flow, None if a_source is None else tuple(a_source.shape)))
        code = torch.cat([a, a_source, p] if self.flow else [a, p], dim=-1)
        h = self.fc(code).view(a.shape[0], self.width0, self.start, self.start)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        h = torch.relu(h)
        f0 = None if source is None else self.source(source.to(h.dtype))  # the source's full-resolution features
        for k in range(len(self.body) // 4):
            h = self.body[4 * k:4 * k + 4](h)
            if k < len(self.skips):  # flow decoder: merge the source, pooled to this stage's size
                f = self.skips[k]["source"](F.adaptive_avg_pool2d(f0, h.shape[-2:]))
                h = self.skips[k]["merge"](torch.cat([h, f], dim=1))
        if h.shape[-1] != self.output_size:  # sizes that are not start * 2^k
            h = F.interpolate(h, size=(self.output_size, self.output_size), mode="bilinear", align_corners=False)
        if source is None:
            return self.to_rgb(h)
        h = self.join(torch.cat([h, f0], dim=1))
        if not self.flow:
            return source.to(h.dtype) + self.to_rgb(h)
        return warp(source, self.flow_max * torch.tanh(self.to_rgb(h).float())).to(h.dtype)


def warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: out(x) = images(x + flow(x)), bilinear, borders clamped. images [N, C, S, S], flow
    [N, 2, S, S] (x then y) in `torch.nn.functional.grid_sample`'s normalised coordinates ([-1, 1] spans the
    image, align_corners=False). Computed in float32 (grid_sample's half-precision kernels are not on every
    device); returns float32 [N, C, S, S]."""
    n, _, h, w = images.shape
    theta = torch.eye(2, 3, device=images.device, dtype=torch.float32).expand(n, 2, 3)
    base = F.affine_grid(theta, [n, 1, h, w], align_corners=False)  # [N, S, S, 2], (x, y)
    return F.grid_sample(images.float(), base + flow.float().permute(0, 2, 3, 1), mode="bilinear",
                         padding_mode="border", align_corners=False)


class LinearFlowDecoder(nn.Module):
    """D(a, p, x_s, a_s) = warp(x_s, flow), flow = `flow_max` · tanh(W (â - â_s)) on a `grid` × `grid` lattice,
    bilinearly upsampled to the image (â = a / |a|): a displacement field that is a *linear* function of the AU
    code's change from frame s to frame t, the same W for every face (`objective.cir.flow_grid`; ours). The codes
    are unit-normalised first, as TCL compares them, so the field does not depend on the code's norm (measured on a
    CLP-trained resnet_small: |a| ≈ 80, |a_t - a_s| ≈ 23 for frames 160 ms apart — an optimiser step of W sized
    for unit-scale inputs would move the field twenty times too far).

    The faces are aligned, so an AU moves the same part of every face the same way (AU12 pulls the lip corners up
    and out); with one W for all identities a code change can only explain a frame's change if it means the same
    displacement on every face — the cross-identity consistency CIR asks for, put into the decoder's form
    (TCAE's AU displacement, Li et al., CVPR 2019; FAb-Net, Wiles et al., BMVC 2018 — there a conv decoder). W has
    no bias, so equal codes warp nothing. It starts at zero (the copy of x_s) or, with `init_std` > 0
    (`cir.flow_init_std`), random: with W = 0 the codes receive no gradient from this decoder until W has learned
    to read them. The identity code p is not read (the warped source carries the face).

    With `texture_grid` > 0 (`cir.texture_grid`) an *appearance* change is added after the warp:
    D = warp(x_s, flow) + up(T (â − â_s)), T a linear map (no bias, zero start) to a 3 × `texture_grid`²
    image, bilinearly upsampled — the texture modes of an Active Appearance Model beside its shape modes (Cootes,
    Edwards & Taylor, "Active Appearance Models", TPAMI 2001), both linear in the code. A warp cannot make what
    an AU draws rather than moves (a furrow, teeth, a flush); this term can, on the same terms: one T for every
    face, nothing explained without a change of code.
    Shapes: a, a_s [N, au_dim], source [N, 3, S, S] -> float32 [N, 3, S, S]."""

    def __init__(self, au_dim: int, output_size: int, grid: int = 16, flow_max: float = 0.2, init_std: float = 0.0,
                 texture_grid: int = 0):
        super().__init__()
        if grid < 1:
            raise ValueError(f"objective.cir.flow_grid must be >= 1 for a linear flow decoder, got {grid}")
        if texture_grid < 0:
            raise ValueError(f"objective.cir.texture_grid must be >= 0, got {texture_grid}")
        self.grid, self.output_size, self.flow_max = int(grid), int(output_size), float(flow_max)
        self.texture_grid = int(texture_grid)
        self.basis = nn.Linear(au_dim, 2 * self.grid * self.grid, bias=False)
        if init_std > 0:  # `cir.flow_init_std`: the codes get a gradient from the first step (W = 0 gives them none)
            nn.init.normal_(self.basis.weight, std=float(init_std))
        else:
            nn.init.zeros_(self.basis.weight)
        self.texture = nn.Linear(au_dim, 3 * self.texture_grid ** 2, bias=False) if self.texture_grid else None
        if self.texture is not None:  # made after the basis: the basis' random start does not depend on this knob
            nn.init.zeros_(self.texture.weight)

    def forward(self, a: torch.Tensor, p: torch.Tensor, source: torch.Tensor | None = None,
                a_source: torch.Tensor | None = None) -> torch.Tensor:
        """See the class. Raises ValueError without `source` and `a_source` (this decoder always warps)."""
        if source is None or a_source is None:
            raise ValueError("a linear flow decoder warps its source frame: it needs source and a_source")
        change = F.normalize(a.float(), dim=-1) - F.normalize(a_source.float(), dim=-1)
        change = change.to(self.basis.weight.dtype)  # DeepSpeed's bf16/fp16 modes cast the weights, not the codes
        f = self.basis(change).float().view(a.shape[0], 2, self.grid, self.grid)
        size = (self.output_size, self.output_size)
        flow = F.interpolate(self.flow_max * torch.tanh(f), size=size, mode="bilinear", align_corners=False)
        out = warp(source, flow)
        if self.texture is not None:
            t = self.texture(change).float().view(a.shape[0], 3, self.texture_grid, self.texture_grid)
            out = out + F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        return out


def build_decoder(model_cfg: dict[str, Any], input_size: int, source: bool = False, flow: bool = False,
                  flow_max: float = 0.2, flow_grid: int = 0, flow_init_std: float = 0.0,
                  texture_grid: int = 0) -> nn.Module:
    """CIR's decoder from `model.decoder` and the `objective.cir` knobs: `LinearFlowDecoder` when `flow` and
    `flow_grid` > 0 (with `texture_grid` > 0 its appearance basis too), else `Decoder`.

    Raises:
        ValueError: `texture_grid` > 0 without a linear flow decoder (`flow` and `flow_grid` > 0), naming the knob.
    """
    if texture_grid > 0 and not (flow and flow_grid > 0):
        raise ValueError("objective.cir.texture_grid > 0 is the linear flow decoder's appearance basis: it needs "
                         "objective.cir.flow=true and objective.cir.flow_grid > 0")
    if flow and flow_grid > 0:
        return LinearFlowDecoder(int(model_cfg["au_dim"]), input_size, flow_grid, flow_max, flow_init_std,
                                 texture_grid)
    c = model_cfg["decoder"]
    return Decoder(int(model_cfg["au_dim"]), int(model_cfg["id_dim"]), input_size, c["widths"], c["start"],
                   model_cfg["norm"], int(c["norm_groups"]),
                   bool(model_cfg.get("channels_last", False)), source, flow, flow_max)
