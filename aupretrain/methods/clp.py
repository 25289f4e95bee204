"""CLP's method: the encoder + projector, and its own CIR modules (the decoder D(a, p), built by
`aupretrain.methods.decoders`, and the cross-identity reconstruction pass). The loss terms on the pass's outputs are
pure functions in `aupretrain.objectives.cir`.

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

from ..objectives.hog import hog_descriptor
from .base import Method
from .decoders import build_decoder
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


def identity_adversary_pass(classifier: nn.Linear, a: torch.Tensor) -> dict[str, torch.Tensor]:
    """The identity-confusion term's pass (`objective.cir.id_adversary_weight`; `objectives.identity`): a [N, T, D]
    every view's AU codes, standardised per dimension over the rank's N·T frames (as the evaluation's identity probe
    reads them through its BatchNorm; the encoder's gradient flows through the statistics, so shrinking the code
    hides nothing) -> `head` [N, T, K], the classifier's logits on the codes detached (its cross-entropy trains the
    classifier only), and `code` [N, T, K], the codes through the classifier's weights detached (the confusion
    trains the encoder only)."""
    x = F.batch_norm(a.float().flatten(0, 1), None, None, training=True).view_as(a).to(classifier.weight.dtype)
    return {"head": classifier(x.detach()).float(),
            "code": F.linear(x, classifier.weight.detach(), classifier.bias.detach()).float()}


def outside_rows(a: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """a [..., D] -> its part outside the row space of `rows` [k, D] (detached: the projection trains the encoder
    only), in float32: a − Q Qᵀ a with Q an orthonormal basis of the rows (QR). The between-clip share term reads the
    AU code outside the HOG-basis head's rows, the dimensions no target constrains (docs/method.md)."""
    q, _ = torch.linalg.qr(rows.detach().float().T)  # [D, k]
    x = a.float()
    return x - (x @ q) @ q.T


class CLPMethod(Method):
    """TCL's encoder + projector and CIR's decoder. `request` draws the CIR frames and takes the loader's
    partner of each clip; `forward` then adds `cir` (the pass's tensors, [B, F, ...]) computed on view 1.
    Settings: `objective.cir.frames`, `objective.cir.identity_offset`, `objective.cir.source_frame` (the decoder
    also reads frame s: D(a, p, x_s)), `objective.cir.flow`, `.flow_max` and `.flow_grid` (it warps frame s:
    D(a, p, x_s, a_s); with a grid, a linear displacement basis of a - a_s), `model.decoder`; `objective.cir.hog_weight`
    (`hog_pass`) and `objective.cir.hog_basis_weight` (`hog_basis_pass`; `after_step` feeds the basis' fit);
    `objective.cir.id_adversary_weight` and `.id_adversary_classes` (`identity_adversary_pass`);
    `objective.cir.between_clip_weight` (both views' codes outside the basis head's rows: `outside_rows`)."""

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
        self.hog_basis_colour = None  # `cir.hog_basis_colour`: a second basis, fitted the same way on colour HOG
        self.hog_basis_scale = None  # `cir.hog_basis_second_cell`: one more, on grey HOG of that cell side
        # every basis with the HOG it reads, (basis, colour, cell side or None for `hog_cell`), in the one order
        # the descriptors are concatenated, split and regressed (`_basis_hog`, `_bases`)
        self._basis_specs: list[tuple[WithinClipHOGBasis, bool, int | None]] = []
        if float(cir.get("hog_basis_weight", 0.0)) > 0:
            k, second_cell = int(cir.get("hog_basis_k", 8)), int(cir.get("hog_basis_second_cell", 0))
            fit = (k, int(cir.get("hog_basis_fit_steps", 100)), int(cir.get("hog_basis_whiten", 0)))
            self.hog_basis = WithinClipHOGBasis(self._hog_dim(input_size), *fit)
            self._basis_specs.append((self.hog_basis, False, None))
            if bool(cir.get("hog_basis_colour", False)):
                self.hog_basis_colour = WithinClipHOGBasis(self._hog_dim(input_size), *fit)
                self._basis_specs.append((self.hog_basis_colour, True, None))
            if second_cell:
                self.hog_basis_scale = WithinClipHOGBasis(self._hog_dim(input_size, second_cell), *fit)
                self._basis_specs.append((self.hog_basis_scale, False, second_cell))
            self.hog_basis_head = nn.Linear(int(model_cfg["au_dim"]), k * len(self._basis_specs))
        # `cir.id_adversary_weight` > 0: a linear identity classifier on the AU code (the identity-confusion term)
        self.id_adversary = None
        if float(cir.get("id_adversary_weight", 0.0)) > 0:
            self.id_adversary = nn.Linear(int(model_cfg["au_dim"]), int(cir.get("id_adversary_classes", 1024)))
        # `cir.between_clip_weight` > 0: the code outside the basis head's rows goes to the between-clip share term
        self.between_clip = float(cir.get("between_clip_weight", 0.0)) > 0

    @classmethod
    def check(cls, cfg: Any) -> None:
        """`objective.cir.hog_basis_frames=clean` reads the loader's clean view: UsageError without
        `data.clean_view`. `hog_basis_colour` and `hog_basis_second_cell` add bases to the basis term: UsageError
        naming them when `hog_basis_weight` is 0 (they would be silently unused)."""
        from ..errors import UsageError

        cir = cfg.objective.get("cir", {})
        on = float(cir.get("hog_basis_weight", 0.0)) > 0
        if on and cir.get("hog_basis_frames", "views") == "clean" and not cfg.data.get("clean_view", False):
            raise UsageError("objective.cir.hog_basis_frames=clean reads each clip's un-augmented frames: it needs "
                             "data.clean_view=true")
        extra = [f"objective.cir.{k}={cir.get(k)}" for k in ("hog_basis_colour", "hog_basis_second_cell") if cir.get(k)]
        if extra and not on:
            raise UsageError(f"{' and '.join(extra)}: extra bases of the within-clip HOG basis term, which is off "
                             "(objective.cir.hog_basis_weight=0); set objective.cir.hog_basis_weight > 0 (e.g. "
                             "objective=clp_hog_basis) or leave them off")

    def _hog_dim(self, input_size: int, cell: int | None = None) -> int:
        """HOG's descriptor length at this input size, cell side (`cir.hog_cell` by default; the second basis':
        `cir.hog_basis_second_cell`) and `cir.hog_bins`; ValueError naming the setting when they do not tile."""
        key = "hog_cell" if cell is None else "hog_basis_second_cell"
        cell = self.hog_cell if cell is None else cell
        if input_size % cell or input_size < 2 * cell:
            raise ValueError(f"objective.cir.hog_weight / hog_basis_weight > 0 need data.input_size ({input_size}) "
                             f"to be a multiple of objective.cir.{key} ({cell}) and at least two cells")
        blocks = input_size // cell - 1
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
        hog = None  # view 1's grey HOG when computed for the basis (the HOG-change term reads it too)
        if self.hog_basis is not None:
            if clean is not None:  # `hog_basis_frames=clean`: both views' frames take their clean frame's target
                hog_clean = self._basis_hog(clean.to(clips.device))
                basis_hog = torch.cat([hog_clean, hog_clean]) if self.hog_basis.is_fitted else hog_clean
            else:
                basis_hog = self._basis_hog(clips if self.hog_basis.is_fitted else clips[:b])
                hog = basis_hog[..., :self.hog_basis.dim]
            out["hog_basis"] = self.hog_basis_pass(basis_hog, res["a"])
        if self.hog_change is not None:
            out["hog"] = self.hog_pass(clips[:b], res["a"][:b], cir, None if hog is None else hog[:b])
        if self.id_adversary is not None:
            out["id_adversary"] = identity_adversary_pass(self.id_adversary, res["a"])
        if self.between_clip:  # [2B, T, D]: the whole code when there is no basis head
            rows = None if self.hog_basis_head is None else self.hog_basis_head.weight
            out["between_clip"] = res["a"].float() if rows is None else outside_rows(res["a"], rows)
        return out

    def _hog(self, clips: torch.Tensor, colour: bool = False, cell: int | None = None) -> torch.Tensor:
        """clips [N, T, 3, S, S] (normalised) -> their frames' HOG [N, T, Dh] (`objectives.hog.hog_descriptor`; with
        `colour`, each pixel's gradient from its strongest channel; cells of `cell` px, default `cir.hog_cell`)."""
        mean, std = self.encoder.mean.view(3), self.encoder.std.view(3)
        return hog_descriptor(clips.flatten(0, 1), mean, std, cell or self.hog_cell, self.hog_bins,
                              signed=self.hog_signed, colour=colour).view(*clips.shape[:2], -1)

    def _basis_hog(self, clips: torch.Tensor) -> torch.Tensor:
        """What the HOG bases read of clips [N, T, 3, S, S]: every basis' descriptor [N, T, Dh_i] in `_bases()`'s order,
        concatenated — grey HOG, then colour HOG with `cir.hog_basis_colour` and grey HOG of
        `cir.hog_basis_second_cell` px cells when set."""
        parts = [self._hog(clips, colour=colour, cell=cell) for _, colour, cell in self._basis_specs]
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]

    def _bases(self) -> list[WithinClipHOGBasis]:
        """The HOG bases in the order of `_basis_hog`'s descriptors: grey, then colour and the second cell size
        when on."""
        return [basis for basis, _, _ in self._basis_specs]

    def _split_bases(self, hog: torch.Tensor) -> list[torch.Tensor]:
        """`_basis_hog`'s concatenated descriptors [.., sum Dh] -> one tensor per basis of `_bases()`."""
        return list(hog.split([b.dim for b in self._bases()], -1))

    def hog_basis_pass(self, hog: torch.Tensor, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """The within-clip HOG basis' pass (`objective.cir.hog_basis_weight`): a [2B, T, D] both views' codes, hog the
        HOG of the frames the term reads (`hog_basis_frames`: the views, or each clip's clean frames, the same for
        both views) — both views' [2B, T, Dh] once the basis is fitted, view 1's [B, T, Dh] before. Returns `pred` =
        the head's output [2B, T, k] for every frame, and, once fitted, `target` [2B, T, k] (each frame's whitened
        projection, no gradient); before, with `hog_basis_fit=stream`, `stats` = view 1's HOG, which the engine
        gathers from every rank for `after_step`. With `hog_basis_colour` or `hog_basis_second_cell` hog is
        `_basis_hog`'s concatenated descriptors and `pred` and `target` hold k values per basis of `_bases()`: the grey
        basis' k, then the colour basis' and the second cell size's."""
        out = {"pred": self.hog_basis_head(a.to(self.hog_basis_head.weight.dtype)).float()}
        if self.hog_basis.is_fitted:
            out["target"] = torch.cat([basis.targets(h) for basis, h in zip(self._bases(), self._split_bases(hog))], -1)
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
        """clips [N, T, 3, S, S] un-augmented -> their frames' HOG [N, T, Dh] (float32; with more than one basis, every
        basis' descriptor: `_basis_hog`), for `after_step`."""
        return self._basis_hog(clips.float())

    @torch.no_grad()
    def after_step(self, keys: torch.Tensor | None) -> None:
        """`keys`: every rank's clips' HOG [N, T, Dh] while the HOG basis is being fitted — view 1's from the
        training stream, or un-augmented clips' before step 1 (`clean_fit_inputs`) — else None."""
        if keys is not None and self.hog_basis is not None:
            for basis, h in zip(self._bases(), self._split_bases(keys)):
                basis.accumulate(h)

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
