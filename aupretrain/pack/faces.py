"""Faces in a frame stream: detect (every k frames while a face is held, every frame while none is) and follow the
main face (`track`); aligning it is `alignment.py`.

Stages are generators so a video streams through with a bounded lag (k frames for tracking, 3 sigma for
smoothing), never held whole in memory:

    frames (index, RGB) ─track─▶ FaceFrame (landmarks, segment) ─alignment.align─▶ Aligned (S x S crop, size,
    sharpness)

A *segment* is a run of consecutive frames showing the same face; clips never cross segments.
Detectors: `mtcnn` (P/R/O-Net, 5 landmarks; see mtcnn.py) and `haar` (OpenCV's frontal-face cascade;
boxes only, landmarks placed at mean positions inside the box — a fallback without a landmark model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator

import cv2
import numpy as np

from .exposure import badly_exposed, exposure_corrected
from .mtcnn import DetectorUnavailable

# Mean landmark positions inside an MTCNN-style square face box (for box-only detectors and tracks).
BOX_LANDMARKS = np.array([[0.31, 0.40], [0.69, 0.40], [0.50, 0.62], [0.35, 0.80], [0.65, 0.80]])


@dataclass
class FaceFrame:
    """One frame of the tracked stream (`track`): source frame index, RGB uint8 frame [H, W, 3], the main face's
    5 landmarks [5, 2] (source pixels; None: no face), its box side (pixels) and its segment (-1: no face)."""
    index: int  # source frame index
    rgb: np.ndarray
    landmarks: np.ndarray | None  # [5, 2] in source pixels; None: no face in this frame
    face_px: float  # face box side in source pixels
    segment: int  # -1 when there is no face


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2); 0 when the union is empty."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class Detector:
    """detect(img) -> boxes [N, 4], scores [N], landmarks [N, 5, 2]; refine(img, boxes) -> same for given boxes.

    min_face: the smallest face searched for, as a fraction of the frame's short side.
    """

    def __init__(self, kind: str, min_face: float, thresholds: Iterable[float]):
        if kind not in ("mtcnn", "haar"):
            raise ValueError(f"unknown detector {kind!r} (mtcnn or haar)")
        self.kind, self.min_face, self.thresholds = kind, min_face, tuple(thresholds)
        if kind == "mtcnn":
            from . import mtcnn

            self._mtcnn = mtcnn
            mtcnn.load_nets()  # fail early (DetectorUnavailable, one clear error) when the weights are missing
        else:
            path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
            self._haar = cv2.CascadeClassifier(path)
            if self._haar.empty():
                raise DetectorUnavailable(f"{path}: OpenCV Haar cascade missing (opencv-python-headless<5 ships it)")

    def detect(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in an RGB uint8 image [H, W, 3] at least max(12, `min_face` x short side) pixels wide: boxes [N, 4]
        (x1, y1, x2, y2, pixels), scores [N], landmarks [N, 5, 2]. The Haar detector scores every box 1 and places the
        landmarks at their mean positions in the box (`box_landmarks`). A badly exposed frame in which no face is
        found is searched again after `exposure_corrected` (the boxes and landmarks are the same pixels')."""
        found = self._detect(img)
        if not len(found[0]) and badly_exposed(img):
            found = self._detect(exposure_corrected(img))
        return found

    def _detect(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        min_px = max(12.0, self.min_face * min(img.shape[:2]))
        if self.kind == "mtcnn":
            return self._mtcnn.detect(img, min_face=min_px, thresholds=self.thresholds)
        f = min(1.0, 48.0 / min_px)  # the cascade's 24 px window: search at twice that face size
        small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else img
        grey = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        found = self._haar.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(int(min_px * f),) * 2)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in found], np.float64).reshape(-1, 4) / f
        return boxes, np.ones(len(boxes)), box_landmarks(boxes)

    def refine(self, img, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Landmarks and face probability for given boxes of one image (or of a list of images, one per box). A box
        of a badly exposed image that the landmark net doubts (probability below its threshold) is refined again on
        `exposure_corrected` pixels, and the likelier answer kept."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if self.kind != "mtcnn" or not len(boxes):
            return boxes, np.ones(len(boxes)), box_landmarks(boxes)
        b, p, lm = self._mtcnn.refine(img, boxes)
        imgs = img if isinstance(img, (list, tuple)) else [img] * len(boxes)
        doubt = [k for k in range(len(boxes)) if p[k] < self.thresholds[-1] and badly_exposed(imgs[k])]
        if doubt:
            fixed = {id(imgs[k]): None for k in doubt}
            for k in doubt:
                if fixed[id(imgs[k])] is None:
                    fixed[id(imgs[k])] = exposure_corrected(imgs[k])
            b2, p2, lm2 = self._mtcnn.refine([fixed[id(imgs[k])] for k in doubt], boxes[doubt])
            for j, k in enumerate(doubt):
                if p2[j] > p[k]:
                    b[k], p[k], lm[k] = b2[j], p2[j], lm2[j]
        return b, p, lm


def box_landmarks(boxes: np.ndarray) -> np.ndarray:
    """Landmarks [N, 5, 2] at `BOX_LANDMARKS`' mean positions in the square of side max(width, height) centred on each
    box of `boxes` [N, 4] (x1, y1, x2, y2), in the boxes' pixels."""
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None, None]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    origin = np.stack([cx, cy], 1)[:, None, :] - side / 2
    return origin + BOX_LANDMARKS[None] * side


def _near(a: np.ndarray, b: np.ndarray) -> bool:
    """Same face moving fast: centres less than half a face apart, sizes within a factor 1.5."""
    sa, sb = a[2] - a[0], b[2] - b[0]
    dist = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    return dist < 0.5 * (sa + sb) / 2 and max(sa, sb) < 1.5 * min(sa, sb)


def _close(a: np.ndarray, b: np.ndarray, tol: float = 0.05) -> bool:
    """Boxes within tol of a face size in centre and size (the landmark net sees the face where it expects it)."""
    sa, sb = max(a[2] - a[0], 1e-6), max(b[2] - b[0], 1e-6)
    dist = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    return dist < tol * sb and abs(np.log(sa / sb)) < tol


def box_contrast(rgb: np.ndarray, box: np.ndarray) -> float:
    """Standard deviation of the grey levels (0..255) inside `box` (x1, y1, x2, y2; clipped to the frame [H, W, 3]),
    on a 32 x 32 area-averaged sample; 0 for a box outside the frame."""
    h, w = rgb.shape[:2]
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(int(math.ceil(box[2])), w), min(int(math.ceil(box[3])), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    return float(cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).std())


def _blank_out(out: list, guessed: set[int], floor: float = 2.0, share: float = 0.2) -> list:
    """`out` (idx, rgb, box, landmarks) with no face on the frames of `guessed` (boxes interpolated, no net looked
    at them) whose box is blank — its contrast (`box_contrast`) below `share` of the median over the frames of `out`
    with a box, and below `floor` grey levels at least: a black or flat frame between two detections (a fade, a
    dropped frame, a flash) is not given the face around it. A dark face keeps its contrast relative to its
    neighbours, so it is kept."""
    with_box = [j for j, o in enumerate(out) if o[2] is not None]
    if not guessed or not with_box:
        return out
    contrast = {j: box_contrast(out[j][1], out[j][2]) for j in with_box}
    limit = max(floor, share * float(np.median(list(contrast.values()))))
    return [(o[0], o[1], None, None) if j in contrast and j in guessed and contrast[j] < limit else o
            for j, o in enumerate(out)]


def choose_main(boxes: np.ndarray, img_shape, previous: np.ndarray | None, policy: str, link_iou: float
                ) -> tuple[int | None, bool]:
    """Index of the main face and whether it continues the previous one (IoU >= link_iou, or close by)."""
    if len(boxes) == 0:
        return None, False
    if previous is not None:
        overlaps = [iou(b, previous) for b in boxes]
        best = int(np.argmax(overlaps))
        if overlaps[best] >= link_iou or _near(boxes[best], previous):
            return best, True
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if policy == "largest":
        return int(np.argmax(area)), False
    if policy == "central":  # the most central of the faces at least half as large as the largest
        h, w = img_shape[:2]
        centre = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2 - w / 2, (boxes[:, 1] + boxes[:, 3]) / 2 - h / 2], 1)
        dist = np.hypot(centre[:, 0], centre[:, 1]) + np.where(area >= area.max() / 2, 0, 1e9)
        return int(np.argmin(dist)), False
    raise ValueError(f"unknown main_face policy {policy!r} (largest or central)")


def track(frames: Iterable[tuple[int, np.ndarray]], det: Detector, every: int, landmarks_every: int,
          main_face: str, link_iou: float, min_prob: float, given: dict[int, np.ndarray] | None = None
          ) -> Iterator[FaceFrame]:
    """Follow the main face (settings: configs/pack/default.yaml). While a face is held, full detection runs on
    every `every`-th frame and on the last; while none is (no face at the last detection, or after the face left),
    on every frame, so a face is found on the first frame it is (back) in view. Frames in between get boxes
    interpolated between two linked detections; every `landmarks_every`-th of them is refined by the landmark net
    (face probability below min_prob: lost) and the rest interpolate the landmarks of their neighbours. Where that
    straight path fails (fast or curved motion) detections in the middle bisect the interval; where the face leaves
    in between, bisection finds where, and the frames after it are searched one by one.
    With `given` boxes {source frame: box} (a face track) detection is skipped; only the landmark net runs."""
    segment, run_open = -1, False

    def emit(idx, rgb, box, lm, prob=1.0):
        nonlocal segment, run_open
        if box is None or lm is None or prob < min_prob:
            run_open = False
            return FaceFrame(idx, rgb, None, 0.0, -1)
        if not run_open:
            segment, run_open = segment + 1, True
        return FaceFrame(idx, rgb, lm, float(max(box[2] - box[0], box[3] - box[1])), segment)

    def between(batch, boxes, left=None, right=None):
        """(idx, rgb, box, landmarks) of frames with a guessed box each (None: no face), and whether every
        landmark-net anchor confirmed its guess; left/right: (box, lm) of the detections around the batch."""
        n, m = len(batch), max(1, landmarks_every)
        anchors = {j for j in range(n) if (j + 1) % m == 0 or (j == 0 and left is None) or (j == n - 1 and right is None)}
        anchors = sorted(j for j in anchors if boxes[j] is not None)
        known = {-1: left, n: right}
        if anchors:  # landmark net on the anchor frames; again on its own box where the guessed box was off
            imgs = [batch[j][1] for j in anchors]
            guess = np.stack([boxes[j] for j in anchors])
            b, p, lm = det.refine(imgs, guess)
            off = [k for k in range(len(anchors)) if not _close(b[k], guess[k])]
            if off:
                b2, p2, lm2 = det.refine([imgs[k] for k in off], b[off])
                b[off], p[off], lm[off] = b2, p2, lm2
            known.update({j: (b[k], lm[k]) if p[k] >= min_prob else None for k, j in enumerate(anchors)})
        ok = all(known[j] is not None for j in anchors)
        keys = sorted(known)
        out = []
        for j, (idx, rgb) in enumerate(batch):
            if boxes[j] is None:
                out.append((idx, rgb, None, None))
            elif j in known:
                out.append((idx, rgb, *(known[j] or (None, None))))
            else:
                u, v = max(k for k in keys if k < j), min(k for k in keys if k > j)
                if known[u] is None or known[v] is None:
                    out.append((idx, rgb, None, None))
                else:
                    w = (j - u) / (v - u)
                    out.append((idx, rgb, *((1 - w) * a + w * c for a, c in zip(known[u], known[v]))))
        return _blank_out(out, {j for j in range(n) if j not in known}), ok

    if given is not None:
        stream = iter(frames)
        while batch := list(islice(stream, every)):
            yield from (emit(*f) for f in between(batch, [given.get(i) for i, _ in batch])[0])
        return

    pending: list[tuple[int, np.ndarray]] = []
    prev = None  # (box, landmarks) of the main face at the previous detection

    def linked(a, b) -> bool:
        return iou(a[0], b[0]) >= link_iou or _near(a[0], b[0])

    def main_face_near(rgb, anchor):
        """(box, landmarks) of the main face of a frame, chosen next to `anchor`'s box (if any); None without a face."""
        boxes, _, lms = det.detect(rgb)
        k, _ = choose_main(boxes, rgb.shape, None if anchor is None else anchor[0], main_face, link_iou)
        return None if k is None else (boxes[k], lms[k])

    def lost(frames):
        return (emit(i, f, None, None) for i, f in frames)

    def bridge(batch, left, right, depth):
        """Frames between detections left and right. When the face moved too far to link them, detect again
        in the middle and bridge each half (up to `depth` levels) instead of giving up. Returns whether the
        chain of links reaches `right`."""
        nonlocal run_open
        if linked(left, right):
            n = len(batch) + 1
            out, ok = between(batch, [left[0] + (right[0] - left[0]) * (j + 1) / n for j in range(n - 1)], left, right)
            if ok or depth == 0 or len(batch) < 2:  # every anchor found the face where the straight path put it
                yield from (emit(*f) for f in out)
                return ok
        if depth == 0 or not batch:
            yield from lost(batch)
            return False
        mid = len(batch) // 2
        idx, rgb = batch[mid]
        m = main_face_near(rgb, left)
        if m is None:  # there at both ends, gone in the middle (a hand, a turn, a damaged frame): find where it
            yield from edge(batch[:mid], left, None, depth - 1)  # leaves and where it comes back, not the whole
            yield emit(idx, rgb, None, None)  # interval lost
            return (yield from search(batch[mid + 1:], right, depth - 1))
        if not (yield from bridge(batch[:mid], left, m, depth - 1)):
            run_open = False
        yield emit(idx, rgb, *m)
        return (yield from bridge(batch[mid + 1:], m, right, depth - 1))

    def edge(batch, left, right, depth):
        """Frames between a detection and a detection without the face (one of left/right is None): find where
        the face leaves by bisection, then search the frames after it one by one (`search`; so too where it
        starts: left None) instead of dropping the whole interval. Returns whether the chain of links reaches
        `right`."""
        nonlocal run_open
        if left is None:
            return (yield from search(batch, right, depth))
        if not batch:  # (no depth limit: halving finds the last frame with the face in log2(frames) detections)
            return False
        mid, depth = len(batch) // 2, max(depth - 1, 0)
        idx, rgb = batch[mid]
        m = main_face_near(rgb, left)
        if m is None or not linked(left, m):  # the face is gone by mid; the frames after it: no face tracked
            yield from edge(batch[:mid], left, None, depth)
            yield emit(idx, rgb, None, None)
            return (yield from search(batch[mid + 1:], None, depth))
        if not (yield from bridge(batch[:mid], left, m, depth)):  # still there at mid
            run_open = False
        yield emit(idx, rgb, *m)
        return (yield from edge(batch[mid + 1:], m, None, depth))

    def search(batch, right, depth):
        """Frames after one without the face, up to the detection `right` (None: no face): no face is tracked, so
        each frame is searched until one shows a face, tracked on from there. Whether the links reach `right`."""
        for k, (idx, rgb) in enumerate(batch):
            m = main_face_near(rgb, right)
            if m is not None:
                yield emit(idx, rgb, *m)
                if right is None:
                    return (yield from edge(batch[k + 1:], m, None, depth))
                return (yield from bridge(batch[k + 1:], m, right, depth))
            yield emit(idx, rgb, None, None)
        return False

    def keyframe(idx, rgb):
        nonlocal prev, pending, run_open
        boxes, _, lms = det.detect(rgb)
        k, _ = choose_main(boxes, rgb.shape, None if prev is None else prev[0], main_face, link_iou)
        cur = None if k is None else (boxes[k], lms[k])
        if prev is not None and cur is not None:
            chained = yield from bridge(pending, prev, cur, 3)
        else:  # the face left in between (without a face at the last detection no frame waits: nothing to do)
            chained = yield from edge(pending, prev, cur, 3)
        if not chained:
            run_open = False
        yield emit(idx, rgb, *(cur or (None, None)))
        prev, pending = cur, []

    since = every  # frames since the last full detection
    for idx, rgb in frames:
        if prev is not None and since < every:  # a face is held: detections every `every` frames
            pending.append((idx, rgb))
            since += 1
        else:  # and on every frame while none is
            yield from keyframe(idx, rgb)
            since = 1
    if pending:  # the last frame is a keyframe too, so the tail is interpolated like the rest
        yield from keyframe(*pending.pop())
