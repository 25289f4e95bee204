"""AU intensity tracks and head-pose tracks for one video.

AU tracks are a sum of events with onset / apex / offset phases (combined with max): single AUs and
co-occurring expression prototypes, plus blinks (AU43) and low-amplitude talking (AU26 below threshold).
"""
from __future__ import annotations

import numpy as np

from .identity import AU_INDEX, AUS, Pose

PROTOTYPES: dict[str, dict[str, float]] = {
    "smile": {"AU6": 0.9, "AU12": 1.0},
    "laugh": {"AU6": 1.0, "AU12": 1.0, "AU26": 0.8},
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU26": 0.9},
    "anger": {"AU4": 1.0, "AU7": 0.9},
    "sadness": {"AU1": 0.9, "AU4": 0.6, "AU15": 1.0},
    "fear": {"AU1": 0.9, "AU2": 0.7, "AU4": 0.7, "AU20": 1.0, "AU26": 0.5},
    "squint": {"AU6": 0.7, "AU7": 1.0},
}
SINGLE = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU12", "AU15", "AU20", "AU26")


def _envelope(n: int, start: float, onset: float, apex: float, offset: float) -> np.ndarray:
    t = np.arange(n, dtype=np.float64)
    up = np.clip((t - start) / max(onset, 1e-6), 0, 1)
    down = np.clip(1 - (t - start - onset - apex) / max(offset, 1e-6), 0, 1)
    e = np.minimum(up, down)
    return e * e * (3 - 2 * e)  # smoothstep


def sample_au_track(rng: np.random.Generator, frames: int, fps: float, events_per_s: float = 0.75,
                    prototype_p: float = 0.55, lead_s: float = 3.0) -> np.ndarray:
    """Per-frame AU intensities [frames, len(AUS)] in [0, 1].

    The track is an excerpt of ongoing behaviour: events are sampled from `lead_s` seconds before the first
    frame, so a short video is as active as any stretch of a long one (a track that started at rest would
    leave 1-second videos almost without AUs).
    """
    lead = int(round(lead_s * fps))
    return _behaviour(rng, frames + lead, fps, events_per_s, prototype_p)[lead:]


def _behaviour(rng: np.random.Generator, frames: int, fps: float, events_per_s: float,
               prototype_p: float) -> np.ndarray:
    au = np.zeros((frames, len(AUS)))
    t = rng.exponential(1 / events_per_s) * fps * 0.5
    while t < frames:
        onset, apex, offset = (rng.uniform(0.2, 0.6) * fps, rng.uniform(0.3, 1.6) * fps, rng.uniform(0.2, 0.6) * fps)
        env = _envelope(frames, t, onset, apex, offset) * rng.uniform(0.55, 1.0)
        if rng.uniform() < prototype_p:
            units = PROTOTYPES[str(rng.choice(list(PROTOTYPES)))]
        else:
            units = {str(rng.choice(SINGLE)): 1.0}
        for name, w in units.items():
            i = AU_INDEX[name]
            au[:, i] = np.maximum(au[:, i], env * w * rng.uniform(0.85, 1.0))
        t += onset + apex * 0.5 + rng.exponential(1 / events_per_s) * fps
    # Blinks: short full closures every 2-5 s.
    t = rng.uniform(0.3, 3.0) * fps
    while t < frames:
        d = rng.uniform(0.04, 0.1) * fps
        au[:, AU_INDEX["AU43"]] = np.maximum(au[:, AU_INDEX["AU43"]], _envelope(frames, t, d, 0.02 * fps, d))
        t += rng.uniform(2.0, 5.0) * fps
    # Talking: small jaw movement that stays below the "present" threshold.
    phase = rng.uniform(0, 2 * np.pi)
    talk = 0.12 * np.clip(np.sin(np.arange(frames) / fps * 2 * np.pi * rng.uniform(2, 4) + phase), 0, None)
    au[:, AU_INDEX["AU26"]] = np.maximum(au[:, AU_INDEX["AU26"]], talk * (rng.uniform() < 0.5))
    return np.clip(au, 0, 1)


def sample_pose_track(rng: np.random.Generator, frames: int, fps: float, yaw: float = 14.0, pitch: float = 8.0,
                      roll: float = 6.0, shift: float = 0.025, motion: float = 1.0) -> list[Pose]:
    """Smooth head motion: a few slow sinusoids per axis (degrees; shift as a fraction of the side) around a random
    mean pose; `motion` scales the sinusoids (0: the mean pose in every frame). The random draws are the same for
    every `motion`, so corpora that differ only in it hold the same faces, AUs and mean poses."""
    t = np.arange(frames) / fps

    def wave(amplitude: float) -> np.ndarray:
        mean = rng.uniform(-0.5, 0.5) * amplitude
        w = sum(rng.uniform(0.2, 0.5) * amplitude * np.sin(2 * np.pi * rng.uniform(0.05, 0.4) * t + rng.uniform(0, 6.3))
                for _ in range(3))
        return mean + motion * w

    ys, ps, rs = wave(yaw), wave(pitch), wave(roll)
    dx, dy = wave(shift), wave(shift)
    sc = 1 + wave(0.03)
    return [Pose(float(ys[i]), float(ps[i]), float(rs[i]), float(dx[i]), float(dy[i]), float(sc[i])) for i in range(frames)]
