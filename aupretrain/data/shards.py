"""The shard format in one place: member names, sample metadata, writer, DALI index, manifest.

A dataset folder (local or s3://) holds `shard-NNNNNN.tar` (WebDataset tar: one sample per clip),
`shard-NNNNNN.idx` (DALI's wds2idx index) and `manifest.json` (written last). See shards/README.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import webdataset as wds

from . import storage

FORMAT = "aupretrain-clips/1"
MANIFEST = "manifest.json"
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")


def frame_ext(i: int) -> str:
    """Member extension of frame i of a clip: f00.jpg, f01.jpg, ... (DALI's ext = text after the first dot)."""
    return f"f{i:02d}.jpg"


def frame_exts(clip_len: int) -> list[str]:
    """Member extensions of the `clip_len` frames of a clip: ["f00.jpg", "f01.jpg", ...]."""
    return [frame_ext(i) for i in range(clip_len)]


def make_key(*parts: str | int) -> str:
    """Sample key from parts; dots and other separators are replaced so DALI sees the right extensions."""
    return "_".join(_KEY_BAD.sub("-", str(p)) for p in parts)


@dataclass
class ClipMeta:
    """`<key>.json` of a sample."""
    video: str  # dataset-relative video id, e.g. "id00012/v003"
    identity: str
    frames: list[int]  # source frame indices (at the source frame rate)
    fps: float
    size: int


@dataclass
class Sample:
    """One clip as a shard holds it: its key (`make_key`), the JPEG bytes of its T frames (`f00.jpg`, ...) and
    its `<key>.json` metadata."""
    key: str
    jpegs: list[bytes]
    meta: ClipMeta


@dataclass
class ShardInfo:
    """A shard's manifest entry: tar and DALI index file names (relative to the dataset folder), number of samples
    (clips), size of the tar in bytes and its sha256 (hex)."""
    name: str
    index: str
    samples: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """`manifest.json` of a packed dataset (`aupretrain-pack`): format tag, clips (`samples`) and their frames
    (samples x clip_len), clip length T, `stride` (frames between a clip's frames, after resampling), frame side
    `size` (pixels), `fps` (resampled rate; None: the source rate), identities with clips, videos that gave clips,
    the shards, rejected inputs [{"input", "reason"}], frame and drop counts (`stats`) and the pack settings."""
    format: str = FORMAT
    samples: int = 0
    frames: int = 0
    clip_len: int = 0
    stride: int = 0
    size: int = 0
    fps: float | None = None
    identities: list[str] = field(default_factory=list)
    videos: int = 0
    shards: list[ShardInfo] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """The manifest as indented JSON text (every field, shards as objects)."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> "Manifest":
        """Parse a manifest. Raises UsageError (a ValueError) naming `source` when it is not JSON, not of this
        format, lists no shards, a field has a value of the wrong type (`_FIELDS`: counts are whole numbers >= 0,
        naming the field and the value), or a shard entry lacks a field or has one of the wrong type."""
        from ..errors import UsageError

        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{source}: not valid JSON ({e}); pack the dataset again (aupretrain-pack)") from e
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise UsageError(f"{source}: format {got!r}, expected {FORMAT!r}")
        if not isinstance(d.get("shards"), list) or not d["shards"]:
            raise UsageError(f"{source}: lists no shards; pack the dataset again (aupretrain-pack)")
        for k, (ok, what) in _FIELDS.items():
            if k in d and not ok(d[k]):  # an absent field keeps its default (older manifests)
                raise UsageError(f"{source}: field {k!r} is {_shown(d[k])}, expected {what}; pack the dataset again "
                                 "(aupretrain-pack) or correct the field")
        d["shards"] = [_shard_info(s, i, source) for i, s in enumerate(d["shards"])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})  # e.g. `created` of older manifests is dropped


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _shown(v) -> str:
    """A manifest value as JSON (cut at 80 characters) with its JSON type: '"sixty-four" (a string)'."""
    kind = ("null" if v is None else "true/false" if isinstance(v, bool) else "string" if isinstance(v, str) else
            "whole number" if isinstance(v, int) else "number" if isinstance(v, float) else
            "list" if isinstance(v, list) else "object")
    text = json.dumps(v)
    return f"{text[:80]}{'...' if len(text) > 80 else ''} (a {kind})"


# The manifest's fields as `Manifest.from_json` checks them: (test, what a valid value is).
_FIELDS = {
    "samples": (_count, "a whole number >= 0 (clips)"),
    "frames": (_count, "a whole number >= 0"),
    "clip_len": (_count, "a whole number >= 0 (frames per clip)"),
    "stride": (_count, "a whole number >= 0"),
    "size": (_count, "a whole number >= 0 (pixels)"),
    "videos": (_count, "a whole number >= 0"),
    "fps": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
            "a number > 0 or null"),
    "identities": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names"),
    "rejects": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
                'a list of {"input", "reason"} objects'),
    "stats": (lambda v: isinstance(v, dict), "an object"),
    "settings": (lambda v: isinstance(v, dict), "an object"),
}


def _shard_info(d, i: int, source: str) -> ShardInfo:
    from ..errors import UsageError

    types = {"name": str, "index": str, "samples": int, "bytes": int, "sha256": str}
    if not isinstance(d, dict) or any(not isinstance(d.get(k), tp) or isinstance(d.get(k), bool)
                                      for k, tp in types.items()):
        raise UsageError(f"{source}: shard entry {i} is not {{name, index, samples, bytes, sha256}}: {str(d)[:200]}")
    for k in ("samples", "bytes"):
        if d[k] < 0:
            raise UsageError(f"{source}: shard entry {i} field {k!r} is {d[k]}, expected a whole number >= 0; pack "
                             "the dataset again (aupretrain-pack)")
    return ShardInfo(**{k: d[k] for k in types})


def load_manifest(root: str) -> Manifest:
    """The manifest of the dataset folder `root` (local or s3://). Raises UsageError when there is none, it cannot
    be read (a missing bucket, key or permission: a setting to fix, one line at the entry points) or cannot be used
    (`Manifest.from_json`); storage.EnvironmentFault when the storage is unreachable."""
    from ..errors import UsageError

    uri = storage.join(root, MANIFEST)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise UsageError(f"{uri}: no manifest; is {root} a packed dataset (aupretrain-pack)?") from None
    except storage.EnvironmentFault:  # S3 unreachable or throttled after its retries: named as it is
        raise
    except Exception as e:  # botocore errors: missing key or bucket, access denied
        raise UsageError(f"{uri}: cannot read the manifest ({' '.join(str(e).split())[:300]}); is {root} a packed "
                         "dataset (aupretrain-pack) you may read?") from None
    return Manifest.from_json(text, uri)


def wds2idx_bin() -> str:
    """Path of DALI's `wds2idx` tool (on PATH, else beside the Python executable). Raises FileNotFoundError when
    neither exists."""
    exe = shutil.which("wds2idx") or str(Path(sys.executable).with_name("wds2idx"))
    if not Path(exe).exists():
        raise FileNotFoundError("wds2idx not found: it ships with nvidia-dali (pip install nvidia-dali-cuda120)")
    return exe


def write_index(tar_path: Path, idx_path: Path) -> None:
    """DALI index of a tar via DALI's own wds2idx tool."""
    subprocess.run([sys.executable, wds2idx_bin(), str(tar_path), str(idx_path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def sha256_file(path: Path) -> str:
    """Hex sha256 digest of the local file at `path` (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_name(i: int) -> str:
    """Shard file stem of shard `i`: "shard-000042" (no extension)."""
    return f"shard-{i:06d}"


def write_shard(samples: list[Sample], out_root: str, index: int, workdir: Path) -> ShardInfo:
    """Write one shard (tar + idx) locally with webdataset's TarWriter, then publish both to out_root.

    The index is published before the tar and the manifest after both, so a reader that trusts the
    manifest never sees a half-written shard; local files are renamed into place atomically.
    """
    name = shard_name(index)
    tar = workdir / f".{name}.tar.tmp"
    idx = workdir / f".{name}.idx.tmp"
    with wds.TarWriter(str(tar), mtime=0) as sink:  # fixed member times: reproducible bytes
        for s in samples:
            rec = {"__key__": s.key, "json": json.dumps(asdict(s.meta)).encode()}
            for i, jpg in enumerate(s.jpegs):
                rec[frame_ext(i)] = jpg
            sink.write(rec)
    write_index(tar, idx)
    info = ShardInfo(name=f"{name}.tar", index=f"{name}.idx", samples=len(samples), bytes=tar.stat().st_size,
                     sha256=sha256_file(tar))
    for local, member in ((idx, info.index), (tar, info.name)):
        dest = storage.join(out_root, member)
        if storage.is_s3(out_root):
            storage.put_file(local, dest)
            local.unlink()
        else:
            with open(local, "rb") as f:  # on disk before it has its final name (and before the journal says so)
                os.fsync(f.fileno())
            local.replace(dest)
    return info


def write_manifest(root: str, manifest: Manifest) -> None:
    """Write manifest.json (last). It holds no timestamp: the same inputs and settings give the same bytes."""
    storage.write_text(storage.join(root, MANIFEST), manifest.to_json())


def read_samples(tar_path: str) -> list[Sample]:
    """Read a local shard back into Samples (for tests and tools; training reads through DALI)."""
    out = []
    for rec in wds.WebDataset(tar_path, shardshuffle=False, empty_check=False):
        meta = ClipMeta(**json.loads(rec["json"]))
        n = len(meta.frames)
        out.append(Sample(rec["__key__"], [rec[frame_ext(i)] for i in range(n)], meta))
    return out
