"""MTCNN face detector (Zhang et al. 2016) in plain torch + numpy: boxes, scores and 5 landmarks.

The P-, R- and O-Net weights ship with this package (`aupretrain/pack/mtcnn_weights/`, package data): they
are the files of the `facenet-pytorch` 2.6.0 wheel (`facenet_pytorch/data/{pnet,rnet,onet}.pt`, MIT License;
converted there from the original MTCNN release of Zhang et al., also MIT), copied unchanged. A plain
`pip install aupretrain` therefore gives a working detector; facenet-pytorch is not a dependency (its code
imports torchvision). `AUPRETRAIN_MTCNN_WEIGHTS=<folder>` points at other copies of the three files.

Landmark order: left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right).
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn


RNET_NMS = 0.7  # IoU of the NMS before the O-Net stage (MTCNN's value)


WEIGHTS_SHA256 = {  # the facenet-pytorch 2.6.0 files
    "pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}


class DetectorUnavailable(RuntimeError):
    """The face detector cannot be loaded (weights missing, damaged or unreadable): an environment fault of
    the whole run, raised once at start, never a reject of one input."""


def weights_dir() -> Path:
    """The folder holding pnet.pt, rnet.pt and onet.pt: $AUPRETRAIN_MTCNN_WEIGHTS, else the package data.

    Raises:
        DetectorUnavailable: a file is missing or its sha256 differs from the shipped weights.
    """
    env = os.environ.get("AUPRETRAIN_MTCNN_WEIGHTS")
    d = Path(env) if env else Path(__file__).resolve().parent / "mtcnn_weights"
    for name, digest in WEIGHTS_SHA256.items():
        f = d / name
        if not f.is_file():
            raise DetectorUnavailable(f"MTCNN weights missing: {f} (they ship with the aupretrain package; "
                                      "reinstall it, or set AUPRETRAIN_MTCNN_WEIGHTS to a folder with the three files)")
        if hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            raise DetectorUnavailable(f"MTCNN weights damaged: {f} (sha256 differs from the facenet-pytorch 2.6.0 "
                                      "file); reinstall the package")
    return d


class PNet(nn.Module):
    """MTCNN's proposal network (Zhang et al. 2016, "Joint Face Detection and Alignment Using Multitask Cascaded
    Convolutional Networks"), fully convolutional: x [N, 3, H, W] (RGB, (v - 127.5) / 128) -> (box offsets
    [N, 4, h, w], face probability [N, 2, h, w], softmax), one 12x12 window per output cell with stride 2."""
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.prelu1(self.conv1(x))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(self.pool1(x)))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """MTCNN's refinement network (Zhang et al. 2016): 24x24 crops [N, 3, 24, 24] (normalised as PNet's) -> (box
    offsets [N, 4], face probability [N, 2], softmax)."""
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """MTCNN's output network (Zhang et al. 2016): 48x48 crops [N, 3, 48, 48] (normalised as PNet's) -> (box offsets
    [N, 4], 5 landmarks [N, 10] (5 x then 5 y, fractions of the box), face probability [N, 2], softmax)."""
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


@functools.lru_cache(maxsize=1)
def load_nets() -> tuple[PNet, RNet, ONet]:
    """The three networks in eval mode. Raises DetectorUnavailable when the weights cannot be loaded."""
    d = weights_dir()
    nets = []
    for cls, name in ((PNet, "pnet.pt"), (RNet, "rnet.pt"), (ONet, "onet.pt")):
        net = cls()
        try:
            net.load_state_dict(torch.load(d / name, map_location="cpu", weights_only=True))
        except Exception as e:  # noqa: BLE001 - unpickling refused, wrong keys, unreadable file
            raise DetectorUnavailable(f"MTCNN weights {d / name} cannot be loaded ({type(e).__name__}: {e})") from e
        nets.append(net.eval())
    return tuple(nets)


def nms(boxes: np.ndarray, scores: np.ndarray, thr: float, mode: str = "union") -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (IoU, or intersection over the smaller box for "min")."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= thr]
    return np.asarray(keep, dtype=np.int64)


def _square(b: np.ndarray) -> np.ndarray:
    b = b.copy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 0] += (w - side) / 2
    b[:, 1] += (h - side) / 2
    b[:, 2], b[:, 3] = b[:, 0] + side, b[:, 1] + side
    return b


def _regress(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    b = b.copy()
    w, h = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    b[:, :4] += reg * np.stack([w, h, w, h], 1)
    return b


def _to_tensor(batch: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() - 127.5) * 0.0078125


def crops(img, boxes: np.ndarray, size: int) -> np.ndarray:
    """Patches of the boxes resized to size x size; parts outside the image are zero. `img` is one image
    or a list with one image per box."""
    out = np.zeros((len(boxes), size, size, 3), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(np.round(boxes[:, :4]).astype(int)):
        im = img[k] if isinstance(img, list) else img
        h, w = im.shape[:2]
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        if bw < 2 or bh < 2:
            continue
        patch = np.zeros((bh, bw, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2 + 1, w), min(y2 + 1, h)
        if sx2 <= sx1 or sy2 <= sy1:
            continue
        patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = im[sy1:sy2, sx1:sx2]
        out[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if bw > size else cv2.INTER_LINEAR)
    return out


def refine(img, boxes: np.ndarray, onet: ONet | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """O-Net on given boxes [N, 4+] of one image (or of a list of N images, one per box):
    (regressed square boxes [N, 4], face probability [N], landmarks [N, 5, 2])."""
    onet = onet or load_nets()[2]
    b = _square(np.asarray(boxes, np.float64)[:, :4])
    with torch.inference_mode():
        reg, pts, prob = onet(_to_tensor(crops(img, b, 48)))
    reg, pts, prob = reg.numpy().astype(np.float64), pts.numpy().astype(np.float64), prob[:, 1].numpy()
    w, h = b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1
    lm = np.stack([b[:, 0:1] + w[:, None] * pts[:, :5] - 1, b[:, 1:2] + h[:, None] * pts[:, 5:] - 1], axis=2)
    return _regress(b, reg)[:, :4], prob, lm


def detect(img: np.ndarray, min_face: float = 20.0, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All faces in an RGB uint8 image: boxes [N, 4] (x1, y1, x2, y2), scores [N], landmarks [N, 5, 2].

    min_face is the smallest face side searched for, in pixels of `img` (larger = fewer pyramid levels = faster).
    """
    pnet, rnet, onet = load_nets()
    h, w = img.shape[:2]
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
    m = 12.0 / max(min_face, 12.0)
    scales, side = [], min(h, w) * m
    while side >= 12:
        scales.append(m * factor ** len(scales))
        side *= factor
    cands, level = [], None
    with torch.inference_mode():
        for s in scales:
            hs, ws = int(h * s + 1), int(w * s + 1)
            # first level: area averaging from the image; then small steps (x0.709) from the level before
            level = cv2.resize(img if level is None else level, (ws, hs),
                               interpolation=cv2.INTER_AREA if level is None else cv2.INTER_LINEAR)
            reg, prob = pnet(_to_tensor(level[None]))
            p, r = prob[0, 1].numpy(), reg[0].numpy()
            ys, xs = np.nonzero(p >= thresholds[0])
            if len(ys) == 0:
                continue
            q1 = np.floor((np.stack([xs, ys], 1) * 2 + 1) / s)
            q2 = np.floor((np.stack([xs, ys], 1) * 2 + 12) / s)
            bb = np.concatenate([q1, q2, p[ys, xs, None], r[:, ys, xs].T], 1)
            cands.append(bb[nms(bb[:, :4], bb[:, 4], 0.5)])
        if not cands:
            return empty
        b = np.concatenate(cands)
        b = b[nms(b[:, :4], b[:, 4], 0.7)]
        b = _square(_regress(b[:, :4], b[:, 5:9]))
        reg, prob = rnet(_to_tensor(crops(img, b, 24)))
        ok = prob[:, 1].numpy() > thresholds[1]
        if not ok.any():
            return empty
        b, score, reg = b[ok], prob[ok, 1].numpy(), reg[ok].numpy()
        keep = nms(b, score, RNET_NMS)
        b = _square(_regress(b[keep], reg[keep]))
    boxes, prob, lm = refine(img, b, onet)
    ok = prob > thresholds[2]
    boxes, prob, lm = boxes[ok], prob[ok], lm[ok]
    keep = nms(boxes, prob, 0.7, "min")
    return boxes[keep], prob[keep], lm[keep]
