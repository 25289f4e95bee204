"""Damaged shards and samples are found, counted by reason and left out; they never end a run.

Where each kind of damage is caught:
- a shard whose tar is missing, has another size than the manifest says (truncated upload), or whose index is
  missing, unreadable or points past the end of the tar: rank 0's start-up check leaves the shard out and
  names it (`check_index`, `dataset.check_shards`);
- a sample missing a member (a frame or its JSON): counted from the index at start; DALI's reader skips it
  (`missing_component_behavior="skip"`);
- a sample whose JPEG does not decode or whose JSON does not parse: found when the pipeline fails on it. The
  rank then scans the shards of its share (`scan_shard`: every JPEG decoded with OpenCV, every JSON parsed),
  writes local copies of their DALI indexes without the damaged samples (`write_index`), rebuilds its
  pipeline and goes on (`dali_reader.ClipLoader`).

The DALI index format (written by DALI's `wds2idx` tool, version "v1.2"): a header line `v1.2 <samples>`, then
one line per sample with one `<ext> <offset> <size> <member name>` group per member.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# reasons a sample is left out (also the suffixes of the `data/skipped/<reason>` metrics)
MISSING, BAD_JPEG, BAD_JSON, UNREADABLE_SHARD = "missing_member", "bad_jpeg", "bad_json", "unreadable_shard"
TRUNCATED = "truncated shard"


@dataclass
class IndexedSample:
    """One sample of a DALI index: its key and {ext: (offset, size)} of its members, in index order."""
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    line: str = ""


def parse_index(text: str, source: str = "index") -> list[IndexedSample]:
    """Samples of a DALI webdataset index. Raises ValueError (naming `source`) when it is not one."""
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1.") or not head[1].isdigit():
        raise ValueError(f"{source}: not a DALI webdataset index (first line {lines[0][:40] if lines else ''!r})")
    out = []
    for n, line in enumerate(lines[1:], 2):
        tok = line.split()
        if not tok:
            continue
        if len(tok) % 4:
            raise ValueError(f"{source}: line {n} is not groups of <ext> <offset> <size> <name>")
        s = IndexedSample(key=tok[3].split(".", 1)[0], line=line)
        for i in range(0, len(tok), 4):
            s.members[tok[i]] = (int(tok[i + 1]), int(tok[i + 2]))
        out.append(s)
    if len(out) != int(head[1]):
        raise ValueError(f"{source}: header says {head[1]} samples, {len(out)} listed")
    return out


def check_index(samples: list[IndexedSample], tar_bytes: int, exts: list[str], source: str) -> list[str]:
    """Keys of samples missing one of `exts`. Raises ValueError when a member lies past the end of the tar
    (a truncated shard: nothing in it can be trusted)."""
    missing = []
    for s in samples:
        if any(off + size > tar_bytes for off, size in s.members.values()):
            raise ValueError(f"{source}: {TRUNCATED}: sample {s.key} lies past the end of the tar ({tar_bytes} bytes)")
        if any(e not in s.members for e in exts):
            missing.append(s.key)
    return missing


def scan_shard(tar: bytes, samples: list[IndexedSample], frame_exts: list[str]) -> dict[str, str]:
    """{key: reason} of the samples of one shard whose frames do not decode (OpenCV) or whose JSON does not parse
    as clip metadata. tar: the shard's bytes; samples: its index."""
    import cv2

    bad = {}
    for s in samples:
        if any(e not in s.members for e in [*frame_exts, "json"]):
            continue  # DALI skips it already (counted at start)
        try:
            meta = json.loads(_member(tar, s, "json"))
            if not isinstance(meta, dict) or not {"video", "identity"} <= set(meta):
                raise ValueError("not clip metadata")
        except (ValueError, UnicodeDecodeError):
            bad[s.key] = BAD_JSON
            continue
        for e in frame_exts:
            img = cv2.imdecode(np.frombuffer(_member(tar, s, e), np.uint8), cv2.IMREAD_COLOR)
            if img is None or img.size == 0:
                bad[s.key] = BAD_JPEG
                break
    return bad


def _member(tar: bytes, s: IndexedSample, ext: str) -> bytes:
    off, size = s.members[ext]
    return tar[off:off + size]


def write_index(samples: list[IndexedSample], drop: set[str], path: Path) -> int:
    """Write a DALI index of `samples` without the keys in `drop`; returns the samples kept."""
    kept = [s for s in samples if s.key not in drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"v1.2 {len(kept)}\n" + "".join(s.line + "\n" for s in kept))
    tmp.replace(path)
    return len(kept)
