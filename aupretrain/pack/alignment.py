"""Aligning the tracked main face (`faces.track`'s FaceFrames): landmark tracks smoothed over time within each
segment, each frame warped by the similarity that maps its landmarks onto the template, and each crop's sharpness
measured."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from .faces import FaceFrame


@dataclass
class Aligned:
    """One aligned frame (`align`): source frame index, S x S uint8 RGB crop (None when no clip uses the frame),
    face box side (source pixels), sharpness (`sharpness` of the crop) and segment."""
    index: int
    crop: np.ndarray | None  # [S, S, 3] uint8; None for frames no clip uses
    face_px: float
    sharpness: float  # variance of the Laplacian of the grey crop
    segment: int


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping src points onto dst: params (a, b, tx, ty)
    of [[a, -b, tx], [b, a, ty]]."""
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    var = (s ** 2).sum()
    a = (s * d).sum() / var
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / var
    return np.array([a, b, md[0] - (a * ms[0] - b * ms[1]), md[1] - (b * ms[0] + a * ms[1])])


def warp(img: np.ndarray, p: np.ndarray, size: int) -> np.ndarray:
    """The S x S crop of img under similarity params p; strong downscaling goes through INTER_AREA first."""
    a, b, tx, ty = p
    scale = math.hypot(a, b)
    m = np.array([[a, -b, tx], [b, a, ty]])
    if scale < 0.5:  # bilinear warping would alias: shrink the source region with area averaging first
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inv.T
        x0, y0 = np.floor(corners.min(0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
        h, w = img.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            f = scale / 0.8
            roi = cv2.resize(img[y0:y1, x0:x1], None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            fx, fy = roi.shape[1] / (x1 - x0), roi.shape[0] / (y1 - y0)
            m = np.array([[a / fx, -b / fy, a * x0 - b * y0 + tx], [b / fx, a / fy, b * x0 + a * y0 + ty]])
            img = roi
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian (OpenCV, float64) of the grey image of an RGB uint8 crop [H, W, 3]: higher =
    sharper (the focus measure of Pech-Pacheco et al., ICPR 2000)."""
    return float(cv2.Laplacian(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def local_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, degree: int = 2) -> np.ndarray:
    """Value at x=0 of a weighted least-squares polynomial through (x, y): a smoother without lag at the
    ends of a segment (one-sided window) and with little bias on curved motion."""
    if len(x) <= degree:
        return (w[:, None] * y).sum(0) / w.sum()
    a = np.stack([x.astype(np.float64) ** k for k in range(degree + 1)], 1) * np.sqrt(w)[:, None]
    return np.linalg.lstsq(a, y * np.sqrt(w)[:, None], rcond=None)[0][0]


def align(faces: Iterable[FaceFrame], template: np.ndarray, size: int, sigma: float,
          keep: Callable[[int], bool] | None = None) -> Iterator[Aligned]:
    """Aligned crops of the frames that have a face. Within each segment the landmark tracks are smoothed
    over time by a local quadratic fit with Gaussian weights of `sigma` frames (0: off), then each frame
    is warped by the similarity that maps its smoothed landmarks onto the template. Frames whose position
    in their segment fails `keep` are passed on without a crop (no clip will use them)."""
    dst = np.asarray(template, np.float64) * size
    r = int(math.ceil(3 * sigma)) if sigma > 0 else 0
    weights = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2) if sigma > 0 else np.ones(1)
    window: deque = deque()  # (position, FaceFrame) of the current segment, positions >= emitted - r
    emitted, current, last_pos = 0, None, -1

    def out(pos: int) -> Aligned:
        if keep is not None and not keep(pos):
            f = next(f for q, f in window if q == pos)
            return Aligned(f.index, None, f.face_px, 0.0, f.segment)
        near = [(q, f) for q, f in window if abs(q - pos) <= r]
        x = np.array([q - pos for q, _ in near])
        lm = local_fit(x, np.array([f.landmarks.reshape(-1) for _, f in near]), weights[x + r]).reshape(-1, 2)
        f = next(f for q, f in near if q == pos)
        crop = warp(f.rgb, similarity(lm, dst), size)
        return Aligned(f.index, crop, f.face_px, sharpness(crop), f.segment)

    def drain(upto: int) -> Iterator[Aligned]:
        nonlocal emitted
        while emitted <= upto:
            yield out(emitted)
            emitted += 1
            while window and window[0][0] < emitted - r:
                window.popleft()

    for f in faces:
        if f.segment != current:
            yield from drain(last_pos)
            window.clear()
            emitted, current, last_pos = 0, f.segment, -1
        if f.landmarks is None:
            continue
        last_pos += 1
        window.append((last_pos, f))
        yield from drain(last_pos - r)
    yield from drain(last_pos)
