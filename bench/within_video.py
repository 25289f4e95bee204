"""In which feature space does what changes *within* a face video carry the AUs? A label-free reference for the
targets of a within-video objective (TCL's and CIR's premise: what differs between frames of one face is its AUs).

For each feature space — HOG (the HOG row's features: OpenCV, 64-px grey), grey pixels (64 px), or an encoder's AU
codes — the bench fits principal directions on the frames of an unlabelled corpus two ways: of the features centred
per video (**within-video**: what changes while the face stays the same) and of all frames pooled (**all frames**:
dominated by who the face is). The evaluation frames' features are projected on the top-k directions and scored by
the linear AU probe of `aupretrain-eval` (same data, folds and probe, from the config tree); the full features
are scored too. No label is read to fit the directions. The JSON also holds each row's F1 per AU (`per_au_f1`,
in the rows' order).

    python bench/within_video.py CORPUS [--features [hog] [pixels]] [--encoder E.pt ...] [--k 2 8 16 32 128]
        [--videos 800] [--every 4] [--hog-size 64] [--hog-cell 8] [--hog-bins 9] [--hog-signed] [--bands 1] [--whiten 0]
        [--concat]
        [--json OUT] [Hydra overrides, e.g. eval.split=validation]

`--hog-size` sets the side (pixels) the grey frames are resized to before HOG (64: the HOG row's; the corpus is
rendered at 112), `--hog-cell` HOG's cell side in pixels at that size (blocks of 2 x 2 cells), `--hog-bins` its
orientation bins, over 180 deg or, with `--hog-signed`, 360 deg (the edge's polarity kept); `--features hog_colour`
is HOG of the colour frame (each pixel's gradient from its strongest channel, Dalal & Triggs' colour HOG).
`--whiten R` fits the within-video directions as `objective.cir.hog_basis_whiten=R` does in training (the
project's `WithinClipHOGBasis`, each video one clip): the k directions with the largest within-video share of their
variance in the pooled features' top-R principal subspace, whitened — the "all frames" rows are unchanged.
`--bands N` fits the directions of HOG separately in N horizontal bands of its block rows (`hog_bands`: brows, eyes,
mouth apart, so a small local change such as a closing lid is not outvoted by the mouth's larger ones) and
concatenates k directions of each band. `--concat` also scores, for each k, the within-video directions of every
fitted feature space side by side (k per space; e.g. `--features hog hog_colour --whiten 64 --concat`: what
`objective.cir.hog_basis_colour=true` regresses).

CORPUS is a folder of `<identity>/<video>.mp4` of aligned faces (`aupretrain-synth`'s layout; a still-head corpus
isolates the AUs: `aupretrain-synth D --identities 800 --videos-per-identity 1 --frames 40 -- synth.head_motion=0`).
Raises SystemExit naming CORPUS when it holds no videos, and naming `--k` when a k exceeds what can be fitted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import report  # noqa: E402

from aupretrain.config import load_config  # noqa: E402
from aupretrain.eval.baselines import hog_features  # noqa: E402
from aupretrain.eval.report import evaluate_codes  # noqa: E402
from aupretrain.eval.run import load_data  # noqa: E402
from aupretrain.methods.hog_basis import WithinClipHOGBasis  # noqa: E402
from aupretrain.models.encoder import AUEncoder, load_encoder  # noqa: E402


def principal_directions(groups: list[np.ndarray], k: int, within: bool = True) -> np.ndarray:
    """Top-k principal directions [k, D] of features grouped by video (groups: arrays [n_i, D]). `within`: of the
    features centred on their own video's mean (the change inside each video), else of all rows centred on the
    pooled mean. Raises ValueError when k exceeds the rank the rows allow."""
    x = np.concatenate([g - g.mean(0) for g in groups] if within else groups).astype(np.float64)
    if not within:
        x = x - x.mean(0)
    rows = sum(len(g) - 1 for g in groups) if within else len(x) - 1  # centring takes one degree of freedom each
    if k > min(rows, x.shape[1]):
        raise ValueError(f"k={k}: {len(x)} rows of {x.shape[1]} features in {len(groups)} videos allow at most "
                         f"{max(0, min(rows, x.shape[1]))} directions")
    return np.linalg.svd(x, full_matrices=False)[2][:k]


def within_share_directions(groups: list[np.ndarray], k: int, rank: int) -> np.ndarray:
    """The top-k directions [k, D] of the largest within-video share of variance, fitted in the pooled features'
    top-`rank` principal subspace, whitened: `WithinClipHOGBasis(whiten=rank)` with each video (groups: arrays
    [n_i, D], n_i >= 2) one clip. Raises ValueError when k or rank is out of range for D, RuntimeError when the
    videos hold too few frames or within-video degrees of freedom for them."""
    basis = WithinClipHOGBasis(groups[0].shape[1], k, len(groups), whiten=rank)
    for g in groups:
        basis.accumulate(torch.from_numpy(np.asarray(g, dtype=np.float64))[None])
    return basis.basis.double().numpy()


def hog_bands(dim: int, blocks: int, bands: int, per_block: int = 36) -> list[np.ndarray]:
    """Column indices of a HOG descriptor of `dim` = blocks² · per_block values (4 cells × bins; OpenCV's order:
    blocks column by column, so a value's block row is (index // per_block) mod blocks) split into `bands` horizontal bands
    of block rows, top first (`np.array_split` of the rows). Raises ValueError when `bands` is not in 1..blocks or
    `dim` is not blocks² · per_block."""
    if dim != blocks * blocks * per_block or not 1 <= bands <= blocks:
        raise ValueError(f"--bands {bands}: a HOG of {dim} values in {blocks} x {blocks} blocks splits into "
                         f"1..{blocks}")
    row = (np.arange(dim) // per_block) % blocks
    return [np.flatnonzero(np.isin(row, rows)) for rows in np.array_split(np.arange(blocks), bands)]


def banded_directions(groups: list[np.ndarray], k: int, bands: list[np.ndarray], within: bool = True) -> np.ndarray:
    """`principal_directions` fitted in each band of columns alone (`hog_bands`) and embedded in the full space:
    [len(bands), k, D], zero outside each band (the top j of every band: `[:, :j].reshape(-1, D)`)."""
    out = np.zeros((len(bands), k, groups[0].shape[1]))
    for b, cols in enumerate(bands):
        out[b][:, cols] = principal_directions([g[:, cols] for g in groups], k, within)
    return out


def grey_pixels(frames: np.ndarray, size: int = 64) -> np.ndarray:
    """uint8 RGB frames [N, H, W, 3] -> grey pixels at `size` px in [0, 1], float32 [N, size²]."""
    import cv2

    out = [cv2.cvtColor(cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY) for f in frames]
    return np.stack(out).reshape(len(frames), -1).astype(np.float32) / 255.0


def corpus_videos(corpus: Path, videos: int, every: int) -> list[np.ndarray]:
    """Every `every`-th frame (uint8 RGB [n, H, W, 3]) of the first `videos` videos `<identity>/<video>.mp4`."""
    import av

    paths = sorted(corpus.glob("*/*.mp4"))[:videos]
    if not paths:
        raise SystemExit(f"{corpus}: no <identity>/<video>.mp4 videos (render a corpus with aupretrain-synth)")
    out = []
    for p in paths:
        with av.open(str(p)) as c:
            out.append(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])[::every])
    return out


# --features: (row name, features); HOG's are made in `main` from --hog-size/-cell/-bins/-signed
SPACES = {"hog": ("HOG", None), "hog_colour": ("HOG of colour", None), "pixels": ("grey pixels", grey_pixels)}


def parse_args(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and its reading of `argv`: key=value words are the config's Hydra overrides (`.overrides`) wherever
    they stand — after a list flag (`--k 8 16 eval.split=validation`) argparse alone would take them as its items
    (so a path or --json value holding '=' is read as an override too)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--features", nargs="*", default=["hog", "pixels"], choices=sorted(SPACES),
                    help="feature spaces to fit (none: only the --encoder codes)")
    ap.add_argument("--encoder", nargs="*", default=[], type=Path, help="also the AU codes of these encoders")
    ap.add_argument("--k", type=int, nargs="+", default=[2, 8, 16, 32, 128])
    ap.add_argument("--videos", type=int, default=800)
    ap.add_argument("--every", type=int, default=4, help="fit on every n-th frame of each video")
    ap.add_argument("--hog-size", type=int, default=64, help="side of the grey frames HOG reads, pixels")
    ap.add_argument("--hog-cell", type=int, default=8, help="HOG cell side in pixels at --hog-size")
    ap.add_argument("--hog-bins", type=int, default=9, help="HOG orientation bins")
    ap.add_argument("--hog-signed", action="store_true", help="HOG bins over 360 deg instead of 180")
    ap.add_argument("--bands", type=int, default=1, help="fit HOG's directions in N bands of block rows")
    ap.add_argument("--whiten", type=int, default=0,
                    help="within-video directions of the largest within share, in the pooled top-R subspace (0: off)")
    ap.add_argument("--concat", action="store_true",
                    help="also score every feature space's within-video directions side by side, per k")
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (key=value), anywhere on the line")
    overrides = [w for w in argv if "=" in w and not w.startswith("-")]
    a = ap.parse_intermixed_args([w for w in argv if w not in overrides])
    a.overrides = [*a.overrides, *overrides]
    return ap, a


def main() -> None:
    ap, a = parse_args(sys.argv[1:])
    if not a.features and not a.encoder:
        ap.error("nothing to fit: give --features and/or --encoder")
    if min(a.k) < 1 or a.videos < 1 or a.every < 1 or a.bands < 1:
        ap.error(f"--k, --videos, --every and --bands must be >= 1, got {a.k}, {a.videos}, {a.every}, {a.bands}")
    if a.whiten and (a.bands > 1 or a.whiten < max(a.k)):
        ap.error(f"--whiten {a.whiten}: must be >= the largest --k ({max(a.k)}) and cannot be combined with --bands")
    if a.hog_bins < 2:
        ap.error(f"--hog-bins {a.hog_bins}: HOG needs at least 2 orientation bins")
    if a.hog_cell < 2 or a.hog_size % a.hog_cell or a.hog_size // a.hog_cell < 2:
        ap.error(f"--hog-cell {a.hog_cell}: must divide --hog-size {a.hog_size} into at least 2 cells")
    cfg = load_config(list(a.overrides))
    encoders = {f"codes of {p}": load_encoder(p).eval() for p in a.encoder}
    reference = next(iter(encoders.values()), None) or AUEncoder(
        OmegaConf.to_container(cfg.model, resolve=True), int(cfg.data.input_size))
    data, folds, _ = load_data(cfg, reference)
    fit_frames = corpus_videos(a.corpus, a.videos, a.every)
    if min(len(v) for v in fit_frames) < 2:
        raise SystemExit(f"--every {a.every}: a video of {a.corpus} keeps fewer than 2 frames; nothing changes within it")
    spaces = dict(SPACES[name] for name in a.features)
    for key, colour in (("hog", False), ("hog_colour", True)):
        if key in a.features:
            spaces[SPACES[key][0]] = lambda fr, c=colour: hog_features(fr, a.hog_size, a.hog_cell, 2 * a.hog_cell,
                                                                       a.hog_bins, colour=c, signed=a.hog_signed)
    spaces |= {n: (lambda fr, e=e: e.encode(torch.from_numpy(fr)).numpy()) for n, e in encoders.items()}
    seed, rows, per_au = int(cfg.run.seed), [], []  # per_au[i]: row i's F1 per AU (JSON only)
    within_codes: dict[int, list[np.ndarray]] = {k: [] for k in a.k}  # --concat: each space's within-video projections
    for name, features in spaces.items():
        groups = [features(v) for v in fit_frames]
        x = features(data.frames)

        def probe(f: np.ndarray) -> dict:
            return evaluate_codes(np.ascontiguousarray(f, dtype=np.float32), data, cfg.eval, seed, folds)

        r = probe(x)
        rows.append({"features": name, "directions": "all features", "k": int(x.shape[1]),
                     "mean F1": r["f1_mean"], "identity acc": r.get("identity_acc")})
        per_au.append(r["f1"])
        for within in (True, False):
            banded = name.startswith("HOG") and a.bands > 1
            try:
                if banded:
                    bands = hog_bands(x.shape[1], a.hog_size // a.hog_cell - 1, a.bands, 4 * a.hog_bins)
                    banded_basis = banded_directions(groups, max(a.k), bands, within)
                    bases = {k: banded_basis[:, :k].reshape(-1, x.shape[1]) for k in a.k}
                elif within and a.whiten:
                    basis = within_share_directions(groups, max(a.k), a.whiten)
                    bases = {k: basis[:k] for k in a.k}
                else:
                    basis = principal_directions(groups, max(a.k), within)
                    bases = {k: basis[:k] for k in a.k}
            except (ValueError, RuntimeError) as e:
                raise SystemExit(f"--k / --bands / --whiten: {name} of {a.corpus}: {e}") from None
            for k in a.k:
                if within:
                    within_codes[k].append(x @ bases[k].T)
                r = probe(x @ bases[k].T)
                how = ("within-video" if within else "all frames") + (f", {a.bands} bands" if banded else "")
                how += f", within share in top {a.whiten}" if within and a.whiten and not banded else ""
                rows.append({"features": name, "directions": how, "k": k * (a.bands if banded else 1),
                             "mean F1": r["f1_mean"], "identity acc": r.get("identity_acc")})
                per_au.append(r["f1"])
        print(f"{name}: done", flush=True)
    if a.concat and len(spaces) > 1:
        for k in a.k:
            side_by_side = np.concatenate(within_codes[k], 1)
            r = probe(side_by_side)
            rows.append({"features": " + ".join(spaces), "directions": "within-video, side by side"
                         + (f", within share in top {a.whiten}" if a.whiten and a.bands == 1 else ""),
                         "k": side_by_side.shape[1], "mean F1": r["f1_mean"], "identity acc": r.get("identity_acc")})
            per_au.append(r["f1"])
    report(f"AU probe on principal directions fitted without labels on {a.corpus} ({cfg.eval.split} identities)",
           rows, a.json, {"corpus": str(a.corpus), "videos": a.videos, "every": a.every, "split": str(cfg.eval.split),
                          "hog_size": a.hog_size, "hog_cell": a.hog_cell, "hog_bins": a.hog_bins,
                          "hog_signed": a.hog_signed, "bands": a.bands, "whiten": a.whiten, "concat": a.concat,
                          "per_au_f1": per_au})


if __name__ == "__main__":
    main()
