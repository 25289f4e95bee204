"""Identity, pose and scene parameters of the procedural face renderer.

An identity is everything about a face that does not change over a video: shape, skin, hair, eyes, brows,
nose, mouth, beard, glasses, age wrinkles. A scene is what belongs to one recording: background,
lighting, camera framing, blur and sensor noise. Both are sampled from a seed, so a corpus is reproducible.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Action units the renderer animates (FACS numbering). Order is the column order of every label array.
AUS: tuple[str, ...] = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU12", "AU15", "AU20", "AU26", "AU43")
AU_INDEX = {name: i for i, name in enumerate(AUS)}

SKIN_TONES = np.array([  # RGB, light to dark
    (255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96), (160, 104, 72), (110, 70, 50), (80, 52, 38),
], dtype=np.float32)
HAIR_COLOURS = np.array([
    (20, 16, 14), (60, 40, 28), (105, 70, 40), (160, 120, 70), (220, 190, 130), (150, 60, 30), (170, 170, 170),
], dtype=np.float32)
IRIS_COLOURS = np.array([(60, 40, 25), (90, 60, 35), (70, 110, 150), (80, 120, 80), (40, 30, 25)], dtype=np.float32)
HAIR_STYLES = ("bald", "short", "long", "fringe", "side")


@dataclass(frozen=True)
class Identity:
    """Static appearance of one person (all lengths in face units: face half-width ~ 1)."""
    seed: int
    face_w: float
    face_h: float
    jaw: float
    skin: tuple[float, float, float]
    hair_style: str
    hair_colour: tuple[float, float, float]
    hairline: float
    eye_spacing: float
    eye_w: float
    eye_h: float
    eye_y: float
    iris: tuple[float, float, float]
    brow_gap: float
    brow_thick: float
    brow_arch: float
    brow_colour: tuple[float, float, float]
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_thick: float
    lip_colour: tuple[float, float, float]
    beard: str  # none | stubble | full | moustache
    glasses: str  # none | round | square
    glasses_colour: tuple[float, float, float]
    age: float  # 0..1, depth of permanent wrinkles
    ear: float

    def to_dict(self) -> dict:
        """The parameters as a plain dict (`dataclasses.asdict`), as stored in the labels file."""
        return asdict(self)


@dataclass(frozen=True)
class Pose:
    """Head pose of one frame: yaw, pitch and roll in degrees, image-plane shift `dx`, `dy` (fractions of the
    image size) and zoom factor `scale`."""
    yaw: float = 0.0  # degrees, positive turns the face to the image's right
    pitch: float = 0.0  # degrees, positive tilts the face down
    roll: float = 0.0  # degrees, in-plane rotation
    dx: float = 0.0  # image-plane shift, fraction of the image size
    dy: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class Scene:
    """What belongs to one recording: background, light, framing and sensor quality."""
    seed: int
    bg_a: tuple[float, float, float]
    bg_b: tuple[float, float, float]
    bg_angle: float
    light_angle: float
    light_strength: float
    brightness: float
    scale: float
    blur: float
    noise: float


def _colour(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> tuple[float, float, float]:
    i = rng.integers(len(palette))
    j = i + (1 if i + 1 < len(palette) else -1)
    mix = rng.uniform(0, 1)
    c = palette[i] * (1 - mix) + palette[j] * mix + rng.normal(0, jitter, 3)
    return tuple(float(v) for v in np.clip(c, 0, 255))


def sample_identity(seed: int) -> Identity:
    """A random identity, the same for the same `seed` (numpy default_rng([seed, 0x1D])): face shape, skin, hair,
    eyes, brows, nose, mouth (colours RGB 0..255, lengths in face units), beard, glasses and age."""
    rng = np.random.default_rng([seed, 0x1D])
    hair_colour = _colour(rng, HAIR_COLOURS, 8)
    skin = _colour(rng, SKIN_TONES, 6)
    male = rng.uniform() < 0.5
    beard = rng.choice(["stubble", "full", "moustache"]) if male and rng.uniform() < 0.45 else "none"
    glasses = rng.choice(["round", "square"]) if rng.uniform() < 0.25 else "none"
    hair_style = str(rng.choice(HAIR_STYLES, p=[0.08, 0.37, 0.25, 0.15, 0.15]))
    if hair_style == "long" and male and rng.uniform() < 0.6:
        hair_style = "short"
    brow_colour = tuple(float(v) for v in np.clip(np.array(hair_colour) * 0.7, 0, 255))
    return Identity(
        seed=int(seed),
        face_w=float(rng.uniform(0.86, 1.04)),
        face_h=float(rng.uniform(1.18, 1.38)),
        jaw=float(rng.uniform(0.62, 0.95)),
        skin=skin,
        hair_style=hair_style,
        hair_colour=hair_colour,
        hairline=float(rng.uniform(-0.78, -0.58)),
        eye_spacing=float(rng.uniform(0.33, 0.44)),
        eye_w=float(rng.uniform(0.15, 0.2)),
        eye_h=float(rng.uniform(0.075, 0.1)),
        eye_y=float(rng.uniform(-0.12, -0.02)),
        iris=_colour(rng, IRIS_COLOURS, 10),
        brow_gap=float(rng.uniform(0.12, 0.19)),
        brow_thick=float(rng.uniform(0.035, 0.07)),
        brow_arch=float(rng.uniform(0.0, 0.06)),
        brow_colour=brow_colour,
        nose_len=float(rng.uniform(0.3, 0.42)),
        nose_w=float(rng.uniform(0.1, 0.16)),
        mouth_y=float(rng.uniform(0.52, 0.62)),
        mouth_w=float(rng.uniform(0.27, 0.36)),
        lip_thick=float(rng.uniform(0.045, 0.075)),
        lip_colour=tuple(float(v) for v in np.clip(np.array(skin) * [0.8, 0.5, 0.5] + rng.normal(0, 6, 3), 0, 255)),
        beard=str(beard),
        glasses=str(glasses),
        glasses_colour=tuple(float(v) for v in rng.choice([[20, 20, 20], [90, 60, 30], [150, 150, 160]])),
        age=float(rng.beta(1.5, 3.0)),
        ear=float(rng.uniform(0.8, 1.2)),
    )


def sample_scene(seed: int) -> Scene:
    """A random recording setting, the same for the same `seed` (numpy default_rng([seed, 0x5C])): a two-colour
    background gradient (RGB 0..255; angle in radians), a linear light field (angle in radians, strength 0..0.35),
    brightness factor 0.8..1.15, framing scale 0.92..1.08, Gaussian blur sigma 0, 0.5 or 0.9 pixels (0 half the
    time) and sensor noise 0..6 grey levels (standard deviation)."""
    rng = np.random.default_rng([seed, 0x5C])
    base = rng.uniform(30, 225, 3)
    return Scene(
        seed=int(seed),
        bg_a=tuple(float(v) for v in base),
        bg_b=tuple(float(v) for v in np.clip(base + rng.normal(0, 45, 3), 0, 255)),
        bg_angle=float(rng.uniform(0, 2 * np.pi)),
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.35)),
        brightness=float(rng.uniform(0.8, 1.15)),
        scale=float(rng.uniform(0.92, 1.08)),
        blur=float(rng.choice([0.0, 0.0, 0.5, 0.9])),
        noise=float(rng.uniform(0.0, 6.0)),
    )
