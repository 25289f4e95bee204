"""What to pack: discover input videos and frame folders (local or s3://), fetch them, and read their face tracks
(their frames: `frames.py`).

INPUT is one of
- a folder tree `<identity>/<video>.<ext>` (any container PyAV/FFmpeg opens: mp4, m4v, mov, mkv, webm, avi,
  flv, 3gp, mpg, ts, ...), VoxCeleb2's `<identity>/<youtube id>/00001.mp4` (the video id is the path below
  the identity), or `<identity>/<video>/<frame>.(jpg|jpeg|png)`, local or `s3://bucket/prefix`; every file
  that is not packed is listed in the manifest's rejects with the reason;
- a list file `.csv` (header `path,identity[,video][,boxes]`) or `.jsonl` (`{"path", "identity", "video"?,
  "boxes"?}` per line), local or on S3. `path` is a video file or a frame folder, local (relative to the
  list's folder) or `s3://`. `boxes` is an optional face track: a VoxCeleb-style text file
  (`FRAME X Y W H` rows) or a JSON file / inline list of `[frame, x, y, w, h]`; with it detection is skipped.

Every problem with one input becomes a reject (input, reason) instead of an exception.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np

from ..data import storage
from .video import VideoError

# Containers listed here are videos by name; files with other extensions (except NOT_VIDEO_EXTS) are tried
# with PyAV too, so anything FFmpeg can demux is packed, and what it cannot open is a reject with the reason.
VIDEO_EXTS = (".mp4", ".m4v", ".mp4v", ".mov", ".avi", ".mkv", ".webm", ".flv", ".3gp", ".3g2", ".mpg", ".mpeg",
              ".m2v", ".ts", ".mts", ".m2ts", ".wmv", ".asf", ".ogv", ".vob", ".mxf", ".dv", ".y4m")
NOT_VIDEO_EXTS = (".txt", ".json", ".jsonl", ".csv", ".md", ".xml", ".yaml", ".yml", ".pkl", ".npy", ".npz",
                  ".wav", ".mp3", ".m4a", ".flac", ".aac", ".ogg", ".opus")
# frame images, read with OpenCV (`aupretrain-extract` takes the same types, alone or in folders)
IMAGE_EXTS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff", ".jp2", ".pbm", ".pgm",
              ".ppm", ".pnm")
LIST_EXTS = (".csv", ".jsonl")


@dataclass(frozen=True)
class VideoItem:
    """One input of the pack stage (`discover`): a video file or frame folder (local or s3://), its identity, its
    unique dataset-relative id `<identity>/<name>`, an optional face track and its size in bytes (for the journal's
    fingerprint)."""
    path: str  # local path or s3:// URL of a video file or of a frame folder
    identity: str
    video: str  # unique dataset-relative id "<identity>/<name>"
    frames_dir: bool = False  # path is a folder of frame images
    boxes: object = None  # None, a track file path/URL, or a tuple of (frame, x, y, w, h)
    nbytes: int = 0  # size of the file (or of all frames) when known, for the input fingerprint

    @property
    def name(self) -> str:
        """The video id without its identity: the part after the first "/" (the whole id when it has none)."""
        return self.video.split("/", 1)[-1]


def natural_key(name: str):
    """Sort key of a name with its digit runs as numbers: "frame_2" before "frame_10"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _group_tree(entries: list[tuple[str, int]], root: str) -> tuple[list[VideoItem], list[dict]]:
    """Items and rejects from (relative path, size) pairs under root.

    The first folder level is the identity; the video id is the path below it, so both the flat layout
    `<identity>/<video>.mp4` and VoxCeleb2's `<identity>/<youtube id>/00001.mp4` work. Image files
    (IMAGE_EXTS) in a folder below the identity make that folder one video of frames. Every other file is
    a video candidate: known containers (VIDEO_EXTS) and unknown extensions alike are opened with PyAV,
    and what it cannot open becomes a reject. Files that cannot be an input (directly under the root, an
    image directly in an identity folder, a metadata file such as `.txt`/`.json` that belongs to no video)
    are rejects with the reason. Not inputs, and not listed: hidden files and folders (`.name`), images and
    metadata files at the root (contact sheets, corpus.json), and a video's sidecar files (NOT_VIDEO_EXTS
    files whose name up to the first dot is the video's: `v000.labels.json`, `v000.txt`).
    """
    videos: dict[tuple[str, str], list] = {}
    rejects, meta = [], []
    for rel, size in entries:
        parts = PurePosixPath(rel).parts
        if not parts or any(p.startswith(".") for p in parts):
            continue
        ext = PurePosixPath(rel).suffix.lower()
        where = storage.join(root, *parts)
        if len(parts) == 1:
            if ext not in IMAGE_EXTS + NOT_VIDEO_EXTS:  # dataset metadata at the root (corpus.json, README) is not an input
                rejects.append({"input": where, "reason": f"{where}: not inside an identity folder "
                                "(expected <identity>/<video file> or <identity>/<video>/<frames>)"})
        elif ext in IMAGE_EXTS:
            if len(parts) == 2:
                rejects.append({"input": where, "reason": f"{where}: an image directly in an identity folder; "
                                "frames of a video go in <identity>/<video>/<frame>.jpg"})
                continue
            v = videos.setdefault((parts[0], "/".join(parts[1:-1])), [True, 0])
            if v[0]:
                v[1] += size
            else:
                rejects.append({"input": where, "reason": f"{where}: an image beside a video of the same id; skipped"})
        elif ext in NOT_VIDEO_EXTS:
            meta.append(parts)
        else:
            key = (parts[0], "/".join([*parts[1:-1], PurePosixPath(parts[-1]).stem]))
            if key in videos:
                other = "frames of a folder" if videos[key][0] else "another file"
                rejects.append({"input": where, "reason": f"{where}: video id {'/'.join(key)!r} is also used by "
                                f"{other} (names that differ only in the extension); skipped"})
                continue
            videos[key] = [False, size, "/".join(parts[1:])]
    for parts in meta:  # a video's sidecar (<video>.labels.json, <video>.txt track) is not an input of its own
        stem = "/".join([*parts[1:-1], parts[-1].split(".", 1)[0]])
        if (parts[0], stem) not in videos:
            where = storage.join(root, *parts)
            rejects.append({"input": where, "reason": f"{where}: not a video ({PurePosixPath(parts[-1]).suffix} "
                            "file, and no video of that name beside it); skipped"})
    items = []
    for (ident, name), v in sorted(videos.items()):
        rel = name if v[0] else v[2]
        items.append(VideoItem(storage.join(root, ident, *rel.split("/")), ident, f"{ident}/{name}",
                               frames_dir=v[0], nbytes=v[1]))
    return items, rejects


def _scan(root: Path) -> Iterator[tuple[str, int]]:
    """(relative POSIX path, size) of every file below root, hidden folders skipped. Links to folders are followed
    (an identity or a frame folder may be a link into another disk), each real folder read once: a link back up
    the tree or a second link to the same folder is skipped with a warning. Likewise each real video file is
    listed once: of the paths that reach it (a link to a file, a file in a linked folder) the real path wins when it
    is below root, else the first in sorted order; the others are skipped with a warning naming both. Video files
    are stat'ed (a broken link has size 0, and opening it is its reject); images are only listed (size 1 each: a
    frame folder's fingerprint is its frame count)."""
    import logging

    log = logging.getLogger(__name__)
    real_root = os.path.realpath(root)
    seen = {real_root}
    listed: list[tuple[str, int, str | None]] = []  # (relative path, size, real path of a video candidate)
    for folder, dirs, files in os.walk(root, followlinks=True):
        keep = []  # real folders before links to them: the real name is the one kept
        for d in sorted((d for d in dirs if not d.startswith(".")),
                        key=lambda d: (os.path.islink(os.path.join(folder, d)), d)):
            real = os.path.realpath(os.path.join(folder, d))
            if real in seen:
                log.warning("%s: a link to a folder read already (%s); skipped", os.path.join(folder, d), real)
                continue
            seen.add(real)
            keep.append(d)
        dirs[:] = keep
        rel, real_folder = Path(folder).relative_to(root), os.path.realpath(folder)
        for f in sorted(files):
            if f.startswith("."):
                continue
            r, ext, full = (rel / f).as_posix(), Path(f).suffix.lower(), os.path.join(folder, f)
            if ext in IMAGE_EXTS:  # frames may be links shared by frame folders: each folder keeps its own
                listed.append((r, 1, None))
                continue
            try:
                link = os.path.islink(full)
                size = os.stat(full).st_size
            except OSError:  # a broken link: listed, and opening it is its reject
                listed.append((r, 0, None))
                continue
            real = os.path.realpath(full) if link else os.path.join(real_folder, f)
            listed.append((r, size, None if ext in NOT_VIDEO_EXTS else real))
    first: dict[str, str] = {}  # real path -> the relative path that lists it: the real one, else the first sorted
    for r, _, real in listed:
        if real:
            first[real] = min(first.get(real, r), r, key=lambda x: (os.path.join(real_root, x) != real, x))
    for r, size, real in listed:
        if real and first[real] != r:
            log.warning("%s: a link to a file read already (%s); skipped", root / r, root / first[real])
            continue
        yield r, size


def _resolve(path: str, base: str) -> str:
    if storage.is_s3(path) or Path(path).is_absolute():
        return path
    return storage.join(base, path)


def _parse_list(uri: str) -> tuple[list[VideoItem], list[dict]]:
    """Items and rejects of a .csv / .jsonl list; each row is named by its line in the file (`list.csv:3`). A
    UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped and CSV headers are read without surrounding spaces.
    Rows without a `video` whose default id (`<identity>/<file or folder name>`) other paths of the identity share
    are told apart by parent folders (`_unique_ids`). A field that is only spaces counts as empty."""
    text = storage.read_text(uri).lstrip("\ufeff")
    base = uri.rsplit("/", 1)[0] if storage.is_s3(uri) else str(Path(uri).parent)
    rows: list[tuple[int, object]] = []
    if uri.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames:
            reader.fieldnames = [h.strip() for h in reader.fieldnames]
        rows = [(reader.line_num, row) for row in reader]
        columns = reader.fieldnames or []
    else:
        columns = None
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    rows.append((n, {"_error": f"{uri}:{n}: not valid JSON ({e})"}))
    items, rejects, named = [], [], []
    for n, row in rows:
        try:  # one bad row is one reject, never the end of the run
            items.append(_list_item(row, base, f"{uri}:{n}", columns))
            named.append(bool(_text(row, "video")))
        except ValueError as e:
            rejects.append({"input": f"{uri}:{n}", "reason": str(e)})
    return _unique_ids(items, named), rejects


def _unique_ids(items: list[VideoItem], named: list[bool]) -> list[VideoItem]:
    """The items with unique ids where rows without a `video` share a default id (`<identity>/<stem>`) with other
    paths: the first row's path keeps it (unless a `video` of another path has it), every other path is named with
    as many parent folders as tell it apart from the rest (the file name with its extension where only that
    differs). Which path keeps the short id follows the rows' order; the longer ids depend on the set of paths only.
    The same path twice keeps one id (a duplicate, rejected by `discover`)."""
    def norm(path: str) -> str:
        return path.rstrip("/") if storage.is_s3(path) else os.path.abspath(path)

    taken = {it.video: norm(it.path) for it, n in zip(items, named) if n}
    groups: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {}  # (identity, stem) -> {path: (*folders, stem)}
    for it, n in zip(items, named):
        if not n:
            p, stem = PurePosixPath(norm(it.path)), it.video[len(it.identity) + 1:]
            parts = (*(q for q in p.parent.parts if q != "/"), stem)
            groups.setdefault((it.identity, stem), {}).setdefault(str(p), parts)
    ids: dict[tuple[str, str], str] = {}
    for (ident, stem), paths in groups.items():
        for i, (p, parts) in enumerate(paths.items()):
            if i == 0 and taken.setdefault(f"{ident}/{stem}", p) == p:
                continue  # the first path keeps the default id
            others = [q for q in paths.values() if q != parts]  # equal parts: the same name, another extension
            twin = len(others) < len(paths) - 1
            for k in range(1, max(map(len, paths.values())) + 1):
                label = (*parts[-k:-1], PurePosixPath(p).name) if twin else parts[-k:]
                vid = f"{ident}/{'/'.join(label)}"
                if all(q[-k:] != parts[-k:] for q in others) and taken.get(vid, p) == p:
                    break
            ids[ident, p] = vid
            taken.setdefault(vid, p)
    out = []
    for it, n in zip(items, named):
        vid = None if n else ids.get((it.identity, str(PurePosixPath(norm(it.path)))))
        out.append(replace(it, video=vid) if vid else it)
    return out


def _text(row: dict, key: str) -> str:
    """A list row's field as text without surrounding spaces; "" when absent, empty or only spaces."""
    return str(row.get(key) or "").strip()


def _list_item(row, base: str, where: str, columns: list[str] | None = None) -> VideoItem:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be an object with `path` and `identity`, not {type(row).__name__}")
    if "_error" in row:
        raise ValueError(row["_error"])
    path, ident = _text(row, "path"), _text(row, "identity")
    if not path or not ident:  # absent, empty or only spaces
        found = columns if columns is not None else sorted(row)
        missing = [k for k in ("path", "identity") if k not in found]
        raise ValueError(f"{where}: needs `path` and `identity`"
                         + (f" (the header has {', '.join(map(repr, found))}: no {' or '.join(missing)} column)"
                            if missing else " (empty here)"))
    path = _resolve(path, base)
    boxes = row.get("boxes") or None
    if isinstance(boxes, str):  # only spaces: no track, as an empty field
        boxes = _resolve(boxes.strip(), base) if boxes.strip() else None
    elif isinstance(boxes, list):
        try:
            boxes = tuple(tuple(float(v) for v in b) for b in boxes)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: `boxes` must be rows of [frame, x, y, w, h] numbers ({e})") from None
        if any(len(b) != 5 for b in boxes):
            raise ValueError(f"{where}: `boxes` must be rows of [frame, x, y, w, h]")
    elif boxes is not None:
        raise ValueError(f"{where}: `boxes` must be a file path or a list of [frame, x, y, w, h]")
    suffix = PurePosixPath(path.rstrip("/")).suffix.lower()
    if suffix in VIDEO_EXTS:  # a video file by name; otherwise a folder of frames unless it is a file
        is_dir = False
    elif storage.is_s3(path):
        is_dir = path.endswith("/") or not suffix
    else:
        is_dir = Path(path).is_dir() or (not suffix and not Path(path).exists())
    name = _text(row, "video") or PurePosixPath(path.rstrip("/")).stem
    return VideoItem(path, ident, f"{ident}/{name}", frames_dir=is_dir, boxes=boxes)


def discover(source: str) -> tuple[list[VideoItem], list[dict]]:
    """Items to pack and rejects found while listing (duplicate ids, bad list rows), in a stable order. Raises
    FileNotFoundError for a missing or unreadable input (folder, list, S3 prefix), storage.EnvironmentFault when S3
    fails past its retries."""
    source = str(source)
    if source.lower().endswith(LIST_EXTS):
        try:
            items, rejects = _parse_list(source)
        except storage.EnvironmentFault:  # S3 down or throttled past its retries: not a missing list (exit 1)
            raise
        except Exception as e:  # noqa: BLE001 - missing file, not UTF-8, bad CSV, botocore errors for a list on S3
            raise FileNotFoundError(f"{source}: cannot read the list ({e})") from e
    elif storage.is_s3(source):
        prefix = source.rstrip("/")
        try:
            listed = storage.list_files(prefix)
        except storage.EnvironmentFault:  # S3 down or throttled past its retries: not a missing input (exit 1)
            raise
        except Exception as e:  # noqa: BLE001 - botocore: no such bucket, denied
            raise FileNotFoundError(f"{source}: cannot list the input ({e})") from e
        entries = [(k[len(prefix) + 1:], n) for k, n in listed]
        items, rejects = _group_tree(entries, prefix)
    else:
        root = Path(source)
        if root.exists() and not root.is_dir():  # one video, notes.txt, a list with another extension
            raise FileNotFoundError(f"{source}: a file, but neither a video list (.csv / .jsonl) nor a folder "
                                    "(INPUT is a folder <identity>/<video file> or a .csv/.jsonl list)")
        if not root.is_dir():
            raise FileNotFoundError(f"{source}: input folder does not exist")
        items, rejects = _group_tree(_scan(root), str(root))
    seen: dict[str, VideoItem] = {}
    unique = []
    for it in items:
        if it.video in seen:
            rejects.append({"input": it.path, "reason": f"{it.path}: duplicate video id {it.video!r} "
                            f"(also {seen[it.video].path}); skipped"})
            continue
        seen[it.video] = it
        unique.append(it)
    return unique, rejects


@contextlib.contextmanager
def local_copy(item: VideoItem) -> Iterator[str]:
    """A local path for the item's video file or frame folder (downloaded to a temp place for s3://)."""
    if not storage.is_s3(item.path):
        yield item.path
        return
    tmp = Path(tempfile.mkdtemp(prefix="aupretrain-in-"))
    try:
        try:
            if item.frames_dir:
                for key, _ in storage.list_files(item.path):
                    if PurePosixPath(key).suffix.lower() in IMAGE_EXTS:
                        storage.get_file(key, tmp / PurePosixPath(key).name)
                local = str(tmp)
            else:
                local = str(tmp / PurePosixPath(item.path).name)
                storage.get_file(item.path, local)
        except storage.EnvironmentFault:  # S3Error: endpoint down, throttled after the retries (names the URL)
            raise
        except Exception as e:  # noqa: BLE001 - botocore errors after boto3's retries: missing, denied
            if storage.is_input_fault(e):  # this object is missing or denied: a reject
                raise VideoError(f"{item.path}: cannot read from S3 ({e})") from e
            raise storage.EnvironmentFault(f"{item.path}: cannot read from S3 ({type(e).__name__}: {e})") from e
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_track(boxes: object, width: int, height: int) -> dict[int, np.ndarray]:
    """Face track {frame: [x1, y1, x2, y2]} in pixels from a track file or inline rows [frame, x, y, w, h].

    Coordinates that are all <= 1.5 are fractions of the frame size (as in VoxCeleb2's tracks). Frame
    numbers of a text track (VoxCeleb style) count from its first row; JSON frames are video frame indices.
    """
    relative = False
    if isinstance(boxes, str):
        text = storage.read_text(boxes)
        if boxes.lower().endswith(".json"):
            rows = json.loads(text)
        else:
            rows, relative, started = [], True, False
            for line in text.splitlines():
                tok = line.split()
                if tok[:1] == ["FRAME"]:
                    started = True
                elif started and len(tok) >= 5:
                    rows.append([float(v) for v in tok[:5]])
    else:
        rows = list(boxes)
    if not rows:
        raise ValueError(f"{boxes if isinstance(boxes, str) else 'inline boxes'}: empty face track")
    a = np.asarray(rows, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 5:
        raise ValueError("face track rows must be [frame, x, y, w, h]")
    if relative:
        a[:, 0] -= a[0, 0]
    if np.all(a[:, 1:5] <= 1.5):
        a[:, [1, 3]] *= width
        a[:, [2, 4]] *= height
    return {int(f): np.array([x, y, x + w, y + h]) for f, x, y, w, h in a[:, :5]}
