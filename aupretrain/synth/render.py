"""Procedural face renderer: (identity, AU intensities, pose, scene, seed) -> RGB image + landmarks.

Faces are built as named 3D point sets in face units (x right, y down, z towards the camera; face
half-width ~ 1), deformed by the AU intensities, rotated by the head pose, projected orthographically and
drawn with anti-aliased OpenCV primitives at sub-pixel precision. Rendering is a pure function of its
arguments: the same inputs give the same pixels, so the same AUs can be put on different identities.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from .identity import AU_INDEX, AUS, Identity, Pose, Scene

SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << SHIFT
_U7 = np.linspace(-1.0, 1.0, 7)
_U9 = np.linspace(-1.0, 1.0, 9)
_U5 = np.linspace(0.0, 1.0, 5)
# Landmark groups written to the labels file, in this order.
LANDMARK_GROUPS = ("jaw", "brow_l", "brow_r", "eye_l_up", "eye_l_low", "eye_r_up", "eye_r_low", "nose",
                   "lip_up_out", "lip_low_out", "lip_up_in", "lip_low_in")


def _rotation(pose: Pose) -> np.ndarray:
    y, p, r = np.deg2rad([pose.yaw, pose.pitch, pose.roll])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _pts(x, y, z) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    y = np.broadcast_to(np.asarray(y, dtype=np.float64), x.shape)
    return np.stack([x, y, np.broadcast_to(np.float64(z), x.shape)], axis=-1)


def _mix(c, k: float, towards=(0.0, 0.0, 0.0)):
    return tuple(float(a * (1 - k) + b * k) for a, b in zip(c, towards))


def face_geometry(ident: Identity, au: np.ndarray) -> dict[str, np.ndarray]:
    """Named 3D point sets of the face for AU intensities `au` (in AUS order, each in [0, 1])."""
    a = {name: float(np.clip(au[i], 0.0, 1.0)) for name, i in AU_INDEX.items()}
    g: dict[str, np.ndarray] = {}
    fw, fh = ident.face_w, ident.face_h
    # Outline: upper half an ellipse, lower half narrowed towards the jaw; the jaw drop (AU26) lengthens it.
    th = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    s = np.sin(th)
    lower = np.clip(s, 0, None)
    xo = fw * np.cos(th) * (1 - (1 - ident.jaw) * lower ** 2)
    yo = np.where(s < 0, s * fh * 0.95, s * (fh * 0.88 + 0.2 * a["AU26"] * lower ** 3))
    g["outline"] = _pts(xo, yo, 0.0)
    g["jaw"] = g["outline"][4:21:2]
    # Eyes: lids open/close with AU43 (closure), AU7 (tightening), AU6 (cheek raise), AU1+2 (widening).
    eh, ew = ident.eye_h, ident.eye_w
    open_up = np.clip(1 + 0.15 * (a["AU1"] + a["AU2"]) - 0.3 * a["AU7"] - 0.12 * a["AU6"], 0.05, 1.3)
    open_low = np.clip(1 - 0.55 * a["AU7"] - 0.45 * a["AU6"], 0.1, 1.0)
    bump = (1 - _U7 ** 2) ** 0.8
    for side, sx in (("l", -1.0), ("r", 1.0)):
        cx, cy = sx * ident.eye_spacing, ident.eye_y
        x = cx + _U7 * ew
        low = cy + eh * 0.55 * open_low * bump - 0.012 * sx * _U7
        up = cy - eh * open_up * bump - 0.012 * sx * _U7
        up = up * (1 - a["AU43"]) + (low - 0.004) * a["AU43"]
        g[f"eye_{side}_up"] = _pts(x, up, 0.75)
        g[f"eye_{side}_low"] = _pts(x, low, 0.75)
        # Brows, inner end first: AU1 raises the inner part, AU2 the outer part, AU4 lowers and knits them.
        u = _U5
        inner, outer = sx * ident.brow_gap - sx * 0.05 * a["AU4"], sx * (ident.eye_spacing + ew * 1.3)
        bx = inner + u * (outer - inner)
        base = cy - 0.2 - ident.brow_arch * np.sin(np.pi * u)
        by = (base - 0.14 * a["AU1"] * (1 - u) ** 1.5 - 0.13 * a["AU2"] * u ** 1.5
              + a["AU4"] * (0.07 + 0.05 * (1 - u)))
        g[f"brow_{side}"] = _pts(bx, by, 0.8)
    # Nose.
    tip_y = ident.eye_y + ident.nose_len + 0.05
    nw = ident.nose_w
    g["nose"] = _pts([0.0, 0.0, -nw, 0.0, nw], [ident.eye_y + 0.02, tip_y - 0.05, tip_y, tip_y + 0.03, tip_y], 1.1)
    # Mouth: AU12 pulls the corners up and out, AU15 down, AU20 stretches sideways; AU26 opens the jaw.
    mw = ident.mouth_w + 0.06 * a["AU12"] + 0.09 * a["AU20"] + 0.01 * a["AU15"]
    my = ident.mouth_y
    lift = -0.1 * a["AU12"] + 0.09 * a["AU15"] + 0.02 * a["AU20"]
    lt = ident.lip_thick * (1 - 0.35 * a["AU20"] - 0.15 * a["AU12"])
    opening = 0.24 * a["AU26"]
    u = _U9
    w = np.abs(u) ** 1.6
    corner = lift * w
    mx = u * mw
    bow = 0.012 * np.cos(u * 3 * np.pi) * (1 - w)
    g["lip_up_in"] = _pts(mx, my - 0.12 * opening * (1 - w) + corner, 0.85)
    g["lip_low_in"] = _pts(mx, my + opening * (1 - u ** 2) + corner, 0.85)
    g["lip_up_out"] = _pts(mx * 1.02, my - lt * (1 - w) - bow + corner, 0.88)
    g["lip_low_out"] = _pts(mx * 1.02, my + opening * (1 - u ** 2) + 1.35 * lt * (1 - w) + corner, 0.88)
    cheek_y = ident.eye_y + 0.32 - 0.09 * a["AU6"] - 0.04 * a["AU12"]
    g["cheeks"] = _pts([-0.52, 0.52], [cheek_y, cheek_y], 0.6)
    # Nasolabial folds from the nose wings to beyond the mouth corners.
    fy = np.linspace(0, 1, 5)
    for side, sx in (("l", -1.0), ("r", 1.0)):
        x0, y0 = sx * (nw + 0.06), tip_y - 0.03
        x1, y1 = sx * (mw + 0.07 + 0.03 * a["AU12"]), my + 0.1 + corner[0] * 0.5
        g[f"fold_{side}"] = _pts(x0 + (x1 - x0) * fy + sx * 0.05 * np.sin(np.pi * fy), y0 + (y1 - y0) * fy, 0.7)
    g["ears"] = _pts([-fw * 0.98, fw * 0.98], [ident.eye_y + 0.12] * 2, -0.2)
    return g


def project(g: dict[str, np.ndarray], pose: Pose, centre: tuple[float, float], unit: float) -> dict[str, np.ndarray]:
    """Rotate by the head pose and project orthographically to pixel coordinates (float)."""
    names = list(g)
    sizes = [len(g[n]) for n in names]
    allp = np.concatenate([g[n] for n in names]) @ _rotation(pose).T
    xy = allp[:, :2] * unit + np.asarray(centre)
    out, i = {}, 0
    for n, k in zip(names, sizes):
        out[n] = xy[i:i + k]
        i += k
    return out


def landmarks(p: dict[str, np.ndarray]) -> np.ndarray:
    """The projected points of `LANDMARK_GROUPS`, in that order, as float32 [K, 2] (x, y) pixel coordinates."""
    return np.concatenate([p[n] for n in LANDMARK_GROUPS]).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _backdrop(scene: Scene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Background image and lighting field of a scene (cached: constant over a recording)."""
    rng = np.random.default_rng([scene.seed, size])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    t = np.clip(np.cos(scene.bg_angle) * xx + np.sin(scene.bg_angle) * yy + 0.5, 0, 1)[..., None]
    bg = np.asarray(scene.bg_a, np.float32) * (1 - t) + np.asarray(scene.bg_b, np.float32) * t
    for _ in range(int(rng.integers(2, 6))):  # soft blobs: out-of-focus objects behind the person
        c = rng.uniform(0, size, 2)
        r = rng.uniform(0.08, 0.3) * size
        col = rng.uniform(20, 235, 3).astype(np.float32)
        m = np.exp(-(((xx * size + size / 2 - c[0]) ** 2 + (yy * size + size / 2 - c[1]) ** 2) / (2 * r * r)))[..., None]
        bg = bg * (1 - 0.6 * m) + col * 0.6 * m
    light = 1 + scene.light_strength * (np.cos(scene.light_angle) * xx + np.sin(scene.light_angle) * yy) * 2
    return bg.astype(np.uint8), (light * scene.brightness).astype(np.float32)[..., None]


def _i(p: np.ndarray) -> np.ndarray:
    return np.round(p * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _poly(img, pts, colour):
    cv2.fillPoly(img, [_i(pts)], colour, cv2.LINE_AA, SHIFT)


def _line(img, pts, colour, thick):
    cv2.polylines(img, [_i(pts)], False, colour, max(1, int(round(thick))), cv2.LINE_AA, SHIFT)


def _ellipse(img, c, axes, angle, colour, thick=-1):
    cv2.ellipse(img, (int(c[0] * _ONE), int(c[1] * _ONE)), (max(1, int(axes[0] * _ONE)), max(1, int(axes[1] * _ONE))),
                angle, 0, 360, colour, thick, cv2.LINE_AA, SHIFT)


def render(ident: Identity, au: np.ndarray, pose: Pose, scene: Scene, seed: int, size: int = 112
           ) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame. Returns (RGB uint8 [size, size, 3], landmarks float32 [K, 2] in pixels)."""
    au = np.asarray(au, dtype=np.float64)
    a = {name: float(np.clip(au[i], 0, 1)) for name, i in AU_INDEX.items()}
    # Framing of an aligned face crop: eyes ~42% and mouth ~68% down, the face ~3/4 of the width.
    unit = size * 0.4 * scene.scale * pose.scale
    centre = (size * (0.5 + pose.dx), size * (0.45 + pose.dy))
    rot = _rotation(pose)
    g = face_geometry(ident, au)
    p = project(g, pose, centre, unit)
    bg, light = _backdrop(scene, size)
    img = bg.copy()
    skin = ident.skin
    hair = ident.hair_colour
    px = unit / 30.0  # one "stroke unit" in pixels at the default framing

    def xy(x, y, z=0.0):
        return (rot @ np.array([x, y, z]))[:2] * unit + np.asarray(centre)

    outline = p["outline"]
    head = (outline - xy(0, 0)) * 1.1 + xy(0, -0.05)
    if ident.hair_style in ("long", "side"):  # hair behind the head, down to the shoulders
        back = np.concatenate([head[np.sin(np.linspace(0, 2 * np.pi, 48, endpoint=False)) < 0.2],
                               [xy(1.25, 1.25), xy(-1.25, 1.25)]])
        _poly(img, back, _mix(hair, 0.15))
    neck_c = _mix(skin, 0.18)
    _poly(img, np.array([xy(-0.45, 0.6), xy(0.45, 0.6), xy(0.55, 2.0), xy(-0.55, 2.0)]), neck_c)
    _poly(img, np.array([xy(-1.6, 1.95), xy(1.6, 1.95), xy(1.0, 1.45), xy(-1.0, 1.45)]), _mix(ident.lip_colour, 0.6))
    for e in p["ears"]:
        _ellipse(img, e, (0.11 * ident.ear * unit, 0.21 * ident.ear * unit), 0, _mix(skin, 0.1))
    _poly(img, outline, skin)

    # Eyes: white, iris, then the lids painted over in skin so the opening clips the iris.
    for side in ("l", "r"):
        up, low = p[f"eye_{side}_up"], p[f"eye_{side}_low"]
        opening = np.concatenate([up, low[::-1]])
        _poly(img, opening, (236, 232, 228))
        c = up[3] * 0.45 + low[3] * 0.55
        r = ident.eye_h * 0.95 * unit
        _ellipse(img, c, (r, r), 0, ident.iris)
        _ellipse(img, c, (r * 0.45, r * 0.45), 0, (15, 12, 12))
        _ellipse(img, c + np.array([r * 0.3, -r * 0.3]), (r * 0.18, r * 0.18), 0, (245, 245, 245))
        span = (up[-1] - up[0]) * 0.12
        lid = np.concatenate([[up[0] - span], up, [up[-1] + span], [up[-1] + span + (0, -r * 2.6)],
                              [up[0] - span + (0, -r * 2.6)]])
        _poly(img, lid, skin)
        under = np.concatenate([[low[0] - span], low, [low[-1] + span], [low[-1] + span + (0, r * 2.2)],
                                [low[0] - span + (0, r * 2.2)]])
        _poly(img, under, skin)
        _line(img, up, _mix(hair, 0.3, (0, 0, 0)), 1.6 * px)
        _line(img, low, _mix(skin, 0.3, (60, 30, 30)), 0.8 * px)
        if a["AU7"] + a["AU6"] > 0.1:  # lower-lid bulge / infraorbital furrow
            _line(img, low + (0, r * 1.1), _mix(skin, 0.2 * min(1.0, a["AU7"] + 0.6 * a["AU6"]), (70, 35, 30)), px)
        crows = a["AU6"] * 0.9 + 0.25 * ident.age
        if crows > 0.15:  # crow's feet at the outer corner
            o = up[-1] if side == "r" else up[0]
            d = 1.0 if side == "r" else -1.0
            for k in (-1, 0, 1):
                _line(img, np.array([o + (d * r * 0.6, k * r * 0.5), o + (d * r * 1.6, k * r * 1.1)]),
                      _mix(skin, 0.3 * min(1.0, crows), (60, 30, 25)), 0.8 * px)

    for c in p["cheeks"]:  # cheeks: raised and flushed by AU6
        _ellipse(img, c, (0.17 * unit, 0.1 * unit), 0, _mix(skin, 0.05 + 0.12 * a["AU6"], (215, 90, 90)))
    # Forehead lines (AU1 centre, AU2 sides, age everywhere) and glabellar furrows (AU4).
    brow_y = ident.eye_y - 0.24
    for k, dy in enumerate((0.14, 0.24, 0.34)):
        for x0, x1, strength in ((-0.18, 0.18, a["AU1"]), (-0.55, -0.18, a["AU2"]), (0.18, 0.55, a["AU2"])):
            s_ = min(1.0, 1.1 * strength + 0.35 * ident.age) * (1 - 0.2 * k)
            if s_ > 0.12:
                xs = np.linspace(x0, x1, 5)
                _line(img, np.stack([xy(x_, brow_y - dy - 0.02 * np.cos(x_ * 3), 0.6) for x_ in xs]),
                      _mix(skin, 0.32 * s_, (70, 35, 30)), 0.9 * px)
    if a["AU4"] > 0.1:
        for sx in (-1, 1):
            _line(img, np.array([xy(sx * 0.05, brow_y + 0.1, 0.8), xy(sx * 0.07, brow_y - 0.07, 0.8)]),
                  _mix(skin, 0.4 * a["AU4"], (60, 30, 25)), 1.1 * px)
    fold = 0.2 * ident.age + 0.75 * a["AU12"] + 0.2 * a["AU6"]
    if fold > 0.1:
        for side in ("l", "r"):
            _line(img, p[f"fold_{side}"], _mix(skin, 0.3 * min(1.0, fold), (80, 35, 30)), 1.1 * px)
    for side in ("l", "r"):  # brows as filled strokes, thicker at the inner end
        b = p[f"brow_{side}"]
        t = ident.brow_thick * unit * (1.1 - 0.5 * _U5)[:, None]
        _poly(img, np.concatenate([b - (0, 1) * t / 2, (b + (0, 1) * t / 2)[::-1]]), ident.brow_colour)
    n = p["nose"]
    nose_c = _mix(skin, 0.28, (90, 45, 35))
    _line(img, n[[2, 3, 4]], nose_c, 1.0 * px)
    _line(img, np.array([n[0] + (unit * 0.06, 0), n[1] + (unit * 0.05, 0)]), _mix(skin, 0.12, (90, 45, 35)), px)
    for k in (2, 4):
        _ellipse(img, n[k] * 0.65 + n[3] * 0.35, (0.035 * unit, 0.02 * unit), 0, _mix(skin, 0.6, (40, 20, 20)))

    beard_c = _mix(hair, 0.1)
    jaw_band = outline[np.sin(np.linspace(0, 2 * np.pi, 48, endpoint=False)) > 0.45]
    if ident.beard in ("full", "stubble"):
        chin = np.concatenate([jaw_band, [xy(-ident.face_w * 0.8, ident.mouth_y - 0.2), xy(-0.3, ident.mouth_y - 0.14, 0.8),
                                          xy(0.3, ident.mouth_y - 0.14, 0.8), xy(ident.face_w * 0.8, ident.mouth_y - 0.2)]])
        _poly(img, chin, beard_c if ident.beard == "full" else _mix(skin, 0.16, hair))
    if ident.beard in ("full", "moustache"):
        lu = p["lip_up_out"]
        _poly(img, np.concatenate([lu + (0, -0.015 * unit), (lu + (0, -0.11 * unit))[::-1]]), beard_c)
    # Mouth: interior and teeth when the jaw drops, then both lips.
    ui, li, uo, lo = p["lip_up_in"], p["lip_low_in"], p["lip_up_out"], p["lip_low_out"]
    if a["AU26"] > 0.04:
        _poly(img, np.concatenate([ui, li[::-1]]), (45, 18, 24))
        teeth = np.concatenate([ui[1:-1], (ui[1:-1] + (0, min(0.05, 0.24 * a["AU26"]) * unit))[::-1]])
        _poly(img, teeth, (238, 234, 222))
    _poly(img, np.concatenate([uo, ui[::-1]]), _mix(ident.lip_colour, 0.1, (40, 10, 10)))
    _poly(img, np.concatenate([li, lo[::-1]]), ident.lip_colour)
    _line(img, ui if a["AU26"] <= 0.04 else ui[[0, -1]], _mix(ident.lip_colour, 0.5, (30, 5, 10)), 0.9 * px)
    if a["AU15"] > 0.2:  # chin boss / mentalis crease
        _line(img, np.array([xy(-0.12, ident.mouth_y + 0.26 + 0.2 * a["AU26"]), xy(0, ident.mouth_y + 0.29 + 0.2 * a["AU26"]),
                             xy(0.12, ident.mouth_y + 0.26 + 0.2 * a["AU26"])]), _mix(skin, 0.25 * a["AU15"], (70, 35, 30)), px)

    if ident.hair_style != "bald":  # hair in front: the top of the head above the hairline
        hl = ident.hairline
        if ident.hair_style == "fringe":
            hl += 0.2
        xs = np.linspace(-ident.face_w * 1.08, ident.face_w * 1.08, 9)
        tilt = 0.12 if ident.hair_style == "side" else 0.0
        edge = np.stack([xy(x_, hl + 0.1 * (x_ / ident.face_w) ** 2 + tilt * x_ / ident.face_w, 0.5) for x_ in xs])
        crown = head[head[:, 1] < edge[:, 1].max()]
        crown = crown[np.argsort(np.arctan2(crown[:, 1] - centre[1], crown[:, 0] - centre[0]))]
        _poly(img, np.concatenate([edge, crown[::-1]]), hair)
    else:
        _ellipse(img, xy(0, -0.95), (0.4 * unit, 0.15 * unit), 0, _mix(skin, 0.15, (255, 255, 255)))

    if ident.glasses != "none":
        gc = ident.glasses_colour
        r = ident.eye_w * 1.45 * unit
        eyes = [p["eye_l_up"][3] * 0.5 + p["eye_l_low"][3] * 0.5, p["eye_r_up"][3] * 0.5 + p["eye_r_low"][3] * 0.5]
        for c in eyes:
            if ident.glasses == "round":
                _ellipse(img, c, (r, r * 0.8), 0, gc, max(1, int(round(1.2 * px))))
            else:
                box = np.array([c + (-r, -0.75 * r), c + (r, -0.75 * r), c + (r, 0.7 * r), c + (-r, 0.7 * r), c + (-r, -0.75 * r)])
                _line(img, box, gc, 1.2 * px)
        _line(img, np.array([eyes[0] + (r, -0.2 * r), eyes[1] + (-r, -0.2 * r)]), gc, px)
        for c, e in zip(eyes, p["ears"][[0, 1]]):
            _line(img, np.array([c + (np.sign(e[0] - c[0]) * r, -0.3 * r), e + (0, -0.08 * unit)]), gc, px)

    out = img.astype(np.float32) * light
    if scene.blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), scene.blur)
    if scene.noise > 0:
        rng = np.random.default_rng([scene.seed, seed])
        out += rng.standard_normal(out.shape, dtype=np.float32) * scene.noise
    return np.clip(out, 0, 255).astype(np.uint8), landmarks(p)


def neutral() -> np.ndarray:
    """The neutral face: AU intensities [len(AUS)] float64, all 0."""
    return np.zeros(len(AUS), dtype=np.float64)
