"""A real face in motion: skimage's `data.astronaut()` (public domain, NASA) animated by a smooth camera
(pan, zoom, small rotation). Used to check face detection and alignment on real footage (tests, bench).

Each frame is a similarity transform of the one still photo, so perfectly aligned crops of every frame
are the same image: the spread between aligned crops measures alignment error and jitter directly.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

FACE_CENTRE = (224.0, 116.0)  # centre of the face in the 512 x 512 photo (between the MTCNN box corners)
FACE_SIDE = 115.0  # face box side in the photo, pixels


def photo() -> np.ndarray:
    """skimage's astronaut photo: RGB uint8 [512, 512, 3]. Raises ImportError (naming the package) without
    scikit-image."""
    try:
        from skimage import data
    except ImportError as e:  # a test/bench dependency: pip install scikit-image
        raise ImportError("the astronaut animation needs scikit-image (pip install scikit-image)") from e
    return data.astronaut()


def transforms(frames: int, width: int, height: int, face_frac: float = 0.4, zoom: float = 0.2,
               degrees: float = 8.0, pan: float = 0.12, phase: float = 0.0) -> np.ndarray:
    """[frames, 2, 3] photo -> frame transforms: the face spans ~face_frac of the frame height, the zoom
    swings by +-zoom, the rotation by +-degrees and the face centre pans by +-pan of the frame size."""
    t = np.linspace(0.0, 1.0, frames) * 2 * np.pi + phase
    scale = face_frac * height / FACE_SIDE * (1 + zoom * np.sin(t))
    angle = np.deg2rad(degrees * np.sin(1.5 * t + 0.5))
    cx = width / 2 + pan * width * np.sin(t + 1.0)
    cy = height / 2 + pan * height * np.sin(2 * t)
    out = np.zeros((frames, 2, 3))
    for i in range(frames):
        c, s = scale[i] * np.cos(angle[i]), scale[i] * np.sin(angle[i])
        out[i, :, :2] = [[c, -s], [s, c]]
        out[i, :, 2] = [cx[i], cy[i]] - out[i, :, :2] @ FACE_CENTRE
    return out


def render(frames: int = 48, width: int = 320, height: int = 240, **motion) -> tuple[np.ndarray, np.ndarray]:
    """(RGB frames [F, H, W, 3] uint8, transforms [F, 2, 3])."""
    img = photo()
    ms = transforms(frames, width, height, **motion)
    video = np.stack([cv2.warpAffine(img, m, (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT) for m in ms])
    return video, ms


def write(path: str | Path, frames: int = 48, width: int = 320, height: int = 240, fps: float = 25.0, **motion) -> np.ndarray:
    """Render and encode to H.264; returns the transforms."""
    from ..pack.video import write_video

    video, ms = render(frames, width, height, **motion)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_video(path, video, fps=fps)
    return ms


def reference_crop(template, size: int = 112) -> np.ndarray:
    """The still photo aligned to the template (MTCNN landmarks): what every aligned frame should look like."""
    from ..pack import alignment, mtcnn

    img = photo()
    _, _, lms = mtcnn.detect(img, min_face=40)
    return alignment.warp(img, alignment.similarity(lms[0], np.asarray(template, np.float64) * size), size)


def misalignment(crop: np.ndarray, ref: np.ndarray) -> tuple[float, float, float, float]:
    """(rotation degrees, centre shift x, y pixels, scale) of an aligned crop relative to the reference,
    by ECC image registration (affine)."""
    g = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float32) for x in (ref, crop)]
    w = np.eye(2, 3, dtype=np.float32)
    _, w = cv2.findTransformECC(g[0], g[1], w, cv2.MOTION_AFFINE,
                                (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5), None, 5)
    c = np.array([ref.shape[1] / 2, ref.shape[0] / 2])
    shift = w[:, :2] @ c + w[:, 2] - c  # where the crop centre lands
    return (float(np.degrees(np.arctan2(w[1, 0], w[0, 0]))), float(shift[0]), float(shift[1]),
            float(np.sqrt(abs(np.linalg.det(w[:, :2])))))
