"""Input pipeline throughput: the DALI reader, the torch baseline loader, and DALI decode-only (the ceiling).

    python bench/data.py --json bench/results/data.json                      # packs a synthetic set first
    python bench/data.py --shards shards/synthetic --batch 32 --size 112 --threads 2
    python bench/data.py --only dali torch_baseline --to-model    # also: up to the model's input
    python bench/data.py --floor             # also: each operator alone, the bound on DALI / decode-only on CPU
    python bench/data.py --only dali -- data.geometry=dali          # the views cut by DALI's CPU operators

Same shards, same batch (clips), same model input size and the same augmentation config (`configs/data/`) for
the two loaders; the decode-only pipeline reads and decodes the same JPEGs and does nothing else. Reported:
source frames/s (clips x T frames decoded per second; each loader makes two augmented views of each) after a
warm-up, on this machine's cores; with --to-model also up to the model's input (the step's join of the two views
and the channels-last layout the trunk reads).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import report  # noqa: E402


def ensure_shards(path: Path) -> Path:
    from aupretrain.pack.packer import PackSettings, pack
    from aupretrain.synth.corpus import write_corpus

    if (path / "manifest.json").exists():
        return path
    corpus = path.with_name(path.name + "-corpus")
    if not (corpus / "corpus.json").exists():
        write_corpus(corpus, identities=40, videos_per_identity=1, frames=64, seed=0)
    pack(str(corpus), str(path), PackSettings(clip_len=8, stride=2, size=112, samples_per_shard=64, align="center"))
    return path


def to_model(batch: dict) -> None:
    """What the training step does with a batch before the first convolution: both views joined
    (`engine.step.join_views`) and laid out as the channels-last trunk reads them (a copy unless already so)."""
    import torch

    from aupretrain.engine.step import join_views

    join_views(batch, "cpu").flatten(0, 1).contiguous(memory_format=torch.channels_last)


def rate(batches, clip_len: int, batch: int, warmup: int, steps: int, deliver: bool = False) -> float:
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        if deliver:
            to_model(b)
    return steps * batch * clip_len / (time.perf_counter() - t0)


def decode_only(settings, clip_len: int):
    """DALI: read + decode the T JPEGs of each clip, nothing else (the ceiling of any DALI pipeline here)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    from aupretrain.data import shards
    from aupretrain.data.dataset import shared_dataset_view, use_gpu

    _, paths, idx, _, _, _ = shared_dataset_view(settings.root)
    gpu = use_gpu(settings.device)

    @pipeline_def(batch_size=settings.batch_size, num_threads=settings.num_threads, device_id=0 if gpu else None,
                  prefetch_queue_depth=settings.prefetch)
    def pipe():
        outs = fn.readers.webdataset(paths=paths, index_paths=idx, ext=shards.frame_exts(clip_len),
                                     random_shuffle=True, initial_fill=settings.shuffle_buffer, name="Reader")
        return tuple(fn.decoders.image(j, device="mixed" if gpu else "cpu", output_type=types.RGB) for j in outs)

    p = pipe()
    p.build()
    it = DALIGenericIterator([p], [f"f{i}" for i in range(clip_len)], reader_name="Reader", auto_reset=True,
                             last_batch_policy=LastBatchPolicy.DROP)

    def endless():
        while True:
            yield from it
    return endless()


def cpu_floor(root: Path, size: int, rotate: bool, frames: int = 64, repeat: int = 20) -> dict:
    """What one core pays per source frame, in microseconds, for the decode and for the least work the configured
    augmentation needs per view, each operator timed alone with OpenCV (one thread) on the shards' own JPEGs:
    decode, the geometry to the model input (`rotate`: one bilinear warp composing rotation, crop and resize; else
    a crop resized), the 3x3 colour map, the 5-tap blur, the uint8 -> float normalisation. `ratio_bound` = decode / (decode + 2 views): the largest DALI / decode-only
    ratio any pipeline that makes two such views can reach when both share the same cores (no op fused away; the
    shared antialiased resize of frames larger than the views need, when there is one, is not counted: the bound
    is then higher than what `host_views` can reach)."""
    import tarfile

    import cv2
    import numpy as np

    tars = sorted(root.glob("*.tar"))
    if not tars:
        raise SystemExit(f"--floor reads the JPEGs of a local shard folder; {root} holds no .tar")
    tar = tars[0]
    with tarfile.open(tar) as t:
        jpegs = [t.extractfile(m).read() for m in t.getmembers() if m.name.endswith(".jpg")][:frames]
    bufs = [np.frombuffer(j, np.uint8) for j in jpegs]
    imgs = [cv2.imdecode(b, cv2.IMREAD_COLOR) for b in bufs]
    h, w = imgs[0].shape[:2]
    side = math.sqrt(0.8)
    m = np.array([[w * side / size, 0.0, 0.1 * w], [0.0, h * side / size, 0.1 * h]])
    aff = np.array([[1.1, 0.05, 0.0, 3.0], [0.02, 0.9, 0.01, -2.0], [0.0, 0.03, 1.05, 1.0]], np.float32)
    lut = np.linspace(-2, 2, 768).astype(np.float32).reshape(1, 256, 3)
    view = np.empty((size, size, 3), np.uint8)
    out8, outf = np.empty_like(view), np.empty((size, size, 3), np.float32)
    ops = {
        "decode": lambda i: cv2.imdecode(bufs[i], cv2.IMREAD_COLOR),
        "geometry": (lambda i: cv2.warpAffine(imgs[i], m, (size, size), dst=view, borderMode=cv2.BORDER_REPLICATE,
                                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)) if rotate else
                    (lambda i: cv2.resize(imgs[i][: round(side * h), : round(side * w)], (size, size), dst=view,
                                          interpolation=cv2.INTER_LINEAR)),
        "colour": lambda i: cv2.transform(view, aff, dst=out8),
        "blur": lambda i: cv2.GaussianBlur(view, (5, 5), 0.8, dst=out8, sigmaY=0.8,
                                           borderType=cv2.BORDER_REFLECT_101),
        "normalise": lambda i: cv2.LUT(view, lut, dst=outf),
    }
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    us = {}
    try:
        for name, op in ops.items():
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                for _ in range(repeat):
                    for i in range(len(bufs)):
                        op(i)
                best = min(best, (time.perf_counter() - t0) / (repeat * len(bufs)) * 1e6)
            us[name] = best
    finally:
        cv2.setNumThreads(threads)
    per_view = sum(v for k, v in us.items() if k != "decode")
    return {"us_per_frame": us, "per_view_us": per_view,
            "ratio_bound": us["decode"] / (us["decode"] + 2 * per_view)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--shards", default="data/bench-shards")
    ap.add_argument("--batch", type=int, default=32, help="clips per batch")
    ap.add_argument("--size", type=int, default=112, help="model input (pixels)")
    ap.add_argument("--threads", type=int, default=2, help="DALI threads / DataLoader workers")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="auto", help="auto | cpu | gpu (DALI)")
    ap.add_argument("--only", choices=["dali", "torch_baseline", "dali_decode_only"], nargs="*",
                    help="measure only these (ratios need all three)")
    ap.add_argument("--to-model", action="store_true",
                    help="also time each loader up to the model's input (views joined, channels-last layout)")
    ap.add_argument("--floor", action="store_true",
                    help="also time the decode and each per-view operator alone (OpenCV, one thread): the bound on "
                         "DALI / decode-only that two augmented views allow on these cores")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.augment.blur_sigma=[0,0]")
    a = ap.parse_args()
    import torch

    from aupretrain.config import load_config
    from aupretrain.data.dali_reader import ClipLoader
    from aupretrain.data.dataset import ReaderSettings
    from aupretrain.data.torch_reader import TorchClipLoader

    root = ensure_shards(Path(a.shards))
    cfg = load_config([f"data.shards={root}", f"data.batch_size={a.batch}", f"data.input_size={a.size}",
                       f"data.num_threads={a.threads}", f"data.device={a.device}", *a.overrides])
    s = ReaderSettings.from_config(cfg, 0, 1)
    torch.set_num_threads(1)  # the loaders' own threads/workers do the work
    only = set(a.only or ["dali", "torch_baseline", "dali_decode_only"])
    clip_len = json.loads((root / "manifest.json").read_text())["clip_len"]
    fps = {}
    if "dali" in only:
        fps["dali"] = rate(ClipLoader(s), clip_len, a.batch, a.warmup, a.steps)
    if "torch_baseline" in only:
        fps["torch_baseline"] = rate(TorchClipLoader(s), clip_len, a.batch, a.warmup, a.steps)
    if "dali_decode_only" in only:
        fps["dali_decode_only"] = rate(decode_only(s, clip_len), clip_len, a.batch, a.warmup, a.steps)
    if a.to_model:
        for k, make in (("dali", lambda: ClipLoader(s)), ("torch_baseline", lambda: TorchClipLoader(s))):
            if k in only:
                fps[f"{k}_to_model"] = rate(make(), clip_len, a.batch, a.warmup, a.steps, deliver=True)
    ratios = {"dali_vs_baseline": fps["dali"] / fps["torch_baseline"],
              "dali_vs_ceiling": fps["dali"] / fps["dali_decode_only"]} \
        if {"dali", "torch_baseline", "dali_decode_only"} <= set(fps) else {}
    rows = [{"pipeline": k, "source frames/s": v} for k, v in fps.items()]
    floor = cpu_floor(root, a.size, bool(cfg.data.augment.rotate)) if a.floor else None
    from aupretrain.data.dataset import host_geometry

    geometry = "opencv" if host_geometry(s) else "dali"  # where the DALI reader's views were cut (data.geometry)
    report(f"Input pipelines, {a.batch} clips x {clip_len} frames, {a.size} px, two views, {a.threads} threads, "
           f"DALI reader's geometry: {geometry}", rows, a.json,
           {"frames_per_s": fps, "ratios": ratios, "geometry": geometry, "args": vars(a),
            **({"floor": floor} if floor else {})})
    print({k: round(v, 3) for k, v in ratios.items()})
    if floor:
        print("one core, per frame (us): " + ", ".join(f"{k} {v:.1f}" for k, v in floor["us_per_frame"].items())
              + f"; two views {2 * floor['per_view_us']:.1f} -> DALI / decode-only <= {floor['ratio_bound']:.2f}")


if __name__ == "__main__":
    main()
