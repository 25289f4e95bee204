"""Per-frame AU labels for training clips (the supervised upper bound), looked up by video and frame.

Layout: `<root>/<video id>.labels.json` with `"aus"` (AU names) and `"au"` ([frames][AUs] intensities in
[0, 1], indexed by source frame) — what `aupretrain-synth` writes beside each video. A clip's metadata
(`video`, `frames`) in the shards selects the rows. Local folders or s3:// prefixes.
"""
from __future__ import annotations

import json

import numpy as np

from . import storage

LABELS_SUFFIX = ".labels.json"  # the label file beside each video: <video>.labels.json


class FrameLabels:
    """Per-frame AU labels under `root` (local folder or s3:// prefix), one `<video>.labels.json` per video, read
    once per video and kept (float32 [frames, A]); every video must list the same AUs (`aus`, set by the first read)."""
    def __init__(self, root: str):
        self.root = str(root)
        self.aus: list[str] | None = None
        self._cache: dict[str, np.ndarray] = {}

    def _video(self, video: str) -> np.ndarray:
        if video not in self._cache:
            path = storage.join(self.root, f"{video}{LABELS_SUFFIX}")
            try:
                lab = json.loads(storage.read_text(path))
            except FileNotFoundError:
                raise FileNotFoundError(f"{path}: no AU labels for video {video!r} (data.labels={self.root})") from None
            if self.aus is None:
                self.aus = list(lab["aus"])
            elif list(lab["aus"]) != self.aus:
                raise ValueError(f"{path}: AU list {lab['aus']} differs from {self.aus}")
            self._cache[video] = np.asarray(lab["au"], dtype=np.float32)
        return self._cache[video]

    def names(self) -> list[str]:
        """The AU names of the labels: those of the videos read so far, else of the first `*.labels.json` found
        under the root (a loader whose lookups ran in worker processes; the listing stops at the first page that
        holds one, so a large S3 prefix is not listed whole). Raises FileNotFoundError when there is none."""
        if self.aus is None:
            first = next((u for u, _ in storage.iter_files(self.root) if u.endswith(LABELS_SUFFIX)), None)
            if first is None:
                raise FileNotFoundError(f"{self.root}: no *{LABELS_SUFFIX} files (data.labels)")
            self.aus = list(json.loads(storage.read_text(first))["aus"])
        return list(self.aus)

    def clip(self, video: str, frames: list[int]) -> np.ndarray:
        """[T, A] labels of the clip's source frames."""
        table = self._video(video)
        if max(frames) >= len(table):
            raise ValueError(f"{video}: frame {max(frames)} is beyond its {len(table)} labelled frames")
        return table[frames]

    def batch(self, metas: list[dict]) -> np.ndarray:
        """float32 [B, T, A] labels of the clips of `metas` (each with `video` and `frames`). Raises FileNotFoundError
        (no local labels file for a video; on S3 botocore's ClientError) or ValueError (a frame past the labelled
        ones, or a different AU list)."""
        return np.stack([self.clip(m["video"], m["frames"]) for m in metas])
