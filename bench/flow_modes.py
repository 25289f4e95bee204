"""How many directions of facial motion did a CLP run's linear flow basis learn, and how much of the AU probe do
they carry?

A run trained with `objective.cir.flow_grid` > 0 holds, in its last checkpoint, the decoder's basis W
[2 · flow_grid², au_dim] (`methods/clp.py::LinearFlowDecoder`: the displacement field is flow_max · tanh(W â) on a
lattice, â the unit AU code). This bench prints W's singular values — directions far above the level of its random
start (`flow_init_std`) are the motions the term taught — and the linear AU probe of `aupretrain-eval` (same data,
folds and probe, from the config tree) on: the code, the unit code, the field W â, and the code's projection on W's
top-k right singular vectors. If the top few directions carry the probe, the codes know as many motions as W learned.

    python bench/flow_modes.py RUN [--top 4 8 16 32] [--json OUT] [Hydra overrides, e.g. eval.split=validation]

RUN is a run folder of `aupretrain/train.py` (its `encoder.pt` and `checkpoints/step_*`). The probe's folds follow
`run.seed`, as in `aupretrain-eval`; give `run.seed=N` to match a run's own evaluation. Raises SystemExit naming RUN
when it has no encoder, no checkpoint, a checkpoint that cannot be read or has no linear flow basis, or an
`encoder.pt` from another step than the newest checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import report  # noqa: E402

from aupretrain.config import load_config  # noqa: E402
from aupretrain.engine import checkpoint  # noqa: E402
from aupretrain.eval.report import evaluate_codes  # noqa: E402
from aupretrain.eval.run import load_data  # noqa: E402
from aupretrain.models.encoder import load_encoder  # noqa: E402

BASIS = "decoder.basis.weight"


def flow_basis(run: Path) -> tuple[int, torch.Tensor]:
    """(step, W [2 g², au_dim] float32) from the newest complete checkpoint of `run` (any ZeRO stage)."""
    found = checkpoint.latest(run)
    if found is None:
        raise SystemExit(f"{run}: no checkpoint under {checkpoint.root(run)}")
    step, path = found
    try:
        states = checkpoint.full_weights(path)  # any ZeRO stage: partitions gathered, fp32
    except (OSError, KeyError, ValueError) as e:  # UsageError (a file that would run code) is a ValueError
        raise SystemExit(f"{run}: checkpoint {path} cannot be read: {e}") from None
    if BASIS not in states:
        raise SystemExit(f"{run}: checkpoint {path} has no {BASIS} (was the run trained with objective.cir.flow_grid > 0?)")
    return step, states[BASIS].float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--top", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_intermixed_args()
    if not (a.run / "encoder.pt").is_file():
        raise SystemExit(f"{a.run}: no encoder.pt (give the folder of a finished training run)")
    if min(a.top) < 1:
        ap.error(f"--top: every k must be >= 1, got {a.top}")
    step, W = flow_basis(a.run)
    if max(a.top) > min(W.shape):
        ap.error(f"--top: W ({W.shape[0]} x {W.shape[1]}) has {min(W.shape)} directions, got {max(a.top)}")
    saved = torch.load(a.run / "encoder.pt", map_location="cpu", weights_only=True).get("step")
    if saved is not None and int(saved) != step:
        raise SystemExit(f"{a.run}: encoder.pt is from step {saved} but the newest checkpoint from step {step}: "
                         "W and the codes must come from the same step (export that checkpoint's encoder)")
    cfg = load_config(list(a.overrides))
    encoder = load_encoder(a.run / "encoder.pt").eval()
    data, folds, _ = load_data(cfg, encoder)
    code = encoder.encode(torch.from_numpy(data.frames), int(cfg.eval.batch_size)).float()
    unit = torch.nn.functional.normalize(code, dim=-1)
    _, sv, vh = torch.linalg.svd(W, full_matrices=False)
    feats = {"code": code, "unit code": unit, "field W â": unit @ W.T}
    feats |= {f"top-{k} directions of W": unit @ vh[:k].T for k in a.top}
    seed = int(cfg.run.seed)
    rows = [{"features": name, "dims": int(f.shape[1]),
             "mean F1": float(evaluate_codes(f.numpy().astype(np.float32), data, cfg.eval, seed, folds)["f1_mean"])}
            for name, f in feats.items()]
    print(f"singular values of W ({W.shape[0]} x {W.shape[1]}, step {step}):",
          " ".join(f"{v:.2f}" for v in sv[:12].tolist()), "...", f"{sv[-1].item():.2f}")
    report(f"AU probe on a flow basis's directions: {a.run} ({cfg.eval.split} identities)", rows, a.json,
           {"run": str(a.run), "step": step, "singular_values": sv.tolist(), "split": str(cfg.eval.split)})


if __name__ == "__main__":
    main()
