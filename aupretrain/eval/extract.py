"""AU codes per frame of a user's own video, with the packer's face detection, tracking and alignment.

Each frame of the input is one row: frame number, timestamp (s), the image file it was read from (frame folders
and still images), whether a face was found, the face box in source pixels (the region the aligned crop covers,
mapped back through the alignment similarity) and the AU code [D] of the encoder. A frame without a face is a row
with empty values, not an error. Faces go through exactly what `aupretrain-pack` does (`pack.*` settings: MTCNN
every `detect_every` frames while a face is tracked and on every frame while none is, tracking between, 5-point
similarity alignment with temporal smoothing at `pack.size`), so they look like pretraining crops. One face per
frame is followed (the packer's main face, `pack.main_face`); where the track comes back after frames without a
face somewhere else in the picture (possibly another person), one warning per input names the frames.
"""
from __future__ import annotations

import csv
import errno
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..pack import alignment, faces
from ..pack.clips import PackSettings, align_center, center_faces, detector, track
from ..errors import UsageError
from ..pack.inputs import IMAGE_EXTS, NOT_VIDEO_EXTS, VIDEO_EXTS, natural_key
from ..pack.video import VideoError, iter_timed_frames

log = logging.getLogger(__name__)

# The image files extract reads (with OpenCV), alone and in folders alike: a folder's other files are left out
# (one line counts them); a single file of another type is tried as a video.


@dataclass
class FrameRow:
    """One frame of an input (`extract`): input path, frame number (a video's 0-based decode index; a numbered frame
    folder's number from the file name), time (s since the first frame), face box, float32 AU code [D] (box and code
    None when the frame has no face) and the image file's name (frame folders, still images; "" for a video)."""
    input: str
    frame: int
    time_s: float
    box: tuple[float, float, float, float] | None  # x1, y1, x2, y2 in source pixels; None: no face
    code: np.ndarray | None  # [D] AU code; None: no face
    file: str = ""  # the image the frame was read from; "" for a video's frames


NUMBERED = re.compile(r"(.*?)(\d+)$")  # a frame's name ends in its number: 00001.jpg, frame_12.png, img-3.jpg


def is_frame_folder(images: list[Path]) -> bool:
    """Whether the image files of one folder are the frames of one video — what `ffmpeg -i v.mp4 %05d.jpg` writes,
    BP4D's frame folders: at least two, every name (less its extension) one shared prefix and a number, one
    extension, and the numbers distinct and a nearly unbroken run (at most a tenth of them missing). Photos (alice.jpg,
    IMG_1234.jpg beside IMG_1301.jpg) are each an input of their own; `--stills` makes every image one."""
    if len(images) < 2:
        return False
    parts = [NUMBERED.fullmatch(f.stem) for f in images]
    if not all(parts) or len({m.group(1) for m in parts}) != 1 or len({f.suffix.lower() for f in images}) != 1:
        return False
    numbers = sorted(int(m.group(2)) for m in parts)
    return len(set(numbers)) == len(numbers) and numbers[-1] - numbers[0] + 1 <= 1.1 * len(numbers) + 1


def numbered_run(images: list[Path]) -> list[Path]:
    """The largest set of `images` with one prefix + number and one extension, if `is_frame_folder` accepts it
    (else [])."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for f in images:
        m = NUMBERED.fullmatch(f.stem)
        if m:
            groups.setdefault((m.group(1), f.suffix.lower()), []).append(f)
    run = max(groups.values(), key=lambda g: (len(g), sorted(map(str, g))), default=[])
    return run if is_frame_folder(run) else []


def frame_split(images: list[Path]) -> tuple[list[Path], list[Path]]:
    """(frames, strays) of the image files of one folder: frames, its `numbered_run`, where the other images
    (strays: a cover.jpg, a thumbs.png) are at most a tenth as many (10 frames per stray); else ([], images) —
    every image a still."""
    frames = numbered_run(images)
    chosen = set(frames)
    strays = [f for f in images if f not in chosen]
    if not frames or len(strays) > len(frames) // 10:
        return [], list(images)
    return frames, strays


def _listed(p: Path) -> list[Path]:
    """The files below folder `p`, hidden files and folders left out."""
    return [f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)]


def list_inputs(path: str | Path, stills: bool = False) -> list[Path]:
    """The inputs under `path`: a video or image file itself; below a folder, every video file, every folder of
    numbered frame images as one video (`frame_split`, frames in natural order, as `aupretrain-pack` reads them;
    unless `stills`) with any stray image beside them on its own (one warning names them), and every other image
    (`IMAGE_EXTS`) on its own — in natural order, hidden files and folders left out; other files are left out with
    one line counting them (video sidecars such as .json / .csv silently).

    Raises:
        FileNotFoundError: `path` does not exist, or holds no video or image file.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    listed = _listed(p)
    files = [f for f in listed if f.suffix.lower() in VIDEO_EXTS + IMAGE_EXTS]
    other = [f for f in listed if f.suffix.lower() not in VIDEO_EXTS + IMAGE_EXTS + NOT_VIDEO_EXTS]
    if other:
        log.info("%s: %d file(s) neither a video (%s) nor an image (%s) left out: %s%s", path, len(other),
                 " ".join(VIDEO_EXTS[:6]) + " …", " ".join(IMAGE_EXTS), ", ".join(str(f.relative_to(p)) for f in other[:5]),
                 " …" if len(other) > 5 else "")
    if not files:
        raise FileNotFoundError(f"{path}: no video ({', '.join(VIDEO_EXTS)}) or image ({', '.join(IMAGE_EXTS)}) files")
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        if f.suffix.lower() in IMAGE_EXTS:
            by_folder.setdefault(f.parent, []).append(f)
    found = [f for f in files if f.suffix.lower() not in IMAGE_EXTS]
    for folder, images in by_folder.items():
        frames, strays = ([], images) if stills else frame_split(images)
        if frames and strays:
            log.warning("%s: %s not numbered like its %d frames (%s … %s): %s an input of its own (frame 0), the "
                        "frames one video (--stills reads every image on its own)", folder,
                        ", ".join(f.name for f in strays), len(frames), min(frames, key=_natural).name,
                        max(frames, key=_natural).name, "it is" if len(strays) == 1 else "each is")
        run = [] if stills or frames else numbered_run(images)
        if len(run) >= 10:  # what looks like a video's frames, read as stills: said, not silent
            log.warning("%s: the numbered images %s … %s look like one video's frames, but %d other image(s) are "
                        "beside them: every image is read on its own (move the others out to read the %d frames "
                        "as one video)", folder, min(run, key=_natural).name, max(run, key=_natural).name,
                        len(images) - len(run), len(run))
        found += ([folder] if frames else []) + strays
    return sorted(found, key=lambda f: (natural_key(str(f)), str(f)))


def _natural(f: Path):
    return natural_key(f.name), f.name


def _frame_files(path: Path) -> list[Path]:
    """The images a folder input is read from, in natural order: its frames (`frame_split`), or every image."""
    images = [f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")]
    frames, _ = frame_split(images)
    return sorted(frames or images, key=_natural)


def input_files(inputs: list[Path]) -> Iterator[Path]:
    """Every file `inputs` (from `list_inputs`) are read from: the files themselves, a frame folder's frames."""
    for p in inputs:
        yield from _frame_files(p) if p.is_dir() else [p]


ENVIRONMENT = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM}  # not the path's fault


def check_out(out: str | Path, inputs: list[Path]) -> None:
    """Before any input is read: make sure the CSV can be written at `out` without touching an input — `out` is
    not a file of `inputs` (`input_files`, same file by device and inode), not a folder, not below a file; its
    folder is created if missing and a file can be created in it (`<out>.partial` is made and removed).

    Raises:
        UsageError: one of those (a path to change: also a folder without write permission or on a read-only disk).
        OSError: the environment failed (a full disk, an I/O error).
    """
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; give the CSV file to write, e.g. {out / 'codes.csv'}")
    if out.exists():
        st = out.stat()
        for f in input_files(inputs):
            try:
                fs = f.stat()
            except OSError:
                continue
            if (fs.st_dev, fs.st_ino) == (st.st_dev, st.st_ino):
                named = "" if f.resolve() == out.resolve() else f" ({f})"
                raise UsageError(f"{out}: is an input{named} and would be overwritten; give another CSV path as OUT")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{out}: {parent} is a file, not a folder; give a CSV path in a folder")
            break
    partial = partial_path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "w"):
            pass
        partial.unlink()
    except OSError as e:
        if e.errno in ENVIRONMENT:
            raise
        raise UsageError(f"cannot write {out}: {e.strerror or e} ({e.filename or out.parent}); choose a folder you "
                         "can write") from None


def partial_path(out: Path) -> Path:
    """Where `write_csv` writes before renaming to `out`: `<out>.partial`."""
    return out.with_name(out.name + ".partial")


def _frames(path: Path, frames_fps: float) -> Iterator[tuple[int, float, str, np.ndarray]]:
    """(frame number, seconds, image file name, RGB) of a video file (decode index, its time stamps, ""), a frame
    folder (`_folder_frames`) or one image (0, 0.0, its name)."""
    if path.is_dir():
        yield from _folder_frames(path, frames_fps)
        return
    if path.suffix.lower() in IMAGE_EXTS:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise VideoError(f"{path}: cannot decode image")
        yield 0, 0.0, path.name, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return
    yield from ((i, t, "", rgb) for i, t, rgb in iter_timed_frames(path))


def _folder_frames(path: Path, frames_fps: float) -> Iterator[tuple[int, float, str, np.ndarray]]:
    """(frame number, seconds, file name, RGB) of the images of a folder in natural order. A numbered frame folder
    (`frame_split`: its numbered frames only) keeps the numbers of its file names — missing frames leave gaps, as in BP4D's numbering —
    and its times are (number − first number) / `frames_fps`; any other folder numbers its images 0, 1, … An image
    that cannot be decoded gives no frame (its number stays unused; one warning names them). Raises VideoError when
    the folder has no image, or none can be decoded."""
    import cv2

    files = _frame_files(path)
    if not files:
        raise VideoError(f"{path}: no frame images ({', '.join(IMAGE_EXTS)})")
    numbers = ([int(NUMBERED.fullmatch(f.stem).group(2)) for f in files] if is_frame_folder(files)
               else list(range(len(files))))
    bad = []
    for n, f in zip(numbers, files):
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:  # left out: a row must not show another frame's measurement
            bad.append(f.name)
            continue
        yield n, (n - numbers[0]) / frames_fps, f.name, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if len(bad) == len(files):
        raise VideoError(f"{path}: no frame image can be decoded "
                         f"({', '.join(bad[:3])}{' …' if len(bad) > 3 else ''})")
    if bad:
        log.warning("%s: %d of %d frame images cannot be decoded, each left out (%s%s)", path, len(bad), len(files),
                    ", ".join(bad[:5]), " …" if len(bad) > 5 else "")


def _crop_box(landmarks: np.ndarray, template: np.ndarray, size: int) -> tuple[float, float, float, float]:
    """The source-pixel box of the S x S aligned crop: its corners mapped back through the similarity."""
    a, b, tx, ty = alignment.similarity(landmarks, np.asarray(template, np.float64) * size)
    m = np.array([[a, -b, tx], [b, a, ty], [0, 0, 1]])
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ np.linalg.inv(m).T
    return (float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()),
            float(corners[:, 1].max()))


def _elsewhere(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Whether two faces (centre x, centre y, face size in pixels) are at different places: centres a face size or
    more apart, or sizes a factor 1.5 or more apart (the tracker links faces less than half a face apart)."""
    dist = math.hypot(a[0] - b[0], a[1] - b[1])
    return dist >= (a[2] + b[2]) / 2 or max(a[2], b[2]) >= 1.5 * max(min(a[2], b[2]), 1e-6)


def extract(path: Path, encode, s: PackSettings, batch: int = 64) -> Iterator[FrameRow]:
    """Rows of one input, in frame order. `encode(uint8 [N, S, S, 3]) -> [N, D]` (e.g. AUEncoder.encode); at most
    `batch` aligned crops are held before each call. One face per frame is followed (the packer's main face); when
    the track starts again after frames without a face somewhere else in the picture (`_elsewhere` the box it last
    had: maybe another person), one warning after the input's last row names those frames.

    Raises:
        ValueError: `batch` < 1.
        VideoError: the input cannot be decoded, or holds no decodable frame (raised after its last row, so the
            caller skips and reports it as `aupretrain-pack` does).
    """
    if batch < 1:
        raise ValueError(f"batch={batch}: crops per encoder call must be at least 1")
    times: dict[int, float] = {}
    order: list[int] = []  # frame numbers in the order read (increasing)
    names: dict[int, str] = {}
    lms: dict[int, np.ndarray] = {}
    shape: list[int] = [0, 0]

    def timed():
        for i, t, name, rgb in _frames(path, s.frames_fps):
            times[i], names[i], shape[:] = t, name, rgb.shape[:2]
            order.append(i)
            yield i, rgb

    def tapped(fs: Iterable[faces.FaceFrame]):
        for f in fs:
            if f.landmarks is not None:
                lms[f.index] = f.landmarks
            yield f

    if s.align == "center":
        aligned = align_center(center_faces(timed()), s.size)
    else:
        aligned = alignment.align(tapped(track(timed(), detector(s), s)), np.asarray(s.template), s.size, s.smooth_sigma)
    done = 0  # the frames read (`order`) before this position have been emitted

    def faceless(upto: float) -> Iterator[FrameRow]:
        """Rows without a face for the frames read before number `upto` not yet emitted (in the order read: a
        folder's numbers may start anywhere, e.g. at 1700000000)."""
        nonlocal done
        while done < len(order) and order[done] < upto:
            i = order[done]
            yield FrameRow(str(path), i, times[i], None, None, names[i])
            done += 1

    last: list = [None, None]  # segment and (centre x, y, size) of the previous face row
    jumps: list[int] = []  # frames where the track came back elsewhere

    def flush(pending: list[alignment.Aligned]) -> Iterator[FrameRow]:
        nonlocal done
        codes = np.asarray(encode(torch.from_numpy(np.stack([a.crop for a in pending]))), dtype=np.float32)
        for a, c in zip(pending, codes):
            yield from faceless(a.index)
            if s.align == "center":  # the centre square
                (h, w), side = shape, min(shape)
                box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            else:
                box = _crop_box(lms.pop(a.index), s.template, s.size)
            here = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2, a.face_px)
            if last[0] is not None and a.segment != last[0] and _elsewhere(here, last[1]):
                jumps.append(a.index)
            last[:] = a.segment, here
            yield FrameRow(str(path), a.index, times[a.index], box, c, names[a.index])
            done += 1  # a.index is the next frame read

    pending: list[alignment.Aligned] = []
    for a in aligned:
        pending.append(a)
        if len(pending) == batch:
            yield from flush(pending)
            pending = []
    if pending:
        yield from flush(pending)
    yield from faceless(float("inf"))
    if jumps:
        log.warning("%s: the face followed comes back elsewhere in the picture at frame %s (after frames without a "
                    "face): from there the rows may be another person's (extract follows one face: pack.main_face)",
                    path, ", ".join(map(str, jumps[:10])) + (f" … ({len(jumps)} times)" if len(jumps) > 10 else ""))
    if not times:
        raise VideoError(f"{path}: no decodable frames")


def write_csv(rows: Iterable[FrameRow], out: str | Path, columns: int | list[str]) -> dict[str, int]:
    """Write rows as CSV (`input, frame, time_s, file, face, x1, y1, x2, y2`, then one column per value of a row's
    code: `columns` names them, or an int D names them a0 … a<D-1>; a NaN value — an AU its head was not trained
    for — is written empty, as are all of a row without a face); returns counts ({"frames", "frames_with_face"}).
    The rows go to `<out>.partial` (`partial_path`), renamed to `out` once all are written: an interrupted or
    failed run never leaves a CSV that looks complete nor a partial file, and a file already at `out` stays as it
    was. When no row came (frames 0) nothing is written: `out` is left as it was.

    Raises:
        OSError: `out` cannot be written (its folder is missing, a directory of that name, a full disk ...).
    """
    if isinstance(columns, int):
        columns = [f"a{k}" for k in range(columns)]
    out = Path(out)
    partial = partial_path(out)
    try:
        counts = _write_rows(rows, partial, columns)
        if counts["frames"]:
            partial.replace(out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.unlink(missing_ok=True)  # no row: nothing replaces `out`
    return counts


def _write_rows(rows: Iterable[FrameRow], path: Path, columns: list[str]) -> dict[str, int]:
    """`write_csv`'s body: the header and every row to `path`; returns the counts."""
    n = faces_found = 0
    dim = len(columns)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["input", "frame", "time_s", "file", "face", "x1", "y1", "x2", "y2", *columns])
        for r in rows:
            n += 1
            if r.code is None:
                w.writerow([r.input, r.frame, f"{r.time_s:.4f}", r.file, 0, *[""] * (4 + dim)])
            else:
                faces_found += 1
                w.writerow([r.input, r.frame, f"{r.time_s:.4f}", r.file, 1, *[f"{v:.1f}" for v in r.box],
                            *["" if math.isnan(v) else f"{v:.6g}" for v in r.code]])
    return {"frames": n, "frames_with_face": faces_found}
