"""Input pipeline throughput: the DALI reader, the torch baseline loader, and DALI decode-only (the ceiling).

    python bench/data.py --json bench/results/data.json                      # packs a synthetic set first
    python bench/data.py --shards shards/synthetic --batch 32 --size 112 --threads 2
    python bench/data.py --only dali torch_baseline --to-model    # also: up to the model's input

Same shards, same batch (clips), same model input size and the same augmentation config (`configs/data/`) for
the two loaders; the decode-only pipeline reads and decodes the same JPEGs and does nothing else. Reported:
source frames/s (clips x T frames decoded per second; each loader makes two augmented views of each) after a
warm-up, on this machine's cores; with --to-model also up to the model's input (the step's join of the two views
and the channels-last layout the trunk reads).
"""
from __future__ import annotations

import argparse
import json
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
    report(f"Input pipelines, {a.batch} clips x {clip_len} frames, {a.size} px, two views, {a.threads} threads",
           rows, a.json, {"frames_per_s": fps, "ratios": ratios, "args": vars(a)})
    print({k: round(v, 3) for k, v in ratios.items()})


if __name__ == "__main__":
    main()
