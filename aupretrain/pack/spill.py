"""Spill files: the clips of one video, written by a worker and read back clip by clip when shards are
assembled. Layout: the JPEG frames back to back, then a JSON footer (clips with their member offsets),
then the footer's length as 8 bytes. Written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import functools
import json
import os
import struct
from pathlib import Path

from ..data import shards


class SpillWriter:
    """Writes one video's spill file at `path` (the layout of the module docstring) through `.<name>.tmp`, renamed
    into place by `close`; `abort` removes the temporary file. Clips refer to frames by offset, so overlapping
    clips can share frames."""
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.tmp, "wb")
        self.clips: list[dict] = []

    def frame(self, jpeg: bytes) -> tuple[int, int]:
        """Append one JPEG frame; returns its (offset, length) in bytes, for `clip`."""
        off = self.f.tell()
        self.f.write(jpeg)
        return off, len(jpeg)

    def clip(self, key: str, meta: shards.ClipMeta, frames: list[tuple[int, int]]) -> None:
        """Record clip `key` with its metadata and its frames as (offset, length) pairs from `frame`."""
        self.clips.append({"key": key, "meta": meta.__dict__, "frames": frames})

    def close(self) -> int:
        """Write the JSON footer and its length (8 bytes, little-endian), fsync, rename to the final name; returns the
        number of clips."""
        footer = json.dumps({"clips": self.clips}).encode()
        self.f.write(footer)
        self.f.write(struct.pack("<Q", len(footer)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        self.tmp.replace(self.path)
        return len(self.clips)

    def abort(self) -> None:
        """Close and delete the temporary file (the final name is never written)."""
        self.f.close()
        self.tmp.unlink(missing_ok=True)


@functools.lru_cache(maxsize=4096)
def _footer(path: str, mtime_ns: int) -> list[dict]:
    with open(path, "rb") as f:
        f.seek(-8, os.SEEK_END)
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(-8 - n, os.SEEK_END)
        return json.loads(f.read(n))["clips"]


def count(path: str | Path) -> int:
    """Number of clips in the spill file at `path` (its footer, cached by path and mtime). Raises OSError."""
    return len(_footer(str(path), Path(path).stat().st_mtime_ns))


def read_clip(path: str | Path, i: int) -> shards.Sample:
    """Clip `i` of the spill file at `path` as a shards.Sample (JPEG bytes of its frames, key, metadata). Raises
    IndexError for a clip number past the footer's, OSError when the file cannot be read."""
    clip = _footer(str(path), Path(path).stat().st_mtime_ns)[i]
    jpegs = []
    with open(path, "rb") as f:
        for off, n in clip["frames"]:
            f.seek(off)
            jpegs.append(f.read(n))
    return shards.Sample(clip["key"], jpegs, shards.ClipMeta(**clip["meta"]))
