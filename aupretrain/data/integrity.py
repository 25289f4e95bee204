"""Damaged shards and samples are found, counted by reason and left out; they never end a run.

The tar is the truth; the manifest and the index are claims about it, checked cheaply before they are used:
- a shard whose tar is missing, empty or not a readable tar: rank 0's start-up check leaves it out and names
  it (`unreadable_shard`, the manifest's sample count);
- an index that does not describe its tar (missing, not an index, written for another version of the tar or
  for another shard): found by `verify_index` (the layout of every member, the tar headers before the first and
  the last member, the end-of-archive block after it) and rebuilt from the tar's own headers (`index_tar`,
  byte for byte what DALI's `wds2idx` writes) into a local copy: nothing is lost;
- a tar shorter than the manifest says (an interrupted upload): its samples that lie wholly before the cut are
  read (`complete_prefix`, their headers checked), the rest are counted (`truncated`);
- a sample missing a member (a frame or its JSON): counted from the index at start; DALI's reader skips it
  (`missing_component_behavior="skip"`);
- a sample whose JPEG does not decode or whose JSON does not parse: found when the pipeline fails on it. The
  rank then scans the shards of its share (`scan_shard`: every JPEG decoded with OpenCV, every JSON parsed),
  writes local copies of their DALI indexes without the damaged samples (`write_index`), rebuilds its
  pipeline and goes on (`dali_reader.ClipLoader`).

The DALI index format (written by DALI's `wds2idx` tool, version "v1.2"): a header line `v1.2 <samples>`, then
one line per sample with one `<ext> <offset> <size> <member name>` group per member; `offset` is where the
member's data starts, right after its 512-byte tar header.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# reasons a sample is left out (also the suffixes of the `data/skipped/<reason>` metrics)
MISSING, BAD_JPEG, BAD_JSON, UNREADABLE_SHARD = "missing_member", "bad_jpeg", "bad_json", "unreadable_shard"
CUT = "truncated"  # samples of a truncated tar that lie past its end
FRAME_SIZE = "frame_size"  # frames of one clip of different sizes, or not the size a loader needs
TRUNCATED = "truncated shard"
BLOCK = 512  # tar header and padding unit


class IndexMismatch(ValueError):
    """An index that does not describe its tar (written for another version of it or for another shard, or
    damaged): the tar has to be indexed anew."""


@dataclass
class IndexedSample:
    """One sample of a DALI index: its key, {ext: (offset, size)} and {ext: member name} of its members, in
    index order, and its index line."""
    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    line: str = ""
    names: dict[str, str] = field(default_factory=dict)


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
            try:
                s.members[tok[i]] = (int(tok[i + 1]), int(tok[i + 2]))
            except ValueError:
                raise ValueError(f"{source}: line {n}: offset or size {tok[i + 1]!r} {tok[i + 2]!r} is not a "
                                 f"number") from None
            s.names[tok[i]] = tok[i + 3]
        out.append(s)
    if len(out) != int(head[1]):
        raise ValueError(f"{source}: header says {head[1]} samples, {len(out)} listed")
    return out


def check_index(samples: list[IndexedSample], exts: list[str]) -> list[str]:
    """Keys of samples missing one of `exts`."""
    return [s.key for s in samples if any(e not in s.members for e in exts)]


def _pad(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _members(samples: list[IndexedSample]) -> list[tuple[int, int, str]]:
    return [(off, size, s.names.get(ext, f"{s.key}.{ext}")) for s in samples for ext, (off, size) in s.members.items()]


def check_layout(samples: list[IndexedSample], tar_bytes: int | None, source: str) -> None:
    """Raises IndexMismatch unless every member lies where a tar can hold it: on a block boundary after a header,
    in tar order, not overlapping the one before, and (with `tar_bytes`) before the tar's end-of-archive block.
    Reads nothing."""
    end = 0  # where the previous member's blocks end
    for off, size, name in _members(samples):
        if size < 0 or off % BLOCK or off < end + BLOCK:
            raise IndexMismatch(f"{source}: member {name} at offset {off} is not where a tar can hold it after the "
                                f"member before")
        end = off + _pad(size)
    if tar_bytes is not None and end + BLOCK > tar_bytes:
        raise IndexMismatch(f"{source}: the members end at byte {end}, past the end of the tar ({tar_bytes} bytes)")


def header_problem(block: bytes, name: str, size: int) -> str | None:
    """What the tar holds at `block` when it is not the header of a regular file `name` of `size` bytes (None
    when it is): "no tar header", "the header of 'x'", ..."""
    try:
        ti = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return "no tar header"
    if not ti.isreg():
        return f"the header of {ti.name!r}, not a file"
    if ti.name != name and not (len(name.encode()) >= 100 and name.startswith(ti.name)):  # ustar names: 100 bytes
        return f"the header of {ti.name!r}"
    if ti.size != size:
        return f"it with {ti.size} bytes"
    return None


def _mismatch(source: str, why: str, name: str, size: int, off: int) -> IndexMismatch:
    return IndexMismatch(f"{source}: the index puts {name} ({size} bytes) at offset {off}, the tar has {why} there")


def verify_index(samples: list[IndexedSample], read, tar_bytes: int, source: str, full: bool = False) -> None:
    """Raises IndexMismatch unless `samples` (a parsed index) describe the tar of `tar_bytes` bytes that
    `read(offset, size)` reads: the layout of every member (`check_layout`), the tar headers before the first
    and the last member (name and size) and the end-of-archive block after the last — two reads. With `full`
    (the tar is in memory anyway) the header of every member is checked instead and the index may list fewer
    samples than the tar holds (a copy without quarantined samples, or cut at a truncated tar's end)."""
    if not samples:
        raise IndexMismatch(f"{source}: lists no samples")
    check_layout(samples, tar_bytes, source)
    members = _members(samples)
    for off, size, name in members if full else members[:1]:
        why = header_problem(read(off - BLOCK, BLOCK), name, size)
        if why:
            raise _mismatch(source, why, name, size, off)
    if full:
        return
    off, size, name = members[-1]
    tail = read(off - BLOCK, BLOCK + _pad(size) + BLOCK)
    why = header_problem(tail[:BLOCK], name, size)
    if why:
        raise _mismatch(source, why, name, size, off)
    if tail[-BLOCK:] != bytes(BLOCK):
        raise IndexMismatch(f"{source}: the tar goes on after the index's last member {name}")


def complete_prefix(samples: list[IndexedSample], read, tar_bytes: int, source: str) -> list[IndexedSample]:
    """The samples of a truncated tar's index that lie wholly before its end (checked: their layout and the
    headers of the first member and the last one kept); [] when none does. Raises IndexMismatch when they are
    not the index's first samples or do not match the tar."""
    kept = [s for s in samples if all(off + size <= tar_bytes for off, size in s.members.values())]
    if not kept:
        return []
    if kept != samples[:len(kept)]:
        raise IndexMismatch(f"{source}: the samples before the end of the tar are not the index's first ones")
    check_layout(kept, None, source)
    members = _members(kept)
    for off, size, name in (members[0], members[-1]):
        why = header_problem(read(off - BLOCK, BLOCK), name, size)
        if why:
            raise _mismatch(source, why, name, size, off)
    return kept


def index_tar(f, source: str) -> str:
    """The DALI index (v1.2 text, the same bytes as DALI's `wds2idx`) of a complete tar read from the seekable
    binary file `f`: regular members grouped into samples by their name up to the first dot of the base name,
    hidden files left out. Raises ValueError (naming `source`) when `f` is not a complete tar (not a tar,
    truncated, no end-of-archive block) or holds no sample."""
    try:
        tf = tarfile.open(fileobj=f, mode="r:")
        members = [(m.name, m.offset_data, m.size) for m in tf if m.isreg()]
        end = tf.offset
    except (tarfile.TarError, EOFError) as e:
        raise ValueError(f"{source}: not a readable tar ({e})") from e
    f.seek(end)
    if f.read(BLOCK) != bytes(BLOCK):
        raise ValueError(f"{source}: {TRUNCATED}: no end-of-archive block after its last member")
    groups: list[list[str]] = []
    last = None
    for name, off, size in members:
        dot = name.find(".", name.rfind("/") + 1)
        base, ext = (name[:dot], name[dot + 1:]) if dot >= 0 else (name[:-1], name)  # as wds2idx splits
        if not base or base.endswith("/"):
            continue  # hidden files
        if base != last:
            groups.append([])
            last = base
        groups[-1].append(f"{ext} {off} {size} {name}")
    if not groups:
        raise ValueError(f"{source}: the tar holds no sample")
    return f"v1.2 {len(groups)}\n" + "".join(" ".join(g) + "\n" for g in groups)


def index_text(samples: list[IndexedSample]) -> str:
    """The index text of `samples` (their lines as parsed)."""
    return f"v1.2 {len(samples)}\n" + "".join(s.line + "\n" for s in samples)


def scan_shard(tar: bytes, samples: list[IndexedSample], frame_exts: list[str], size: int = 0) -> dict[str, str]:
    """{key: reason} of the samples of one shard whose frames do not decode (OpenCV: `BAD_JPEG`), whose frames
    differ in size from each other or, when `size` > 0 (pixels), are not size x size (`FRAME_SIZE`), or whose JSON
    does not parse as clip metadata (`BAD_JSON`). tar: the shard's bytes; samples: its index."""
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
        shapes = set()
        for e in frame_exts:
            img = cv2.imdecode(np.frombuffer(_member(tar, s, e), np.uint8), cv2.IMREAD_COLOR)
            if img is None or img.size == 0:
                bad[s.key] = BAD_JPEG
                break
            shapes.add(img.shape[:2])
        else:
            if len(shapes) > 1 or (size > 0 and shapes and shapes != {(size, size)}):
                bad[s.key] = FRAME_SIZE
    return bad


def _member(tar: bytes, s: IndexedSample, ext: str) -> bytes:
    off, size = s.members[ext]
    return tar[off:off + size]


def write_index(samples: list[IndexedSample], drop: set[str], path: Path) -> int:
    """Write a DALI index of `samples` without the keys in `drop`; returns the samples kept."""
    kept = [s for s in samples if s.key not in drop]
    write_text(path, index_text(kept))
    return len(kept)


def write_text(path: Path, text: str) -> None:
    """Write a local file under a temporary name of this process and rename it into place (ranks on one
    machine may write the same file at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
