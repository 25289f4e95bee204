"""Labelled frame sets for the AU probe. Synthetic: rendered with ground truth, identities disjoint from
pretraining. BP4D / DISFA / GFT: `au_datasets.py`, with the same LabelledFrames output."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..synth.corpus import LABELS_SUFFIX, load_labels, write_corpus
from ..pack.video import read_video

log = logging.getLogger(__name__)


@dataclass
class LabelledFrames:
    """Labelled frames for the AU probe, one row per frame (N frames, A AUs): RGB uint8 images [N, H, W, 3],
    binary labels [N, A] and intensities [N, A], identity [N] (index into `identity_names`) and video [N] numbers,
    the AU names; real datasets also fill the source frame numbers, video names, dataset name and drop counts."""
    frames: np.ndarray  # [N, H, W, 3] uint8 RGB
    labels: np.ndarray  # [N, A] {0, 1}
    intensity: np.ndarray  # [N, A] float (NaN where the dataset has only occurrence)
    identity: np.ndarray  # [N] int
    video: np.ndarray  # [N] int
    aus: list[str]
    identity_names: list[str]  # subject name of each identity number
    # Optional (real datasets fill them; the synthetic path leaves the defaults):
    frame_index: np.ndarray | None = None  # [N] int: the frame's number in its source (label file numbering)
    video_names: list[str] = field(default_factory=list)  # name of each video number, e.g. "F001_T1"
    dataset: str = "synthetic"
    info: dict = field(default_factory=dict)  # counts: frames dropped (no face, unknown label, ...), cache hits

    @property
    def subject_names(self) -> np.ndarray:
        """[N] str: the subject of each frame (identity_names[identity])."""
        return np.asarray(self.identity_names, dtype=object)[self.identity]


def identity_sets(cfg) -> dict[str, range]:
    """Identity numbers of the synthetic pretraining corpus (`synth`) and of each evaluation split
    (`eval.splits`): {"pretraining": range, "validation": range, "test": range}."""
    first = int(cfg.synth.first_identity)
    sets = {"pretraining": range(first, first + int(cfg.synth.identities))}
    for name, s in cfg.eval.splits.items():
        first = int(s.first_identity)
        sets[str(name)] = range(first, first + int(cfg.eval.identities))
    return sets


def check_identity_sets(cfg) -> None:
    """Raise ValueError naming the two sets if any identity is in more than one of pretraining, validation
    and test: tuning happens on validation identities, figures are reported on test identities, and
    neither may have been seen in pretraining."""
    sets = identity_sets(cfg)
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = sets[a], sets[b]
            if ra.start < rb.stop and rb.start < ra.stop:
                raise ValueError(f"identity sets overlap: {a} {ra.start}..{ra.stop - 1} and {b} {rb.start}..{rb.stop - 1} "
                                 "(set synth.first_identity / eval.splits.*.first_identity so they are disjoint)")
    if str(cfg.eval.split) not in cfg.eval.splits or str(cfg.eval.split) == "pretraining":
        raise ValueError(f"eval.split={cfg.eval.split!r}: must be one of {sorted(cfg.eval.splits)}")


def ensure_synthetic(cfg_eval) -> Path:
    """Render the evaluation corpus if it is not there yet (deterministic for its seed). Complete videos are
    kept; a corpus rendered with other settings or another renderer version is replaced."""
    root = Path(cfg_eval.corpus)
    write_corpus(root, cfg_eval.identities, cfg_eval.videos_per_identity, cfg_eval.frames, cfg_eval.seed,
                 first_identity=cfg_eval.first_identity, overwrite=True)
    return root


def load_synthetic(root: str | Path, threshold: float = 0.5, frame_stride: int = 1) -> LabelledFrames:
    """The labelled frames of a synthetic corpus (`<root>/<identity>/<video>.mp4` + `<video>.labels.json`, videos
    in sorted order): every `frame_stride`-th frame, labels = float32 (intensity >= `threshold`), intensity float32
    in [0, 1]; a video with fewer decoded than labelled frames is cut to the shorter (warned). Identity numbers
    follow first appearance; video numbers are positions in the sorted list. Raises FileNotFoundError when there is
    no video (or a label file is missing) and VideoError when a video cannot be decoded."""
    root = Path(root)
    videos = sorted(root.glob("*/*.mp4"))
    if not videos:
        raise FileNotFoundError(f"{root}: no labelled videos (<identity>/<video>.mp4 + {LABELS_SUFFIX})")
    frames, inten, ident, vid, names = [], [], [], [], []
    aus = None
    for vi, path in enumerate(videos):
        lab = load_labels(path)
        aus = aus or lab["aus"]
        f = read_video(path)[::frame_stride]
        a = np.asarray(lab["au"], dtype=np.float32)[::frame_stride]
        n = min(len(f), len(a))
        if n < len(a):
            log.warning("%s: %d frames decoded, %d labelled; using %d", path, len(f), len(a), n)
        if lab["identity"] not in names:
            names.append(lab["identity"])
        frames.append(f[:n])
        inten.append(a[:n])
        ident.append(np.full(n, names.index(lab["identity"])))
        vid.append(np.full(n, vi))
    inten_a = np.concatenate(inten)
    return LabelledFrames(np.concatenate(frames), (inten_a >= threshold).astype(np.float32), inten_a,
                          np.concatenate(ident), np.concatenate(vid), list(aus), names)
