"""Reference rows printed beside every encoder: the always-positive predictor and HOG features.

A learned AU code is only worth something above these: always-positive is the F1 a predictor gets by
saying every AU is present (F1 = 2p / (1 + p) for base rate p), HOG (Dalal & Triggs, CVPR 2005) is the
classic hand-made AU feature (e.g. the HOG + SVM baselines of the FERA challenges, Valstar et al. 2015).
"""
from __future__ import annotations

import cv2
import numpy as np

from .datasets import LabelledFrames
from .report import f1_summary


def always_positive(data: LabelledFrames) -> dict:
    """Result dict (same keys as `report.evaluate_codes`, without an identity probe) of predicting every AU
    present in every frame: per-AU F1 = 2p / (1 + p), p = the AU's base rate in `data`."""
    base = data.labels.mean(0)
    return f1_summary(2 * base / (1 + base), data)


def hog_features(frames: np.ndarray, size: int = 64, cell: int = 8, block: int = 16, bins: int = 9,
                 colour: bool = False, signed: bool = False) -> np.ndarray:
    """HOG of grey frames resized to `size` px: frames uint8 RGB [N, H, W, 3] -> float32 [N, D].

    OpenCV's HOGDescriptor with `block`-px blocks of 2x2 `cell`-px cells, stride one cell, `bins`
    orientation bins over 180 deg (360 with `signed`: OpenCV's signedGradient, the edge's polarity kept), L2-Hys
    block normalisation; D = 1,764 at the defaults (7 x 7 blocks x 36).
    `colour=True` reads the RGB frame instead of its grey: each pixel's gradient is that of the channel with the
    largest magnitude (Dalal & Triggs, CVPR 2005, section 6.2; OpenCV's `computeGradient` on 3 channels).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"hog_features needs RGB frames [N, H, W, 3], got shape {frames.shape}")
    hog = cv2.HOGDescriptor((size, size), (block, block), (cell, cell), (cell, cell), bins, 1, -1.0,
                            cv2.HOGDescriptor_L2Hys, 0.2, False, cv2.HOGDescriptor_DEFAULT_NLEVELS, signed)

    def image(f: np.ndarray) -> np.ndarray:
        f = cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(f) if colour else cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)

    out = [hog.compute(image(f)) for f in frames]
    return np.stack(out).reshape(len(frames), -1).astype(np.float32)
