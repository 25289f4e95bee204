"""videos -> clips -> shuffled WebDataset shards + DALI indexes + manifest.

Input: a folder tree `<identity>/<video>.(mp4|avi|mkv|webm|mov)`. Each video is decoded with PyAV,
optionally resampled to a target fps, face-aligned, cut into clips of T frames at a stride, JPEG-encoded,
shuffled across videos and written `samples_per_shard` at a time. Bad videos are skipped and recorded in
the manifest's `rejects` with the reason; the run fails only when nothing at all could be packed.

Alignment here is `center` (frames are already face crops, as the synthetic corpus is): a centre square
crop resized to S x S. Detection-based alignment of real footage is issue #3.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import shards
from .parallel import parallel_map
from .video import VideoError, iter_frames, probe_video

log = logging.getLogger(__name__)
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


@dataclass(frozen=True)
class PackSettings:
    clip_len: int = 8
    stride: int = 2
    clip_step: int | None = None
    size: int = 112
    fps: float | None = None
    samples_per_shard: int = 256
    jpeg_quality: int = 90
    workers: int = 0
    seed: int = 0
    align: str = "center"

    @property
    def step(self) -> int:
        return self.clip_step or self.clip_len * self.stride


@dataclass(frozen=True)
class VideoItem:
    path: str
    identity: str
    video: str  # dataset-relative id "<identity>/<stem>"


def discover(root: str | Path) -> list[VideoItem]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: input folder does not exist")
    items = []
    for ident in sorted(p for p in root.iterdir() if p.is_dir()):
        for v in sorted(ident.iterdir()):
            if v.is_file() and v.suffix.lower() in VIDEO_EXTS and not v.name.startswith("."):
                items.append(VideoItem(str(v), ident.name, f"{ident.name}/{v.stem}"))
    return items


def align_center(frame: np.ndarray, size: int) -> np.ndarray:
    h, w = frame.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = frame[y0:y0 + s, x0:x0 + s]
    if s != size:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)
    return crop


def resample_indices(n_src: int, src_fps: float, dst_fps: float | None) -> np.ndarray:
    """Source frame index for each output frame when resampling src_fps -> dst_fps (nearest frame)."""
    if not dst_fps or not src_fps or abs(src_fps - dst_fps) < 1e-3:
        return np.arange(n_src)
    n_dst = int(np.floor((n_src - 1) * dst_fps / src_fps)) + 1
    return np.minimum(np.round(np.arange(n_dst) * src_fps / dst_fps).astype(int), n_src - 1)


def clip_starts(n: int, settings: PackSettings) -> range:
    span = (settings.clip_len - 1) * settings.stride + 1
    return range(0, n - span + 1, settings.step)


def pack_video(item: VideoItem, settings: PackSettings) -> tuple[list[shards.Sample], str | None]:
    """All clips of one video, or ([], reason) when the video is unusable."""
    try:
        info = probe_video(item.path)
        frames = [align_center(f, settings.size) for f in iter_frames(item.path)]
    except VideoError as e:
        return [], str(e)
    if not frames:
        return [], f"{item.path}: no decodable frames"
    idx = resample_indices(len(frames), info.fps, settings.fps)
    fps = settings.fps or info.fps
    starts = clip_starts(len(idx), settings)
    if len(starts) == 0:
        return [], f"{item.path}: too short ({len(frames)} frames) for a clip of {settings.clip_len} at stride {settings.stride}"
    params = [cv2.IMWRITE_JPEG_QUALITY, settings.jpeg_quality]
    jpg_cache: dict[int, bytes] = {}

    def jpeg(i: int) -> bytes:
        if i not in jpg_cache:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR), params)
            if not ok:
                raise RuntimeError(f"{item.path}: JPEG encoding failed at frame {i}")
            jpg_cache[i] = buf.tobytes()
        return jpg_cache[i]

    out = []
    for s in starts:
        src = [int(idx[s + k * settings.stride]) for k in range(settings.clip_len)]
        meta = shards.ClipMeta(video=item.video, identity=item.identity, frames=src, fps=float(fps), size=settings.size)
        out.append(shards.Sample(shards.make_key(item.identity, Path(item.path).stem, f"{src[0]:06d}"),
                                 [jpeg(i) for i in src], meta))
    return out, None


def _pack_one(args):
    return pack_video(*args)


def pack(input_root: str, output_root: str, settings: PackSettings) -> shards.Manifest:
    items = discover(input_root)
    if not items:
        raise FileNotFoundError(f"{input_root}: no videos found (expected <identity>/<video>{{{','.join(VIDEO_EXTS)}}})")
    workers = settings.workers or min(os.cpu_count() or 1, len(items))
    samples: list[shards.Sample] = []
    rejects: list[dict] = []
    bar = tqdm(total=len(items), unit="video", desc="pack", disable=None)
    jobs = [(it, settings) for it in items]
    for item, (clips, reason) in zip(items, parallel_map(_pack_one, jobs, workers, chunksize=4)):
        if reason:
            log.warning("skipped %s", reason)
            rejects.append({"input": item.path, "reason": reason})
        samples.extend(clips)
        bar.update(1)
        bar.set_postfix(clips=len(samples), rejects=len(rejects))
    bar.close()
    if not samples:
        raise RuntimeError(f"{input_root}: nothing could be packed; {len(rejects)} inputs rejected, first: "
                           f"{rejects[0]['reason'] if rejects else 'n/a'}")
    random.Random(settings.seed).shuffle(samples)  # mix videos and identities across shards
    workdir = shards.local_workdir(output_root)
    infos = []
    n = settings.samples_per_shard
    for i in tqdm(range(0, len(samples), n), desc="shards", unit="shard", disable=None):
        infos.append(shards.write_shard(samples[i:i + n], output_root, i // n, workdir))
    manifest = shards.Manifest(
        samples=len(samples), frames=len(samples) * settings.clip_len, clip_len=settings.clip_len,
        stride=settings.stride, size=settings.size, fps=settings.fps,
        identities=sorted({s.meta.identity for s in samples}), videos=len({s.meta.video for s in samples}),
        shards=infos, rejects=rejects,
        settings={k: getattr(settings, k) for k in settings.__dataclass_fields__} | {"input": str(input_root)},
    )
    shards.write_manifest(output_root, manifest)
    return manifest
