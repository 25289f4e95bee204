"""The cross-identity reconstruction (CIR) pass: which images are decoded from which codes.

This is the model side of CIR (decode and re-encode); the loss terms on its outputs are pure functions
in `aupretrain.objectives.cir`. For clip A (a clip of this rank's batch) and its partner B (a clip of a
different identity), at the selected frames t and the identity frame s = (t + identity_offset) mod T:

    self   x_hat = D(a_t^A, p_s^A)            target x_t^A
    cross  x_x   = D(a_t^B, p_s^A)            "A showing B's AUs" (no pixel target: neither video shows it)
    re-encode    a(x_x) -> target a_t^B (AU consistency),  p(x_x) -> target p_s^A (identity consistency)
    cycle  x_c   = D(a(x_x), p_s^B)           target x_t^B

`encode` and `decode` are callables, so the same pass runs with the trained networks or, in tests, with
an oracle (the synthetic renderer) to check the pairing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # images [N,3,S,S] -> (a [N,D], p [N,D])
Decode = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (a, p) -> images [N,3,S,S]


@dataclass(frozen=True)
class CIRRequest:
    """What the objective asks the model to compute: partners and the frames used."""
    partner: torch.Tensor  # [B] index of a clip of another identity in this rank's batch, -1 if none
    frames: tuple[int, ...]  # frame indices t used for reconstruction
    identity_offset: int = 1  # identity code from frame s = (t + offset) mod T


def select_frames(clip_len: int, count: int) -> tuple[int, ...]:
    """`count` evenly spaced frame indices of a clip (all frames when count is 0 or >= clip_len)."""
    if count <= 0 or count >= clip_len:
        return tuple(range(clip_len))
    if count == 1:
        return (clip_len // 2,)
    return tuple(round(i * (clip_len - 1) / (count - 1)) for i in range(count))


def cir_forward(encode: Encode, decode: Decode, x: torch.Tensor, a: torch.Tensor, p: torch.Tensor,
                req: CIRRequest) -> dict[str, torch.Tensor]:
    """x [B, T, 3, S, S] the view's images, a/p [B, T, D] their codes. Returns tensors [B, F, ...]."""
    b, t = x.shape[:2]
    f = torch.tensor(req.frames, device=x.device)
    s = (f + req.identity_offset) % t
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
    rec_self = decode(flat(a_t), flat(p_s))
    cross = decode(flat(a_t_b), flat(p_s))
    a_cross, p_cross = encode(cross)
    rec_cycle = decode(a_cross, flat(p_s_b))
    return {
        "rec_self": unflat(rec_self), "target_self": x[:, f],
        "cross": unflat(cross),
        "a_cross": unflat(a_cross), "a_target": a_t_b,
        "p_cross": unflat(p_cross), "p_target": p_s,
        "rec_cycle": unflat(rec_cycle), "target_cycle": x[partner[:, None], f[None, :]],
        "valid": valid,
    }
