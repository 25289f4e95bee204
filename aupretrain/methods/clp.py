"""CLP's method: the encoder + projector, and its own CIR modules (the decoder D(a, p) and the cross-identity
reconstruction pass). The loss terms on the pass's outputs are pure functions in `aupretrain.objectives.cir`.

The decoder maps an AU code `a` and an identity code `p` to a normalised image [N, 3, S, S]: a linear
layer to a small feature map, then upsampling stages (nearest x2 + 3x3 conv + norm + ReLU), then a 3x3
conv to RGB. Its output lives in the same normalised space as the encoder's input, so reconstruction
targets are the (augmented, normalised) training views themselves.

The CIR pass (the method's reading of the paper; `docs/method.md`): for clip A of this rank's batch and its
partner B (a clip of a different identity), at the selected frames t and the identity frame
s = (t + identity_offset) mod T:

    self   x_hat = D(a_t^A, p_s^A)            target x_t^A
    cross  x_x   = D(a_t^B, p_s^A)            "A showing B's AUs" (no pixel target: neither video shows it)
    re-encode    a(x_x) -> target a_t^B (AU consistency),  p(x_x) -> target p_s^A (identity consistency)
    cycle  x_c   = D(a(x_x), p_s^B)           target x_t^B

With `cir.source_frame` the decoder also reads the source image: the self reconstruction is D(a_t^A, p_s^A, x_s^A),
the cross image D(a_t^B, p_s^A, x_s^A) (A's frame s with B's AUs) and the cycle D(a(x_x), p_s^B, x_s^B).
With `cir.flow` as well, the decoder also reads the source frame's own AU code and warps the source instead of adding
to it: D(a_t, p_s, x_s, a_s) = warp(x_s, flow(a_t, a_s, p_s, x_s)); the cross image warps A's frame s (AU code a_s^A)
to B's AUs at t, the cycle warps B's frame s (a_s^B). With `cir.flow_grid` > 0 the warp is a linear function of
a_t - a_s shared by every face (`LinearFlowDecoder`).

`cir_forward` takes `encode` and `decode` as callables, so the same pass runs with the trained networks or,
in tests, with an oracle (the synthetic renderer) to check the pairing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models.resnet import norm_layer
from ..objectives.hog import hog_descriptor
from .base import Method
from .hog_basis import WithinClipHOGBasis

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # images [N,3,S,S] -> (a [N,D], p [N,D])
Decode = Callable[..., torch.Tensor]  # (a, p) or (a, p, source images) -> images [N,3,S,S]


@dataclass(frozen=True)
class CIRRequest:
    """What the objective asks the model to compute: partners and the frames used."""
    partner: torch.Tensor  # [B] index of a clip of another identity in this rank's batch, -1 if none
    frames: tuple[int, ...]  # frame indices t used for reconstruction
    identity_offset: int = 1  # identity code from frame s = (t + offset) mod T
    source_frame: bool = False  # the decoder also reads frame s itself: D(a_t, p_s, x_s) (`cir.source_frame`)
    flow: bool = False  # ... and frame s's AU code, and warps frame s: D(a_t, p_s, x_s, a_s) (`cir.flow`)


def select_frames(clip_len: int, count: int) -> tuple[int, ...]:
    """`count` evenly spaced frame indices of a clip (all frames when count is 0 or >= clip_len)."""
    if count <= 0 or count >= clip_len:
        return tuple(range(clip_len))
    if count == 1:
        return (clip_len // 2,)
    return tuple(round(i * (clip_len - 1) / (count - 1)) for i in range(count))


def frame_pairs(req: CIRRequest, clip_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CIR's frame indices t [F] (`req.frames`) and their source/identity frames s = (t + identity_offset) mod T [F]."""
    f = torch.tensor(req.frames, device=device)
    return f, (f + req.identity_offset) % clip_len


def cir_forward(encode: Encode, decode: Decode, x: torch.Tensor, a: torch.Tensor, p: torch.Tensor,
                req: CIRRequest) -> dict[str, torch.Tensor]:
    """x [B, T, 3, S, S] the view's images, a/p [B, T, D] their codes. Returns tensors [B, F, ...]."""
    b, t = x.shape[:2]
    f, s = frame_pairs(req, t, x.device)
    partner = req.partner.to(x.device)  # the loader's partner index lives on the CPU
    valid = partner >= 0
    partner = torch.where(valid, partner, torch.arange(b, device=x.device))
    nf = f.numel()

    def flat(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(b * nf, *v.shape[2:])

    def unflat(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(b, nf, *v.shape[1:])

    a_t, p_s = a[:, f], p[:, s]  # A's AU codes at t, A's identity codes at s
    a_t_b, p_s_b = a_t[partner], p_s[partner]  # the partner's
    src = (flat(x[:, s]),) if req.source_frame else ()  # A's frames s (the decoder's source images)
    src_b = (flat(x[partner[:, None], s[None, :]]),) if req.source_frame else ()
    if req.flow:  # the flow decoder also reads the source frames' own AU codes
        src, src_b = src + (flat(a[:, s]),), src_b + (flat(a[partner[:, None], s[None, :]]),)
    rec_self = decode(flat(a_t), flat(p_s), *src)
    cross = decode(flat(a_t_b), flat(p_s), *src)
    a_cross, p_cross = encode(cross)
    rec_cycle = decode(a_cross, flat(p_s_b), *src_b)
    return {
        "rec_self": unflat(rec_self), "target_self": x[:, f],
        "cross": unflat(cross),
        "a_cross": unflat(a_cross), "a_target": a_t_b,
        "p_cross": unflat(p_cross), "p_target": p_s,
        "rec_cycle": unflat(rec_cycle), "target_cycle": x[partner[:, None], f[None, :]],
        "valid": valid,
        **({"source_self": x[:, s]} if req.source_frame else {}),  # frames s: copying them is the floor to beat
    }


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


class CLPMethod(Method):
    """TCL's encoder + projector and CIR's decoder. `request` draws the CIR frames and takes the loader's
    partner of each clip; `forward` then adds `cir` (the pass's tensors, [B, F, ...]) computed on view 1.
    Settings: `objective.cir.frames`, `objective.cir.identity_offset`, `objective.cir.source_frame` (the decoder
    also reads frame s: D(a, p, x_s)), `objective.cir.flow`, `.flow_max` and `.flow_grid` (it warps frame s:
    D(a, p, x_s, a_s); with a grid, a linear displacement basis of a - a_s), `model.decoder`; `objective.cir.hog_weight`
    (`hog_pass`) and `objective.cir.hog_basis_weight` (`hog_basis_pass`; `after_step` feeds the basis' fit)."""

    def __init__(self, model_cfg: dict[str, Any], input_size: int, objective_cfg: Any = None):
        super().__init__(model_cfg, input_size, objective_cfg)
        cir = objective_cfg["cir"]
        self.cir_frames, self.identity_offset = int(cir["frames"]), int(cir["identity_offset"])
        self.source_frame = bool(cir.get("source_frame", False))
        self.flow = bool(cir.get("flow", False))
        if self.flow and not self.source_frame:
            raise ValueError("objective.cir.flow=true warps the source frame: it needs objective.cir.source_frame=true")
        flow_grid = int(cir.get("flow_grid", 0))
        if flow_grid > 0 and not self.flow:
            raise ValueError("objective.cir.flow_grid > 0 is a flow decoder's basis: it needs objective.cir.flow=true")
        texture_grid = int(cir.get("texture_grid", 0))  # without a linear flow decoder: refused by build_decoder
        self.decoder = build_decoder(model_cfg, input_size, self.source_frame, self.flow,
                                     float(cir.get("flow_max", 0.2)) if self.flow else 0.2,
                                     flow_grid, float(cir.get("flow_init_std", 0.0)), texture_grid)
        # `cir.hog_weight` > 0: M, a linear map of the unit AU codes' change to the HOG change of the same frames
        self.hog_cell = int(cir.get("hog_cell", 8))
        self.hog_bins, self.hog_signed = int(cir.get("hog_bins", 9)), bool(cir.get("hog_signed", False))
        self.hog_change = None
        if float(cir.get("hog_weight", 0.0)) > 0:
            self.hog_change = nn.Linear(int(model_cfg["au_dim"]), self._hog_dim(input_size), bias=False)
        # `cir.hog_basis_weight` > 0: the within-clip HOG basis (fitted from the stream) and the head that regresses
        # each frame's whitened projections on it from the frame's AU code
        self.hog_basis = self.hog_basis_head = None
        self.hog_basis_fit = str(cir.get("hog_basis_fit", "stream"))
        self.hog_basis_frames = str(cir.get("hog_basis_frames", "views"))
        if self.hog_basis_fit not in ("stream", "prefit") or self.hog_basis_frames not in ("views", "clean"):
            raise ValueError(f"objective.cir.hog_basis_fit={self.hog_basis_fit!r} (stream | prefit), "
                             f"hog_basis_frames={self.hog_basis_frames!r} (views | clean)")
        if float(cir.get("hog_basis_weight", 0.0)) > 0:
            k = int(cir.get("hog_basis_k", 8))
            self.hog_basis = WithinClipHOGBasis(self._hog_dim(input_size), k, int(cir.get("hog_basis_fit_steps", 100)),
                                                int(cir.get("hog_basis_whiten", 0)))
            self.hog_basis_head = nn.Linear(int(model_cfg["au_dim"]), k)

    @classmethod
    def check(cls, cfg: Any) -> None:
        """`objective.cir.hog_basis_frames=clean` reads the loader's clean view: UsageError without
        `data.clean_view`."""
        cir = cfg.objective.get("cir", {})
        if float(cir.get("hog_basis_weight", 0.0)) > 0 and cir.get("hog_basis_frames", "views") == "clean" \
                and not cfg.data.get("clean_view", False):
            from ..errors import UsageError

            raise UsageError("objective.cir.hog_basis_frames=clean reads each clip's un-augmented frames: it needs "
                             "data.clean_view=true")

    def _hog_dim(self, input_size: int) -> int:
        """HOG's descriptor length at this input size, `cir.hog_cell` and `cir.hog_bins`; ValueError naming the
        first two when they do not tile."""
        if input_size % self.hog_cell or input_size < 2 * self.hog_cell:
            raise ValueError(f"objective.cir.hog_weight / hog_basis_weight > 0 need data.input_size ({input_size}) "
                             f"to be a multiple of objective.cir.hog_cell ({self.hog_cell}) and at least two cells")
        blocks = input_size // self.hog_cell - 1
        return blocks * blocks * 4 * self.hog_bins

    def request(self, batch, clip_len):
        out = {"cir": CIRRequest(batch["partner"], select_frames(clip_len, self.cir_frames), self.identity_offset,
                                 self.source_frame, self.flow)}
        if self.hog_basis is not None and self.hog_basis_frames == "clean":
            if "clean" not in batch:
                raise ValueError("objective.cir.hog_basis_frames=clean: the batch holds no clean view "
                                 "(data.clean_view=true)")
            out["clean"] = batch["clean"]
        return out

    def extra(self, clips, frames, out, res, cir: CIRRequest | None = None, clean: torch.Tensor | None = None,
              **request):
        super().extra(clips, frames, out, res, **request)
        if cir is None:  # the feature-only pass of gradient accumulation
            return {}
        b = cir.partner.shape[0]
        out = {"cir": cir_forward(self.codes, self.decoder, clips[:b], res["a"][:b], res["p"][:b], cir)}
        hog = None  # view 1's HOG when computed for the basis (the HOG-change term reads it too)
        if self.hog_basis is not None:
            if clean is not None:  # `hog_basis_frames=clean`: both views' frames take their clean frame's target
                hog_clean = self._hog(clean.to(clips.device))
                basis_hog = torch.cat([hog_clean, hog_clean]) if self.hog_basis.is_fitted else hog_clean
            else:
                hog = basis_hog = self._hog(clips if self.hog_basis.is_fitted else clips[:b])
            out["hog_basis"] = self.hog_basis_pass(basis_hog, res["a"])
        if self.hog_change is not None:
            out["hog"] = self.hog_pass(clips[:b], res["a"][:b], cir, None if hog is None else hog[:b])
        return out

    def _hog(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [N, T, 3, S, S] (normalised) -> their frames' HOG [N, T, Dh] (`objectives.hog.hog_descriptor`)."""
        mean, std = self.encoder.mean.view(3), self.encoder.std.view(3)
        return hog_descriptor(clips.flatten(0, 1), mean, std, self.hog_cell, self.hog_bins,
                              signed=self.hog_signed).view(*clips.shape[:2], -1)

    def hog_basis_pass(self, hog: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """The within-clip HOG basis' pass (`objective.cir.hog_basis_weight`): a [2B, T, D] both views' codes, hog the
        HOG of the frames the term reads (`hog_basis_frames`: the views, or each clip's clean frames, the same for
        both views) — both views' [2B, T, Dh] once the basis is fitted, view 1's [B, T, Dh] before. Returns `pred` =
        the head's output [2B, T, k] for every frame, and, once fitted, `target` [2B, T, k] (each frame's whitened
        projection, no gradient); before, with `hog_basis_fit=stream`, `stats` = view 1's HOG, which the engine
        gathers from every rank for `after_step`."""
        out = {"pred": self.hog_basis_head(a.to(self.hog_basis_head.weight.dtype)).float()}
        if self.hog_basis.is_fitted:
            out["target"] = self.hog_basis.targets(hog)
        elif self.hog_basis_fit == "stream":  # "prefit": fitted before step 1 (`clean_fit_steps`)
            out["stats"] = hog
        return out

    def clean_fit_steps(self) -> int:
        """`hog_basis_fit_steps` while the basis with `hog_basis_fit=prefit` is not fitted yet (a resumed run loads
        it fitted), else 0."""
        prefit = self.hog_basis is not None and self.hog_basis_fit == "prefit"
        return self.hog_basis.fit_steps if prefit and not self.hog_basis.is_fitted else 0

    @torch.no_grad()
    def clean_fit_inputs(self, clips: torch.Tensor) -> torch.Tensor:
        """clips [N, T, 3, S, S] un-augmented -> their frames' HOG [N, T, Dh] (float32), for `after_step`."""
        return self._hog(clips.float())

    @torch.no_grad()
    def after_step(self, keys: torch.Tensor | None) -> None:
        """`keys`: every rank's clips' HOG [N, T, Dh] while the HOG basis is being fitted — view 1's from the
        training stream, or un-augmented clips' before step 1 (`clean_fit_inputs`) — else None."""
        if keys is not None and self.hog_basis is not None:
            self.hog_basis.accumulate(keys)

    def hog_pass(self, x: torch.Tensor, a: torch.Tensor, cir: CIRRequest,
                 hog: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """CIR's HOG-change pass on view 1 (`objective.cir.hog_weight`): for the CIR frames t and their frames
        s = (t + identity_offset) mod T, `pred` = M (â_t − â_s) (â = a / |a|, as the flow basis reads the codes) and
        `target` = HOG(x_t) − HOG(x_s) (`objectives.hog.hog_descriptor`, no gradient). x [B, T, 3, S, S], a
        [B, T, D], `hog` view 1's HOG [B, T, Dh] when already computed (else only frames t and s are) -> tensors
        [B, F, Dh]."""
        f, s = frame_pairs(cir, x.shape[1], x.device)
        unit = F.normalize(a.float(), dim=-1)
        change = (unit[:, f] - unit[:, s]).to(self.hog_change.weight.dtype)  # bf16/fp16 weights under DeepSpeed
        if hog is None:
            pair = self._hog(x[:, torch.cat([f, s])])  # [B, 2F, Dh]: frames t, then frames s
            hog_t, hog_s = pair[:, :len(cir.frames)], pair[:, len(cir.frames):]
        else:
            hog_t, hog_s = hog[:, f], hog[:, s]
        return {"pred": self.hog_change(change).float(), "target": hog_t - hog_s}
