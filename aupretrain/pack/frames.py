"""The frames of one input, as runs of unbroken footage: a video file is one run; a frame folder is one run per
stretch of its file numbering without a gap, so clips never reach across frames deleted or never extracted."""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from .inputs import IMAGE_EXTS, VideoItem, natural_key
from .video import VideoError, iter_timed_frames

log = logging.getLogger(__name__)

NUMBERED = re.compile(r"(.*?)(\d+)$")  # a frame's name ends in its number: 00001.jpg, frame_12.png, img-3.jpg


def frame_runs(files: list[Path]) -> tuple[list[list[tuple[int, Path]]], list[Path]]:
    """A frame folder's images (in natural name order) as runs without a gap in the footage, and the images left out.
    Runs hold (index, file) pairs, the index being the image's position among the frames kept (what a face track's
    JSON frames and the clips' `frames` count). Where nine in ten names or more are one shared prefix and a distinct
    number (`ffmpeg`'s `%05d.jpg`, frame_12.png; at least 3), the others (a `cover.jpg`, a `thumbs.png`) are left
    out, and a step between consecutive numbers more than twice the folder's usual one (the most common step: 1
    when every frame was kept, 2 for every other frame; steps of 2 and 3 alternating are one run) ends a run —
    frames deleted or never extracted —, so no clip reaches across the gap. Otherwise: every image, one run."""
    parts = {f: NUMBERED.fullmatch(f.stem) for f in files}
    prefixes = Counter(m.group(1) for m in parts.values() if m)
    prefix, n = prefixes.most_common(1)[0] if prefixes else ("", 0)
    kept = [f for f in files if parts[f] and parts[f].group(1) == prefix]
    numbers = [int(parts[f].group(2)) for f in kept]
    if n < 3 or n < 0.9 * len(files) or len(set(numbers)) != n or numbers != sorted(numbers):
        return [list(enumerate(files))], []
    steps = [b - a for a, b in zip(numbers, numbers[1:])]
    usual = min(steps, key=lambda d: (-steps.count(d), d))  # the most common step; the smaller of a tie
    runs: list[list[tuple[int, Path]]] = [[]]
    for i, f in enumerate(kept):
        if i and steps[i - 1] > 2 * usual:
            runs.append([])
        runs[-1].append((i, f))
    return runs, [f for f in files if f not in set(kept)]


def source_runs(item: VideoItem, local: str, frames_fps: float, notes: list[str] | None = None,
                hold: bool = True) -> Iterator[Iterator[tuple[int, float, np.ndarray]]]:
    """The input's frames as runs of unbroken footage, each an iterator of (index, seconds, RGB): a video file is
    one run (`iter_timed_frames`); a frame folder one run per stretch of its numbering without a gap
    (`frame_runs`), its frames `frames_fps` apart (index: the image's position in natural name order; seconds:
    index / frames_fps). Take each run in turn before the next. A frame image that cannot be decoded (a damaged or
    cut-short file) is replaced by the frame before it in its run (a frame hold, as players show a damaged frame:
    clips keep their spacing in time; skipped when it is the run's first) and counted in one line of `notes`; with
    `hold=False` (extraction: a row must not show another frame's measurement) it is left out, its index unused. A
    video cut short is noted as `iter_timed_frames` does. Raises VideoError when nothing can be read."""
    if not item.frames_dir:
        yield iter_timed_frames(local, notes)
        return
    d = Path(local)
    if not d.is_dir():
        raise VideoError(f"{item.path}: frame folder does not exist")
    files = sorted((p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS), key=lambda p: (natural_key(p.name), p.name))
    if not files:
        raise VideoError(f"{item.path}: no frame images ({', '.join(IMAGE_EXTS)})")
    bad: list[str] = []

    def run(frames: list[tuple[int, Path]]) -> Iterator[tuple[int, float, np.ndarray]]:
        prev = None
        for i, f in frames:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:  # held: the frame before stands in, so the clips' spacing in time stays true
                bad.append(f.name)
                if prev is not None and hold:
                    yield i, i / frames_fps, prev
                continue
            prev = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            yield i, i / frames_fps, prev

    runs, strays = frame_runs(files)
    if strays:
        note = (f"{item.path}: {len(strays)} image(s) not named like its numbered frames left out "
                f"({', '.join(f.name for f in strays[:5])}{' …' if len(strays) > 5 else ''})")
        if notes is None:
            log.warning("%s", note)
        else:
            notes.append(note)
    for frames in runs:
        yield run(frames)
    if len(bad) == sum(len(r) for r in runs):
        raise VideoError(f"{item.path}: no frame image can be decoded ({', '.join(bad[:3])}"
                         f"{' …' if len(bad) > 3 else ''})")
    if bad:
        note = (f"{item.path}: {len(bad)} of {sum(len(r) for r in runs)} frame images cannot be decoded, each "
                f"{'replaced by the frame before it' if hold else 'left out'} "
                f"({', '.join(bad[:5])}{' …' if len(bad) > 5 else ''})")
        if notes is None:
            log.warning("%s", note)
        else:
            notes.append(note)
