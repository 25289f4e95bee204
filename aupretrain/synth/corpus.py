"""Write a synthetic face-video corpus laid out like a real one: <root>/<identity>/<video>.mp4 + labels."""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..data.labels import LABELS_SUFFIX
from ..pack.parallel import parallel_map
from ..pack.video import write_video
from .identity import AU_INDEX, AUS, Pose, sample_identity, sample_scene
from .render import LANDMARK_GROUPS, render
from .tracks import PROTOTYPES, sample_au_track, sample_pose_track

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoJob:
    """One video to render (`render_video`): corpus root, identity and video numbers, frame count, frame rate
    (frames/s), frame side (pixels), corpus seed and the head-motion scale."""
    root: str
    identity: int
    video: int
    frames: int
    fps: float
    size: int
    seed: int
    head_motion: float = 1.0  # scale of the head-pose track's amplitudes (0: a still head)

    @property
    def identity_name(self) -> str:
        """The identity folder name: "id" + 5-digit identity number, e.g. "id00012"."""
        return f"id{self.identity:05d}"

    @property
    def video_name(self) -> str:
        """The video file stem: "v" + 3-digit video number, e.g. "v003"."""
        return f"v{self.video:03d}"


def identity_seed(seed: int, identity: int) -> int:
    """The seed of identity number `identity` in a corpus of seed `seed` (numpy SeedSequence([seed, identity]), one
    32-bit word): the same identity in every video and run."""
    return int(np.random.SeedSequence([seed, identity]).generate_state(1)[0])


def render_video(job: VideoJob) -> dict:
    """Render one video and its labels; returns the labels dict (also written beside the video)."""
    ident = sample_identity(identity_seed(job.seed, job.identity))
    vseed = int(np.random.SeedSequence([job.seed, job.identity, job.video]).generate_state(1)[0])
    rng = np.random.default_rng(vseed)
    scene = sample_scene(vseed)
    aus = sample_au_track(rng, job.frames, job.fps)
    poses = sample_pose_track(rng, job.frames, job.fps, motion=job.head_motion)
    lms = []

    def frames():
        for f in range(job.frames):
            img, lm = render(ident, aus[f], poses[f], scene, f, job.size)
            lms.append(lm)
            yield img

    out = Path(job.root) / job.identity_name
    out.mkdir(parents=True, exist_ok=True)
    write_video(out / f"{job.video_name}.mp4", frames(), fps=job.fps)
    labels = {
        "identity": job.identity_name, "video": job.video_name, "fps": job.fps, "size": job.size,
        "frames": job.frames, "aus": list(AUS), "au": np.round(aus, 4).tolist(),
        "pose": [[round(p.yaw, 3), round(p.pitch, 3), round(p.roll, 3)] for p in poses],
        "landmark_groups": list(LANDMARK_GROUPS), "landmarks": np.round(np.stack(lms), 2).tolist(),
        "identity_params": ident.to_dict(), "scene_seed": vseed,
    }
    tmp = out / f".{job.video_name}{LABELS_SUFFIX}.{os.getpid()}.tmp"  # per process, as write_video's
    tmp.write_text(json.dumps(labels))
    tmp.replace(out / f"{job.video_name}{LABELS_SUFFIX}")
    return labels


RENDERER_VERSION = 3  # bump when the same arguments render different videos (2: AU tracks are excerpts; 3: the
#                       encoder is deterministic, so one seed gives one corpus, byte for byte)


def write_corpus(root: str | Path, identities: int, videos_per_identity: int, frames: int, seed: int,
                 fps: float = 25.0, size: int = 112, workers: int = 0, first_identity: int = 0,
                 overwrite: bool = False, head_motion: float = 1.0) -> dict:
    """Render the corpus (parallel over videos); skips videos already complete. Returns summary stats.
    `head_motion` scales the head-pose track (yaw, pitch, roll, shift and zoom around each video's mean pose; 0: the
    head holds its mean pose, so frames of a video differ by AUs only — a control for what a pretext task learns).

    Raises ValueError if `root` holds a corpus rendered with other settings (frames, fps, size, seed, videos per
    identity, renderer version): its videos would be mixed with new ones. `overwrite=True` deletes it first.
    """
    root = Path(root)
    old = root / "corpus.json"
    if old.exists():
        prev = json.loads(old.read_text())
        want = {"renderer": RENDERER_VERSION, "videos_per_identity": videos_per_identity, "frames": frames,
                "fps": fps, "size": size, "seed": seed, "head_motion": head_motion}
        prev.setdefault("head_motion", 1.0)  # corpora written before the knob moved the head fully
        diff = {k: (prev.get(k), v) for k, v in want.items() if prev.get(k) != v}
        if diff and not overwrite:
            changes = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items())
            raise ValueError(f"{root} holds a corpus rendered with other settings ({changes}); choose another "
                             "folder or pass overwrite (aupretrain-synth --overwrite) to replace it")
        if diff:
            log.warning("%s: replacing a corpus rendered with other settings %s", root, diff)
            shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [VideoJob(str(root), i, v, frames, fps, size, seed, float(head_motion))
            for i in range(first_identity, first_identity + identities) for v in range(videos_per_identity)]
    todo = [j for j in jobs if not (root / j.identity_name / f"{j.video_name}{LABELS_SUFFIX}").exists()]
    workers = workers or min(len(todo) or 1, os.cpu_count() or 1)
    active = np.zeros(len(AUS))
    total = 0
    bar = tqdm(total=len(todo) * frames, unit="frame", desc="synth", disable=None)
    for lab in parallel_map(render_video, todo, workers):
        active += (np.asarray(lab["au"]) >= 0.5).sum(0)
        total += lab["frames"]
        bar.update(lab["frames"])
    bar.close()
    meta = {"renderer": RENDERER_VERSION, "identities": identities, "videos_per_identity": videos_per_identity,
            "frames": frames, "fps": fps, "size": size, "seed": seed, "first_identity": first_identity,
            "aus": list(AUS), **({"head_motion": head_motion} if head_motion != 1.0 else {})}
    meta_path = root / "corpus.json"
    if todo or not meta_path.exists() or json.loads(meta_path.read_text()) != meta:  # unchanged corpus: keep mtime
        meta_path.write_text(json.dumps(meta, indent=2))
    return {"videos": len(jobs), "rendered": len(todo), "frames_rendered": total,
            "au_active_rate": dict(zip(AUS, (active / max(total, 1)).round(3).tolist()))}


def contact_sheet(path: str | Path, seed: int, identities: int = 6, size: int = 112) -> None:
    """A grid: one row per identity, columns neutral, each AU alone, then the expression prototypes."""
    cols = [("neutral", {})] + [(n, {n: 1.0}) for n in AUS] + [(k, v) for k, v in PROTOTYPES.items()]
    header = np.full((18, size * len(cols), 3), 255, np.uint8)
    for c, (name, _) in enumerate(cols):
        cv2.putText(header, name, (c * size + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    rows = [header]
    for i in range(identities):
        ident = sample_identity(identity_seed(seed, i))
        scene = sample_scene(identity_seed(seed + 1, i))
        row = []
        for name, units in cols:
            au = np.zeros(len(AUS))
            for n, w in units.items():
                au[AU_INDEX[n]] = w
            img, _ = render(ident, au, Pose(yaw=(i % 5 - 2) * 6.0, roll=(i % 3 - 1) * 4.0), scene, 0, size)
            row.append(img)
        rows.append(np.concatenate(row, axis=1))
    sheet = np.concatenate(rows, axis=0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet[..., ::-1])


def load_labels(video_path: str | Path) -> dict:
    """The labels dict written beside a rendered video (`<video stem>.labels.json`: identity, video, fps, size,
    frames, aus, au [frames][AUs] in [0, 1], pose, landmarks, ...). Raises FileNotFoundError when there is none and
    json.JSONDecodeError for a damaged file."""
    p = Path(video_path)
    return json.loads(p.with_name(p.stem + LABELS_SUFFIX).read_text())
