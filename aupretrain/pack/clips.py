"""One input video -> aligned face clips in a spill file (the work of one pack worker).

decode (PyAV, rotation applied; or a frame folder) -> resample by timestamp to `fps` (default: the video's own
average rate, so a variable-frame-rate video's clips are evenly spaced in time) -> faces: detect and
track the main face, align with a smoothed similarity (or `align=center`: centre crop, for inputs that are
already face crops) -> cut each face segment into clips of T frames at `stride`, one clip every `step`
frames -> drop clips whose face is too small or too blurry -> JPEG -> spill file.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
import torch

from . import alignment, faces

from ..data import shards, storage
from .frames import source_runs
from .inputs import VideoItem, local_copy, read_track
from .mtcnn import DetectorUnavailable
from .spill import SpillWriter
from .video import VideoError, probe_video

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackSettings:
    """Mirror of configs/pack/default.yaml (the CLI composes that file; these defaults are for library use)."""
    clip_len: int = 8
    stride: int = 2
    clip_step: int | None = None
    size: int = 112
    fps: float | None = None
    frames_fps: float = 25.0
    samples_per_shard: int = 256
    shuffle_buffer: int = 8192
    jpeg_quality: int = 90
    workers: int = 0
    seed: int = 0
    align: str = "detect"
    detector: str = "mtcnn"
    detect_every: int = 25
    landmarks_every: int = 3
    min_face: float = 0.2
    thresholds: tuple = (0.6, 0.7, 0.7)
    main_face: str = "largest"
    link_iou: float = 0.2
    min_face_prob: float = 0.8
    smooth_sigma: float = 3.0
    template: tuple = ((0.375, 0.42), (0.625, 0.42), (0.5, 0.56), (0.395, 0.71), (0.605, 0.71))
    min_face_px: float = 40.0
    min_sharpness: float = 20.0
    work_dir: str | None = None

    @property
    def step(self) -> int:
        """Frames (after resampling) from one clip's start to the next: `clip_step`, else clip_len x stride."""
        return self.clip_step or self.clip_len * self.stride

    def content(self) -> dict:
        """The settings that decide the packed bytes (not workers or where temporary files go)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in ("workers", "work_dir")}

    def __post_init__(self):
        for f in fields(self):  # 40 and 40.0 from a config must give the same manifest
            v = getattr(self, f.name)
            if f.type in ("float", "float | None") and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
        if self.align not in ("detect", "center"):
            raise ValueError(f"pack.align must be detect or center, not {self.align!r}")
        if self.clip_len < 1 or self.stride < 1 or self.step < 1 or self.samples_per_shard < 1:
            raise ValueError("pack: clip_len, stride, clip_step and samples_per_shard must be >= 1")


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (tuple, list)) else v


@dataclass
class VideoResult:
    """What packing one video gave (`process_video`): clips written, frame counts (decoded, resampled, with an
    aligned face), clips dropped as too small or too blurry, the reason it gave nothing (a reject) and a warning."""
    video: str
    clips: int = 0
    frames: int = 0  # source frames decoded
    face_frames: int = 0  # frames (after resampling) with an aligned face
    sampled: int = 0  # frames after resampling
    dropped: dict = field(default_factory=lambda: {"small": 0, "blurry": 0})
    reason: str | None = None  # why it produced nothing
    warning: str | None = None
    notes: list = field(default_factory=list)  # what reading the input passed over (frames cut short or damaged)


def resample(frames: Iterable[tuple[int, float, np.ndarray]], fps: float | None) -> Iterator[tuple[int, np.ndarray]]:
    """(source index, RGB) at `fps` by timestamp (nearest frame; frames repeat or drop; ticks j / fps from the first
    frame's time on); all frames if fps is None."""
    if not fps:
        for i, _, rgb in frames:
            yield i, rgb
        return
    j, prev = None, None
    for i, t, rgb in frames:
        if j is None:  # ticks from the first frame's time (a later run of a frame folder starts past 0 s)
            j = math.ceil(t * fps - 1e-9)
        while j / fps <= t:
            tj = j / fps
            yield (prev[0], prev[2]) if prev is not None and tj - prev[1] < t - tj else (i, rgb)
            j += 1
        prev = (i, t, rgb)


def center_faces(frames: Iterable[tuple[int, np.ndarray]]) -> Iterator[faces.FaceFrame]:
    """`FaceFrame`s for inputs that are already face crops: every (index, RGB) frame is a face of side
    min(H, W) pixels in segment 0, with no landmarks."""
    for i, rgb in frames:
        yield faces.FaceFrame(i, rgb, None, float(min(rgb.shape[:2])), 0)


def align_center(frames: Iterable[faces.FaceFrame], size: int) -> Iterator[alignment.Aligned]:
    """Centre square crop resized to size (inputs that are already face crops, e.g. the synthetic corpus,
    whose blurred scenes are intended: no size or sharpness filter applies in this mode)."""
    for f in frames:
        h, w = f.rgb.shape[:2]
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        crop = f.rgb[y0:y0 + s, x0:x0 + s]
        if s != size:
            crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if s > size else cv2.INTER_LINEAR)
        yield alignment.Aligned(f.index, np.ascontiguousarray(crop), f.face_px, alignment.sharpness(crop), 0)


def frame_rate(item: VideoItem, local: str, s: PackSettings, notes: list[str]) -> float | None:
    """The rate (frames/s) an input's frames are resampled to by timestamp: `s.fps` when given, else a frame
    folder's `frames_fps`, else the video's own average rate (the container's: a variable-frame-rate video is cut at
    its mean rate, each clip's frames evenly spaced in time; a constant-rate video keeps every frame). None — every
    frame, cut by index — where the container gives no usable rate (0, or outside 1-240 frames/s), said in `notes`.
    Raises VideoError (from `probe_video`) for a file that cannot be opened."""
    if s.fps:
        return float(s.fps)
    if item.frames_dir:
        return float(s.frames_fps)
    rate = probe_video(local).fps
    if 1.0 <= rate <= 240.0:
        return rate
    notes.append(f"{item.path}: the container gives no usable frame rate ({rate:g} frames/s); clips are cut by frame "
                 "index (give --fps to cut them by time)")
    return None


def aligned_frames(item: VideoItem, local: str, s: PackSettings, res: VideoResult, rate: float | None = None
                   ) -> Iterator[alignment.Aligned]:
    """The aligned faces of one input (`local`: its local copy) in frame order: decoded (counted in `res.frames`),
    resampled to `rate` frames/s by timestamp (`frame_rate`; None: every frame; counted in `res.sampled`), then
    centre-cropped (`align=center`) or detected, tracked (along the item's own face track when it has one) and
    aligned — each run of unbroken footage (`source_runs`: a frame folder with
    a gap in its numbering has two) on its own, its face segments numbered after the run before's, so no clip
    reaches across a gap. Raises VideoError for an undecodable input or a bad face track, and what `detector`
    raises."""
    det = None if s.align == "center" else detector(s)
    given, offset = None, 0
    for run in source_runs(item, local, s.frames_fps, res.notes):
        frames = _count_sampled(resample(_count(run, res), rate), res)
        if s.align == "center":
            aligned = align_center(center_faces(frames), s.size)
        else:
            if item.boxes is not None and given is None:
                first = next(frames, None)
                if first is None:
                    continue
                h, w = first[1].shape[:2]
                try:
                    given = read_track(item.boxes, w, h)
                except (OSError, ValueError) as e:
                    raise VideoError(f"{item.path}: bad face track ({e})") from e
                frames = _chain(first, frames)
            aligned = alignment.align(track(frames, det, s, given), np.asarray(s.template), s.size,
                                      s.smooth_sigma, keep=lambda p: in_clip(p, s))
        last = -1
        for a in aligned:
            if a.segment >= 0:
                last = max(last, a.segment)
                a.segment += offset
            yield a
        offset += last + 1


def detector(s: PackSettings) -> faces.Detector:
    """The face detector of the pack settings (`detector`, `min_face`, `thresholds`). Raises DetectorUnavailable
    (weights or cascade missing) or ValueError (unknown detector)."""
    return faces.Detector(s.detector, s.min_face, s.thresholds)


def track(frames, det: faces.Detector, s: PackSettings, given=None) -> Iterator[faces.FaceFrame]:
    """faces.track with the pack settings."""
    return faces.track(frames, det, s.detect_every, s.landmarks_every, s.main_face, s.link_iou, s.min_face_prob, given)


def in_clip(pos: int, s: PackSettings) -> bool:
    """Whether frame `pos` of a face segment belongs to some clip (the others need no crop)."""
    span = (s.clip_len - 1) * s.stride + 1
    first = max(0, -(-(pos - span + 1) // s.step))
    return any((pos - k * s.step) % s.stride == 0 for k in range(first, pos // s.step + 1))


def _chain(first, rest):
    yield first
    yield from rest


def _count(frames, res: VideoResult):
    for f in frames:
        res.frames += 1
        yield f


def _count_sampled(frames, res: VideoResult):
    for f in frames:
        res.sampled += 1
        yield f


def cut(aligned: Iterable[alignment.Aligned], s: PackSettings) -> Iterator[list[tuple[tuple[int, int], alignment.Aligned]]]:
    """Clips of one face segment: T frames `stride` apart, a new clip every `step` frames."""
    span = (s.clip_len - 1) * s.stride + 1
    segment, pos, start, buf = None, -1, 0, {}
    for a in aligned:
        if a.segment != segment:
            segment, pos, start, buf = a.segment, -1, 0, {}
        pos += 1
        buf[pos] = a
        if pos == start + span - 1:
            yield [((segment, start + k * s.stride), buf[start + k * s.stride]) for k in range(s.clip_len)]
            start += s.step
            for q in [q for q in buf if q < start]:
                del buf[q]


def process_video(item: VideoItem, s: PackSettings, spill_path: str) -> VideoResult:
    """Write the clips of one video to spill_path; problems become VideoResult.reason, never exceptions."""
    res = VideoResult(item.video)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core per worker; results do not depend on the thread count
    writer = SpillWriter(spill_path)
    local = item.path
    try:
        with local_copy(item) as local:
            if not item.frames_dir and Path(local).is_file() and Path(local).stat().st_size == 0:
                raise VideoError(f"{item.path}: empty file (0 bytes)")
            rate = frame_rate(item, local, s, res.notes)
            fps = rate or 0.0  # the clips' recorded rate: 0 where the container gives none usable
            params = [cv2.IMWRITE_JPEG_QUALITY, s.jpeg_quality]
            written: dict[tuple[int, int], tuple[int, int]] = {}
            keys: set[str] = set()
            video_tag = hashlib.sha1(item.video.encode()).hexdigest()[:8]
            try:
                for clip in cut(_faces_counted(aligned_frames(item, local, s, res, rate), res), s):
                    frames = [a for _, a in clip]
                    if s.align == "detect" and min(a.face_px for a in frames) < s.min_face_px:
                        res.dropped["small"] += 1
                        continue
                    if s.align == "detect" and float(np.median([a.sharpness for a in frames])) < s.min_sharpness:
                        res.dropped["blurry"] += 1
                        continue
                    refs = []
                    for pos, a in clip:
                        if pos not in written:
                            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(a.crop, cv2.COLOR_RGB2BGR), params)
                            if not ok:
                                raise VideoError(f"{item.path}: JPEG encoding failed at frame {a.index}")
                            written[pos] = writer.frame(buf.tobytes())
                        refs.append(written[pos])
                    src = [a.index for a in frames]
                    # the video id's hash keeps keys unique where names differ only in characters make_key maps
                    key = shards.make_key(item.identity, item.name, f"{src[0]:06d}", video_tag)
                    while key in keys:
                        key += "x"
                    keys.add(key)
                    meta = shards.ClipMeta(video=item.video, identity=item.identity, frames=src, fps=float(fps), size=s.size)
                    writer.clip(key, meta, refs)
                    res.clips += 1
                    if len(written) > 4 * s.clip_len * s.stride:  # keep only what later clips may share
                        for k in sorted(written)[:-2 * s.clip_len * s.stride]:
                            del written[k]
            except VideoError as e:
                if res.clips == 0:
                    raise
                res.warning = f"{e} (kept the {res.clips} clips before the error)"
        if res.clips == 0:
            res.reason = _why_nothing(item, s, res) + (f" ({'; '.join(res.notes)})" if res.notes else "")
        elif res.notes:  # frames passed over while reading: said, with what was kept
            res.warning = "; ".join([*res.notes, *([res.warning] if res.warning else [])]) + \
                (f" (kept {res.clips} clips)" if not res.warning else "")
    except VideoError as e:
        res.reason = str(e)
    except (MemoryError, storage.EnvironmentFault, DetectorUnavailable):
        raise  # not this input's fault: stop the run unrecorded, a rerun resumes
    except OSError as e:
        if e.errno in storage.ENVIRONMENT_ERRNOS:  # disk full, too many open files, read-only work folder
            raise storage.EnvironmentFault(f"{item.path}: {type(e).__name__}: {e}") from e
        log.exception("unexpected error on %s", item.path)
        res.reason = f"{item.path}: unexpected error ({type(e).__name__}: {e})"
    except Exception as e:  # noqa: BLE001 - a bad input must never stop the run: record it, name the file
        log.exception("unexpected error on %s", item.path)
        res.reason = f"{item.path}: unexpected error ({type(e).__name__}: {e})"
    finally:
        torch.set_num_threads(threads)
    if local != item.path:  # name the input (s3://...), not the temporary download
        res.reason = res.reason and res.reason.replace(local, item.path)
        res.warning = res.warning and res.warning.replace(local, item.path)
    if res.reason:
        writer.abort()
        res.clips = 0
    else:
        writer.close()
    return res


def _faces_counted(aligned, res: VideoResult):
    for a in aligned:
        res.face_frames += 1
        yield a


def _why_nothing(item: VideoItem, s: PackSettings, res: VideoResult) -> str:
    if res.frames == 0:
        return f"{item.path}: no decodable frames"
    if res.face_frames == 0:
        return f"{item.path}: no face found in {res.sampled} frames"
    span = (s.clip_len - 1) * s.stride + 1
    if sum(res.dropped.values()) == 0:
        return (f"{item.path}: too short: {res.face_frames} of {res.sampled} frames have the face, in runs shorter than "
                f"a clip of {s.clip_len} frames at stride {s.stride} ({span} frames)")
    return (f"{item.path}: every clip dropped ({res.dropped['small']} face smaller than {s.min_face_px} px, "
            f"{res.dropped['blurry']} blurrier than sharpness {s.min_sharpness})")
