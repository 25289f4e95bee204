"""Can CLP's flow decoder (`objective.cir.flow`) rebuild frame t from frame s when its codes are the truth — and can
it, alone, teach an encoder codes that do?

The decoder is trained alone, its AU codes replaced by the renderer's AU vectors of frames t and s (an oracle
encoder; the identity code is zero), on pairs of frames `--gap` apart from the first `--videos` videos of a
synthetic corpus rendered by `aupretrain-synth` (a still-head corpus isolates the AUs:
`aupretrain-synth D --identities 800 --videos-per-identity 1 --frames 40 -- synth.head_motion=0`). It prints, every
`--every` steps, the L1 error of the warped source (`rec`) beside the error of copying the source (`copy`) on the
same batch, in the encoder's normalised units — the floor a decoder that learned nothing sits on. Both are measured
after the Gaussian blur of `objective.cir.rec_blur` (what CLP trains with), and the decoder is the one CLP builds:
`objective.cir.flow_grid=16` gives the linear displacement basis of the AU change (`LinearFlowDecoder`).

    python bench/flow_oracle.py D --json bench/results/flow_oracle.json [Hydra overrides]
    python bench/flow_oracle.py D objective.cir.flow_grid=16 objective.cir.rec_blur=1 --lr 1e-3
    python bench/flow_oracle.py D objective.cir.flow_grid=16 objective.cir.rec_blur=1 objective.cir.flow_init_std=0.1 \
        --lr 1e-3 --batch 32 --steps 1500 --train-encoder E.pt      # the codes learned from this term alone
    ... --gap 12 --videos 800 --train-encoder E.pt              # from frames 12 apart (480 ms at 25 fps)

`--train-encoder` replaces the oracle by the config's encoder, trained with the reconstruction term alone (frames as
they are: no augmentation), and saves it for `aupretrain-eval E.pt`: does this term, by itself, teach a code AUs?
The last column is the mean of `rec - copy` over the steps since the previous row. Pairs start every `--gap` frames
(pairs that do not overlap); `--pair-step 1` takes every pair. With a linear basis the end prints its singular
values (and, with oracle codes, its column norm per AU: which AUs' motion it learned; both in the JSON);
`objective.cir.texture_grid=G` adds its appearance basis.

The decoder's kind, shape, normalisation, input size, `flow_max` and `flow_grid` come from the config tree (`experiment=cpu
objective=clp` plus the overrides given); with the oracle its code width is the AU vector's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import report  # noqa: E402

from aupretrain.config import load_config  # noqa: E402
from aupretrain.methods.decoders import build_decoder  # noqa: E402
from aupretrain.models.encoder import AUEncoder, save_encoder  # noqa: E402
from aupretrain.objectives.cir import gaussian_blur  # noqa: E402


def load_pairs(corpus: Path, videos: int, gap: int, size: int, mean, std,
               pair_step: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame pairs (t, t + `gap`) for t = 0, `pair_step`, 2 `pair_step`, ... (default: `gap`, pairs that do not
    overlap) [N, 2, 3, S, S] (normalised with the model's `mean`/`std`, fractions of 255) and their AU vectors
    [N, 2, A]."""
    import av
    import cv2

    mean, std = np.asarray(mean, np.float32) * 255, np.asarray(std, np.float32) * 255  # float32 frames: half the memory
    frames, aus = [], []
    for labels in sorted(corpus.glob("*/*.labels.json"))[:videos]:
        au = np.asarray(json.loads(labels.read_text())["au"], dtype=np.float32)
        with av.open(str(labels.with_name(labels.name.replace(".labels.json", ".mp4")))) as c:
            fr = [((cv2.resize(f.to_ndarray(format="rgb24"), (size, size), interpolation=cv2.INTER_AREA) - mean) / std)
                  .astype(np.float32) for f in c.decode(video=0)]
        for t in range(0, len(fr) - gap, pair_step or gap):
            frames.append(np.stack([fr[t], fr[t + gap]]))
            aus.append(np.stack([au[t], au[t + gap]]))
    if not frames:
        raise SystemExit(f"{corpus}: no <identity>/<video>.labels.json + .mp4 pairs (render one with aupretrain-synth)")
    x = torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).contiguous()
    return x, torch.from_numpy(np.stack(aus))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--videos", type=int, default=300)
    ap.add_argument("--gap", type=int, default=4, help="frames between s and t")
    ap.add_argument("--pair-step", type=int, default=None,
                    help="frames between the first frames of successive pairs (default: --gap; 1: every pair)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--train-encoder", metavar="OUT.pt", help="learn the codes too: the config's encoder, trained with "
                    "this reconstruction alone, saved to OUT.pt (score it with aupretrain-eval OUT.pt)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (model=..., data.input_size=..., objective.cir.flow_max=...)")
    a = ap.parse_args()
    if a.pair_step is not None and a.pair_step < 1:
        ap.error(f"--pair-step must be >= 1, got {a.pair_step}")
    cfg = load_config(["experiment=cpu", "objective=clp", *a.overrides])
    m, size = cfg.model, int(cfg.data.input_size)
    torch.manual_seed(a.seed)
    x, au = load_pairs(a.corpus, a.videos, a.gap, size, m.mean, m.std, a.pair_step)
    cir = cfg.objective.cir
    model = OmegaConf.to_container(m, resolve=True)
    encoder = AUEncoder(model, size) if a.train_encoder else None
    if encoder is None:  # oracle codes: the AU vectors
        model = {**model, "au_dim": au.shape[-1], "id_dim": 4}
    dec = build_decoder(model, size, source=True, flow=True, flow_max=float(cir.flow_max), flow_grid=int(cir.flow_grid),
                        flow_init_std=float(cir.flow_init_std), texture_grid=int(cir.get("texture_grid", 0)))
    blur = lambda v: gaussian_blur(v, float(cir.rec_blur))  # noqa: E731
    params = list(dec.parameters()) + (list(encoder.parameters()) if encoder is not None else [])
    opt = torch.optim.AdamW(params, lr=a.lr)
    rows, window = [], []
    for step in range(a.steps + 1):
        i = torch.randint(0, len(x), (a.batch,))
        src, tgt = x[i, 0], x[i, 1]
        if encoder is None:
            a_t, a_s, p = au[i, 1], au[i, 0], torch.zeros(a.batch, 4)
        else:
            codes = encoder(torch.cat([tgt, src]))
            a_t, a_s, p = codes["a"][:a.batch], codes["a"][a.batch:], codes["p"][:a.batch]
        rec = (blur(dec(a_t, p, src, a_s)) - blur(tgt)).abs().mean()
        opt.zero_grad()
        rec.backward()
        opt.step()
        copy = (blur(src) - blur(tgt)).abs().mean().item()
        window.append(rec.item() - copy)
        if step % a.every == 0:
            rows.append({"step": step, "rec": round(rec.item(), 5), "copy": round(copy, 5),
                         "rec - copy (x 1e4)": round((rec.item() - copy) * 1e4, 2),
                         "window mean (x 1e4)": round(sum(window) / len(window) * 1e4, 2)})
            window = []
    if encoder is not None:
        save_encoder(encoder.eval(), a.train_encoder, {"flow_oracle": vars(a) | {"corpus": str(a.corpus)}})
    basis = {}
    if hasattr(dec, "basis"):  # the linear basis W [2 g^2, code width]: how many directions of motion it learned
        W = dec.basis.weight.detach()
        basis = {"singular_values": torch.linalg.svdvals(W).tolist(), "column_norms": W.norm(dim=0).tolist()}
        print("singular values of W:", " ".join(f"{v:.2f}" for v in basis["singular_values"][:12]))
        if encoder is None:  # one column per AU of the renderer
            print("column norm of W per AU:", " ".join(f"{v:.2f}" for v in basis["column_norms"]))
    codes = "an encoder trained with it" if encoder is not None else "oracle AU codes"
    report(f"flow decoder with {codes}: {len(x)} pairs, {a.corpus}", rows, a.json, {"basis": basis, "args": vars(a) | {
        "corpus": str(a.corpus)}, "decoder": {"input_size": size, "kind": type(dec).__name__,
                                              "widths": list(m.decoder.widths), "norm": m.norm,
                                              "flow_max": float(cir.flow_max), "flow_grid": int(cir.flow_grid),
                                              "texture_grid": int(cir.get("texture_grid", 0)),
                                              "rec_blur": float(cir.rec_blur)}})


if __name__ == "__main__":
    main()
