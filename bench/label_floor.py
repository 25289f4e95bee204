"""What the ground-truth AUs alone read on two of the quality bench's measures — label files only, no training.

1. **Between-clip share** (`objectives/identity.py::between_clip_share`, the term `objective.cir.between_clip_weight`
   trains down): the AU labels of a pretraining corpus cut into clips as the packer cuts them (`--clip-len` frames
   `--stride` apart, a clip every `--clip-step` frames) and batched as the term reads them (`--clips-per-rank` clips,
   each twice for the two views: [2B, T, A]). A code that held only the AUs would read this share; the term can
   lower a code's share below it only by taking out what the AUs do between clips.
2. **Identity probe** (`eval/probe.py::identity_probe` on `eval/report.py::identity_split`, as `aupretrain-eval`
   reads it from codes) with the labels as the features: how much identity the AUs themselves carry.

    python bench/label_floor.py PRETRAIN_CORPUS [EVAL_CORPUS ...] [--clip-len 4] [--stride 12] [--clip-step 1]
        [--clips-per-rank 16] [--batches 200] [--threshold 0.5] [--seed 0] [--json OUT]

Corpora are `aupretrain-synth` folders (`<identity>/<video>.mp4` + `<video>.labels.json`); the still-head protocol's
are `data/synthetic-still` and `data/synthetic_eval-{validation,test}-*` after one `bench/quality.py --protocol
still-head` run. Raises SystemExit naming the corpus when it has no label files, no video long enough for a clip,
or fewer clips than a batch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import report  # noqa: E402


def clip_labels(corpus: Path, clip_len: int, stride: int, step: int) -> np.ndarray:
    """[N, T, A] float32 AU intensities of every clip of every labelled video, each video one face segment cut by the
    packer's own `pack/clips.py::cut` (frames `stride` apart, one clip every `step` frames). Raises SystemExit when
    there is none."""
    from types import SimpleNamespace

    from aupretrain.pack.clips import PackSettings, cut

    settings = PackSettings(clip_len=clip_len, stride=stride, clip_step=step)
    files = sorted(corpus.glob("*/*.labels.json"))
    if not files:
        raise SystemExit(f"{corpus}: no label files (<identity>/<video>.labels.json)")
    clips = []
    for p in files:
        au = np.asarray(json.loads(p.read_text())["au"], np.float32)
        frames = (SimpleNamespace(segment=0, row=i) for i in range(len(au)))
        clips += [au[[f.row for _, f in clip]] for clip in cut(frames, settings)]
    if not clips:
        raise SystemExit(f"{corpus}: no labelled video of >= {(clip_len - 1) * stride + 1} frames "
                         f"(--clip-len {clip_len} --stride {stride})")
    return np.stack(clips)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pretrain", type=Path)
    ap.add_argument("eval", type=Path, nargs="*")
    ap.add_argument("--clip-len", type=int, default=4)
    ap.add_argument("--stride", type=int, default=12)
    ap.add_argument("--clip-step", type=int, default=1)
    ap.add_argument("--clips-per-rank", type=int, default=16)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args(argv)

    import torch

    from aupretrain.eval.datasets import load_synthetic
    from aupretrain.eval.probe import identity_probe
    from aupretrain.eval.report import identity_split
    from aupretrain.objectives.identity import between_clip_share

    inten = clip_labels(a.pretrain, a.clip_len, a.stride, a.clip_step)
    if len(inten) < max(a.clips_per_rank, 2):
        raise SystemExit(f"{a.pretrain}: {len(inten)} clips, fewer than a batch (--clips-per-rank {a.clips_per_rank})")
    rng = np.random.default_rng(a.seed)
    rows = []
    for kind, x in (("intensity", inten), ("binary", (inten >= a.threshold).astype(np.float32))):
        t = torch.from_numpy(x)
        shares = []
        for _ in range(a.batches):
            pick = torch.from_numpy(rng.choice(len(t), a.clips_per_rank, replace=False))
            shares.append(float(between_clip_share(torch.cat([t[pick], t[pick]]))))  # both views: [2B, T, A]
        rows.append({"measure": "between-clip share", "corpus": a.pretrain.name, "labels": kind,
                     "value": float(np.mean(shares)), "std": float(np.std(shares)), "chance": float("nan")})
    for corpus in a.eval:
        d = load_synthetic(corpus, threshold=a.threshold)
        test = identity_split(d)
        for kind, x in (("intensity", d.intensity), ("binary", d.labels)):
            acc = identity_probe(x[~test], d.identity[~test], x[test], d.identity[test], seed=a.seed)
            rows.append({"measure": "identity probe", "corpus": corpus.name, "labels": kind, "value": float(acc),
                         "std": float("nan"), "chance": 1.0 / len(np.unique(d.identity))})
    report(f"The AU labels alone ({len(inten)} clips of {a.clip_len} frames {a.stride} apart; "
           f"{a.clips_per_rank} clips a rank, two views)", rows, a.json,
           {"args": {k: str(v) for k, v in vars(a).items()}})


if __name__ == "__main__":
    main()
