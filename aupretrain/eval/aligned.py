"""Aligned face crops of one evaluation sequence (a frame folder or a video), cached on disk.

Faces go through exactly what `aupretrain-pack` does (`pack.*` settings: MTCNN every `detect_every` frames,
tracking in between, 5-point similarity alignment to `pack.template` with temporal smoothing), at the
encoder's input size, so evaluation crops look like pretraining crops. Frames without a face give no crop
(the caller counts them). The crops of a sequence are cached as
`<cache>/<dataset>/<sequence>.<key>.npz`, where `<key>` hashes the alignment settings, the frame stride and
the source's file names, sizes and modification times: a second evaluation with the same settings reads
the file instead of detecting again, and any change of settings or source makes a new file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..pack import alignment
from ..pack.clips import PackSettings, align_center, center_faces, detector, track
from ..pack.video import VideoError, iter_timed_frames
from ..errors import UsageError

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when the same settings would give other crops (2: the tracker re-detects every frame
#                    while no face is held, so a face coming back is found on its first frame; 3: a blank frame
#                    between two detections gets no face)
ALIGN_KEYS = ("align", "detector", "detect_every", "landmarks_every", "min_face", "thresholds", "main_face",
              "link_iou", "min_face_prob", "smooth_sigma", "template", "size")


@dataclass
class Source:
    """One sequence to align: a video file, or a folder of frames `<number>.jpg` (`frames` lists them)."""
    name: str  # unique within the dataset, e.g. "F001_T1"; names the cache file
    path: Path  # the video file or the frame folder
    frames: list[tuple[int, Path]] | None = None  # (frame number, file) for a frame folder, sorted by number


@dataclass
class Crops:
    """The aligned face crops of one `Source` (`aligned_crops`): frame numbers [M] and uint8 RGB crops
    [M, S, S, 3] of the frames with a face, with frame counts and whether it came from the cache."""
    index: np.ndarray  # [M] int: frame numbers with a face (a folder's numbers; a video's 0-based decode index)
    crops: np.ndarray  # [M, S, S, 3] uint8 RGB
    seen: int  # frames read (after the stride)
    total: int  # frames in the source (before the stride)
    unreadable: int  # frames of a folder that could not be decoded (skipped)
    cached: bool  # read from the cache


def default_cache() -> Path:
    """`$AUPRETRAIN_CACHE/eval-faces`, else `~/.cache/aupretrain/eval-faces`."""
    base = os.environ.get("AUPRETRAIN_CACHE") or Path.home() / ".cache" / "aupretrain"
    return Path(base) / "eval-faces"


def cache_key(src: Source, s: PackSettings, frame_stride: int) -> str:
    """16 hex digits over the alignment settings, the stride, the cache version and the source's file
    names, sizes and mtimes (nanoseconds)."""
    content = s.content()
    settings = {k: content[k] for k in ALIGN_KEYS}
    files = [(p.name, st.st_size, st.st_mtime_ns) for p in
             ([src.path] if src.frames is None else [f for _, f in src.frames]) for st in [p.stat()]]
    blob = json.dumps({"v": CACHE_VERSION, "settings": settings, "stride": frame_stride, "files": files},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _frames(src: Source, frame_stride: int, counts: dict) -> Iterator[tuple[int, np.ndarray]]:
    if src.frames is not None:
        for number, path in src.frames[::frame_stride]:
            counts["seen"] += 1
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                log.warning("%s: cannot decode this frame; skipped", path)
                counts["unreadable"] += 1
                continue
            yield number, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return
    try:
        for i, _, rgb in iter_timed_frames(src.path):
            counts["total"] += 1
            if i % frame_stride == 0:
                counts["seen"] += 1
                yield i, rgb
    except VideoError as e:
        raise UsageError(f"{src.path}: unreadable video ({e})") from e


def aligned_crops(src: Source, s: PackSettings, cache: Path | None, dataset: str, frame_stride: int = 1) -> Crops:
    """Aligned S x S crops (S = `s.size`) of every `frame_stride`-th frame of `src` that shows a face.

    Uses `<cache>/<dataset>/<src.name>.<key>.npz` when present (no detection at all); otherwise detects,
    tracks and aligns with the packer's code and writes that file (atomically). `cache=None`: no caching.
    Raises UsageError naming the file for a video that cannot be decoded.
    """
    path = None
    if cache is not None:
        path = Path(cache) / dataset / f"{src.name}.{cache_key(src, s, frame_stride)}.npz"
        if path.is_file():
            try:
                with np.load(path) as z:
                    return Crops(z["index"], z["crops"], int(z["seen"]), int(z["total"]), int(z["unreadable"]), True)
            except (OSError, ValueError, KeyError) as e:  # a damaged cache file: align again
                log.warning("%s: unreadable cache file (%s); aligning again", path, e)
    counts = {"seen": 0, "unreadable": 0, "total": 0 if src.frames is None else len(src.frames)}
    frames = _frames(src, frame_stride, counts)
    if s.align == "center":
        aligned = align_center(center_faces(frames), s.size)
    else:
        aligned = alignment.align(track(frames, detector(s), s), np.asarray(s.template), s.size, s.smooth_sigma)
    index, crops = [], []
    for a in aligned:
        index.append(a.index)
        crops.append(a.crop)
    out = Crops(np.asarray(index, np.int64),
                np.stack(crops) if crops else np.zeros((0, s.size, s.size, 3), np.uint8),
                counts["seen"], counts["total"], counts["unreadable"], False)
    if counts["seen"] == 0:
        raise UsageError(f"{src.path}: no frames to read")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, index=out.index, crops=out.crops, seen=out.seen, total=out.total, unreadable=out.unreadable)
        tmp.replace(path)
    return out
