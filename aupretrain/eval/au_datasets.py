"""BP4D, DISFA and GFT as LabelledFrames, read from a folder in the layout the dataset owners distribute.

Layouts (details and sources: docs/evaluation.md):

    BP4D   <root>/Sequences/<subject>/<task>/<frame>.jpg          e.g. Sequences/F001/T1/0001.jpg
           <root>/AUCoding/AU_OCC/<subject>_<task>.csv             first column the frame number, then one
                                                                   column per AU ("1", "2", ... or "AU1"),
                                                                   values 0 / 1, 9 = not coded
    DISFA  <root>/Videos_LeftCamera/LeftVideo<subject>_comp.avi   e.g. LeftVideoSN001_comp.avi
           <root>/ActionUnit_Labels/<subject>/<subject>_au<k>.txt lines "frame,intensity" (0-5), frame 1-based
    GFT    <root>/Videos/<subject>.<ext>                           OUR ASSUMPTION (no public layout found):
           <root>/AUCoding/<subject>.csv                           the BP4D CSV convention, frame 1-based

Label conventions: BP4D / GFT occurrence 1 = present; an evaluated AU coded 9 (unknown) drops the frame
(counted in `info["unknown_label"]`). DISFA: present when intensity >= 2 (the JAA-Net / ME-GraphAU
convention; `eval.au_threshold` of the `eval=disfa` preset, 1 the other convention in use). AU sets: the 12 BP4D AUs, 8 DISFA AUs and 10 GFT AUs of the literature (AUS below).

Faces are detected, tracked and aligned with the packer's code (`aligned.py`) and cached; frames without a
face are dropped and counted (`info["no_face"]`).
"""
from __future__ import annotations

import csv
import glob
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..pack.clips import PackSettings
from ..pack.inputs import VIDEO_EXTS
from ..pack.video import VideoError, probe_video
from ..errors import UsageError
from .aligned import Source, aligned_crops
from .datasets import LabelledFrames

log = logging.getLogger(__name__)

AUS = {  # the AUs the literature evaluates (JAA-Net, ECCV 2018; ME-GraphAU, IJCAI 2022; GFT: Girard et al., FG 2017)
    "bp4d": [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24],
    "disfa": [1, 2, 4, 6, 9, 12, 25, 26],
    "gft": [1, 2, 4, 6, 10, 12, 14, 15, 23, 24],
}
UNKNOWN = 9  # BP4D / GFT occurrence code of a frame the coders could not code
DISFA_PRESENT = 2  # DISFA: an AU is present at intensity >= 2 (JAA-Net / ME-GraphAU)


@dataclass
class Sequence:
    """One labelled sequence of a subject in BP4D / DISFA / GFT: its source (video or frame folder), labelled frame
    numbers [F], occurrence [F, A] (0, 1, or UNKNOWN = 9 where not coded) and intensity [F, A] (NaN where the dataset
    codes occurrence only)."""
    subject: str
    source: Source
    frames: np.ndarray  # [F] int: labelled frame numbers (in the source's numbering)
    labels: np.ndarray  # [F, A] int: 0 / 1, UNKNOWN (9) where not coded
    intensity: np.ndarray  # [F, A] float; NaN where the dataset has occurrence only
    first: int = 0  # the label file's number of the video's first frame (1: 1-based); 0 for frame folders


def _need(path: Path, what: str, folder: bool = False, why: str = "") -> Path:
    """`path` if it is a folder (`folder`) or a file; else UsageError "<path>: missing <what> <folder|file>[ for
    <why>]", with a hint when it exists as the other kind or a sibling's name differs only in case."""
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        hint = ""
        if path.exists():
            hint = " (it is a file)" if folder else " (it is a folder)"
        else:  # the first missing part of the path, and a sibling spelled in another case
            gone = path
            while not gone.parent.exists() and gone.parent != gone:
                gone = gone.parent
            near = [p for p in gone.parent.iterdir() if p.name.lower() == gone.name.lower()] if gone.parent.is_dir() else []
            if near:
                hint = f" (there is {near[0]}: names are case-sensitive; rename it {gone.name!r})"
        raise UsageError(f"{path}: missing {what} {kind}{f' for {why}' if why else ''}{hint}")
    return path


def _open_video(path: Path) -> Path:
    """Open a video (nothing decoded) so that an empty, damaged or audio-only file is refused before any sequence
    is aligned, not hours into the run. Raises UsageError naming the file."""
    try:
        probe_video(path)
    except VideoError as e:
        reason = str(e).removeprefix(f"{path}: ")
        raise UsageError(f"{path}: unreadable video ({reason})") from None
    return path


def _whole(v: str) -> int:
    """A label file's cell as a whole number ("1", "1.0", " 9 "); ValueError for "0.6", "x" or ""."""
    f = float(v)
    if not f.is_integer():
        raise ValueError(f"{v.strip()!r} is not a whole number")
    return int(f)


def read_occurrence_csv(path: Path, aus: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """BP4D `AU_OCC` CSV (GFT: the same convention) -> frame numbers [F] int and occurrence [F, A] int
    (0, 1 or 9) of `aus`, in file order. The first column is the frame number whatever its header ("0",
    "Frame"); AU columns are named "<k>" or "AU<k>". Raises UsageError naming the file for a missing AU
    column, a non-integer value or an empty file."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Excel) is dropped
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise UsageError(f"{path}: AU occurrence file has no frames (expected a header 'Frame,1,2,4,...' and rows)")
    header = [h.strip() for h in rows[0]]
    col = {}
    for j, h in enumerate(header[1:], 1):
        m = re.fullmatch(r"(?:AU)?0*(\d+)", h, re.IGNORECASE)
        if m:
            col[int(m.group(1))] = j
    missing = [a for a in aus if a not in col]
    if missing:
        raise UsageError(f"{path}: no column for AU {', '.join(map(str, missing))} (header: {','.join(header[:8])}...)")
    data, need, seen = [], max(col[a] for a in aus), {}
    for line, r in enumerate(rows[1:], 2):  # line numbers as an editor shows them (the header is line 1)
        if not any(x.strip() for x in r):
            continue
        if len(r) <= need:
            raise UsageError(f"{path}, line {line}: {len(r)} values, the header has {len(header)} (a row cut short)")
        try:
            data.append([_whole(r[0])] + [_whole(r[col[a]]) for a in aus])
        except ValueError as e:
            raise UsageError(f"{path}, line {line}: unreadable AU occurrence row ({e})") from e
        if data[-1][0] in seen:  # which row holds the frame's labels cannot be guessed
            raise UsageError(f"{path}, line {line}: frame {data[-1][0]} again (first on line {seen[data[-1][0]]}); "
                             "each frame needs exactly one row")
        seen[data[-1][0]] = line
        if bad := [(a, v) for a, v in zip(aus, data[-1][1:]) if v not in (0, 1, 9)]:
            raise UsageError(f"{path}, line {line}: AU{bad[0][0]} is {bad[0][1]}; occurrence values are 0 (absent), "
                             "1 (present) or 9 (not coded)")
    if not data:
        raise UsageError(f"{path}: AU occurrence file has no frames (only a header)")
    data = np.array(data, dtype=np.int64)
    return data[:, 0], data[:, 1:]


def read_intensity_txt(path: Path) -> np.ndarray:
    """A DISFA `<subject>_au<k>.txt` -> [F, 2] float (frame number, intensity 0-5), one line 'frame,intensity'
    each; blank lines are skipped. Raises UsageError naming the file and line of a line that is not two whole
    numbers, of a frame listed twice, and for a file with no frames."""
    rows, seen = [], {}
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Excel) is dropped
        for line, r in enumerate(csv.reader(f), 1):
            if not any(x.strip() for x in r):
                continue
            try:
                if len(r) != 2:
                    raise ValueError(f"{len(r)} values")
                rows.append([_whole(r[0]), _whole(r[1])])
            except ValueError as e:
                raise UsageError(f"{path}, line {line}: expected 'frame,intensity' ({e})") from None
            if rows[-1][0] in seen:
                raise UsageError(f"{path}, line {line}: frame {rows[-1][0]} again (first on line {seen[rows[-1][0]]}); "
                                 "each frame needs exactly one line")
            seen[rows[-1][0]] = line
    if not rows:
        raise UsageError(f"{path}: AU label file has no frames (expected lines 'frame,intensity')")
    return np.array(rows, dtype=np.float64)


IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _frame_files(folder: Path) -> list[tuple[int, Path]]:
    """(frame number, file) of the `<number>.jpg|.jpeg|.png` images in `folder`, sorted by number. Two images of
    one number (0001.jpg beside 001.jpg or 1.png) are both left out, with a warning naming them: which one the
    labels were coded on cannot be told (their frames count as `no_image`)."""
    by_number: dict[int, list[Path]] = {}
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_EXTS and p.stem.isdigit():
            by_number.setdefault(int(p.stem), []).append(p)
    clash = {n: sorted(ps) for n, ps in by_number.items() if len(ps) > 1}
    if clash:
        shown = "; ".join(" and ".join(p.name for p in ps) for ps in list(clash.values())[:3])
        log.warning("%s: %d frame number(s) have more than one image (%s%s): those frames are left out",
                    folder, len(clash), shown, " ..." if len(clash) > 3 else "")
    return sorted((n, ps[0]) for n, ps in by_number.items() if len(ps) == 1)


def _no_frames(folder: Path) -> UsageError:
    """The error for a frame folder without `<number>.jpg|.png` images, pointing at a subfolder that has them."""
    sub = next((d for d in sorted(folder.iterdir()) if d.is_dir() and _frame_files(d)), None)
    hint = f" (its subfolder {sub.name}/ has them: move them up one level)" if sub else ""
    return UsageError(f"{folder}: no frames <number>.jpg / .png{hint}")


def bp4d_sequences(root: Path) -> list[Sequence]:
    """Every `<subject>_<task>.csv` of `AUCoding/AU_OCC` with its frame folder `Sequences/<subject>/<task>`.
    Raises UsageError naming the folder or file that is missing or empty."""
    seq_root = _need(root / "Sequences", "BP4D frame", folder=True)
    occ = _need(root / "AUCoding" / "AU_OCC", "BP4D AU occurrence (AUCoding/AU_OCC)", folder=True)
    csvs = sorted(occ.glob("*.csv"))
    if not csvs:
        raise UsageError(f"{occ}: no <subject>_<task>.csv label files")
    out = []
    for c in csvs:
        subject, _, task = c.stem.partition("_")
        if not task:
            raise UsageError(f"{c}: label file name is not <subject>_<task>.csv")
        folder = _need(seq_root / subject / task, "frame", folder=True, why=c.name)
        files = _frame_files(folder)
        if not files:
            raise _no_frames(folder)
        frames, labels = read_occurrence_csv(c, AUS["bp4d"])
        out.append(Sequence(subject, Source(f"{subject}_{task}", folder, files), frames, labels,
                            np.full(labels.shape, np.nan, np.float32)))
    labelled = {(c.stem.partition("_")[0], c.stem.partition("_")[2]) for c in csvs}
    _warn_unlabelled([d for d in sorted(seq_root.glob("*/*")) if d.is_dir()
                      and (d.parent.name, d.name) not in labelled], occ, "<subject>_<task>.csv")
    return out


def _warn_unlabelled(sources: list[Path], labels: Path, name: str) -> None:
    """Report, once, the frame folders or videos that have no label file in `labels` (`name`: the file each would
    need): they are not evaluated, and a user who copied the labels partly must see which and how many."""
    if sources:
        shown = ", ".join(str(p) for p in sources[:5]) + (f" and {len(sources) - 5} more" if len(sources) > 5 else "")
        log.warning("%d frame folder(s) / video(s) have no label file in %s (%s each) and are not evaluated: %s",
                    len(sources), labels, name, shown)


def disfa_sequences(root: Path, threshold: float = DISFA_PRESENT) -> list[Sequence]:
    """Every `ActionUnit_Labels/<subject>/` with its video `Videos_LeftCamera/LeftVideo<subject>_comp.avi`; an
    AU is present at intensity >= `threshold`. Label frame numbers are 1-based (the first line is frame 1) and refer
    to the video's decode order; a file starting at frame 0 is read as 0-based. A folder holding no
    `<name>_au<k>.txt` (`__MACOSX`, a notes folder) is passed over with a warning. Raises UsageError naming a
    missing or unreadable video or AU label file."""
    lab_root = _need(root / "ActionUnit_Labels", "DISFA label (ActionUnit_Labels)", folder=True)
    vid_root = _need(root / "Videos_LeftCamera", "DISFA video (Videos_LeftCamera)", folder=True)
    folders = sorted(p for p in lab_root.iterdir() if p.is_dir())
    subjects = [p.name for p in folders if any(p.glob(f"{glob.escape(p.name)}_au*.txt"))]
    if other := [p.name for p in folders if p.name not in subjects]:
        log.warning("%s: %d folder(s) hold no <subject>_au<k>.txt label files and are passed over: %s", lab_root,
                    len(other), ", ".join(other[:5]) + (" ..." if len(other) > 5 else ""))
    if not subjects:
        raise UsageError(f"{lab_root}: no <subject> folders with label files (e.g. SN001/SN001_au1.txt)")
    out = []
    for subj in subjects:
        video = _need(vid_root / f"LeftVideo{subj}_comp.avi", "video", why=f"subject {subj}")
        cols, frames = [], None
        for a in AUS["disfa"]:
            p = _need(lab_root / subj / f"{subj}_au{a}.txt", f"AU{a} label")
            rows = read_intensity_txt(p)
            f = rows[:, 0].astype(np.int64)
            if frames is not None and not np.array_equal(f[:len(frames)], frames[:len(f)]):
                raise UsageError(f"{p}: frame numbers differ from {subj}_au{AUS['disfa'][0]}.txt")
            n = len(f) if frames is None else min(len(f), len(frames))
            if frames is not None and n < max(len(f), len(frames)):
                log.warning("%s: %d frames, other AUs of %s have %d; using %d", p, len(f), subj, len(frames), n)
            frames = f[:n]
            cols = [c[:n] for c in cols] + [rows[:n, 1].astype(np.float32)]
        inten = np.stack(cols, 1)
        first = 1 if frames.min() >= 1 else 0
        out.append(Sequence(subj, Source(subj, video), frames - first, (inten >= threshold).astype(np.int64),
                            inten, first))
    _warn_unlabelled([v for v in sorted(vid_root.glob("LeftVideo*_comp.avi"))
                      if v.name[len("LeftVideo"):-len("_comp.avi")] not in subjects], lab_root, "<subject>/ folder")
    return out


def gft_sequences(root: Path) -> list[Sequence]:
    """OUR ASSUMED layout (see the module docstring): every `AUCoding/<subject>.csv` with one video
    `Videos/<subject>.<ext>`; frame numbers 1-based in the video's decode order."""
    vid_root = _need(root / "Videos", "GFT video (Videos)", folder=True)
    lab_root = _need(root / "AUCoding", "GFT AU occurrence (AUCoding)", folder=True)
    csvs = sorted(lab_root.glob("*.csv"))
    if not csvs:
        raise UsageError(f"{lab_root}: no <subject>.csv label files")
    out = []
    for c in csvs:
        videos = sorted(p for p in vid_root.glob(f"{glob.escape(c.stem)}.*") if p.suffix.lower() in VIDEO_EXTS)
        if not videos:
            raise UsageError(f"{vid_root}/{c.stem}.mp4: missing video for {c.name}")
        if len(videos) > 1:  # which one the labels were coded on cannot be guessed
            raise UsageError(f"{c}: {len(videos)} videos for subject {c.stem} ({', '.join(v.name for v in videos)}); "
                             "keep the one the labels were coded on in Videos/")
        frames, labels = read_occurrence_csv(c, AUS["gft"])
        first = 1 if frames.min() >= 1 else 0
        out.append(Sequence(c.stem, Source(c.stem, sorted(videos)[0]), frames - first, labels,
                            np.full(labels.shape, np.nan, np.float32), first))
    stems = {c.stem for c in csvs}
    _warn_unlabelled([v for v in sorted(vid_root.iterdir()) if v.suffix.lower() in VIDEO_EXTS and v.stem not in stems],
                     lab_root, "<subject>.csv")
    return out


READERS = {"bp4d": bp4d_sequences, "disfa": disfa_sequences, "gft": gft_sequences}


def load_au_dataset(name: str, root: str | Path, s: PackSettings, cache: str | Path | None = None,
                    frame_stride: int = 1, subjects: list[str] | None = None,
                    au_threshold: float | None = None) -> LabelledFrames:
    """BP4D / DISFA / GFT at `root` (the owners' layout) -> LabelledFrames of aligned face crops.

    frames [N, S, S, 3] uint8 (S = s.size), labels [N, A] {0, 1}, intensity [N, A] (DISFA; NaN otherwise),
    identity [N] (index into identity_names = subjects), video [N] (index into video_names = sequences),
    frame_index [N] (the label file's frame number). Every `frame_stride`-th frame of a sequence is read.
    Dropped frames are counted in `info`: no_face, unknown_label (an evaluated AU coded 9), unlabelled (a
    frame read that the label file does not cover), no_image (a labelled frame missing from the source),
    unreadable. `subjects` keeps only those subjects. `au_threshold`: DISFA's intensity at which an AU is present
    (None: 2, the JAA-Net / ME-GraphAU convention); BP4D and GFT code occurrence, so a value given for them is
    not used (a warning says so).

    Raises UsageError naming the file or folder for a missing or malformed input (see the readers), a subject of
    `subjects` the dataset does not have, a DISFA threshold outside 1..5, and when no frame is left.
    """
    if name not in READERS:
        raise UsageError(f"eval.dataset={name!r}: must be one of synthetic, {', '.join(READERS)}")
    if frame_stride < 1:
        raise UsageError(f"eval.frame_stride={frame_stride}: must be >= 1")
    root = _need(Path(root).expanduser(), f"{name.upper()} root (eval.root)", folder=True)
    if name == "disfa":
        t = DISFA_PRESENT if au_threshold is None else float(au_threshold)
        if not 1 <= t <= 5:
            raise UsageError(f"eval.au_threshold={au_threshold}: DISFA codes intensity 0-5, an AU present at >= the "
                             "threshold; use 2 (the eval=disfa preset, JAA-Net / ME-GraphAU) or 1")
        seqs = disfa_sequences(root, t)
    else:
        if au_threshold is not None:
            log.warning("eval.au_threshold=%s is not used: %s codes AU occurrence (0 / 1 / 9), not intensity",
                        au_threshold, name.upper())
        seqs = READERS[name](root)
    if subjects:
        have = {q.subject for q in seqs}
        if unknown := [x for x in subjects if x not in have]:
            raise UsageError(f"eval.subjects: {', '.join(map(str, unknown))} not in {root} (its subjects: "
                             f"{', '.join(sorted(have)[:12])}{' ...' if len(have) > 12 else ''})")
        seqs = [q for q in seqs if q.subject in set(subjects)]
    for q in seqs:  # every video of the set opens, before the first is aligned (subjects left out are not read)
        if q.source.frames is None:
            _open_video(q.source.path)
    info = {"sequences": len(seqs), "frames_read": 0, "no_face": 0, "unknown_label": 0, "unlabelled": 0,
            "no_image": 0, "unreadable": 0, "cache_hits": 0}
    parts = {k: [] for k in ("frames", "labels", "inten", "ident", "video", "index")}
    subj_names: list[str] = []
    for vi, q in enumerate(seqs):
        c = aligned_crops(q.source, s, None if cache is None else Path(cache).expanduser(), name, frame_stride)
        info["cache_hits"] += int(c.cached)
        info["frames_read"] += c.seen
        info["unreadable"] += c.unreadable
        info["no_face"] += c.seen - c.unreadable - len(c.index)
        if q.source.frames is None:  # a video: decoded frames vs labelled frames
            last = int(q.frames.max()) + 1
            if c.total != last:
                log.warning("%s: %d frames decoded, %d labelled; using the first %d", q.source.path, c.total, last,
                            min(c.total, last))
        else:
            have = {f for f, _ in q.source.frames}
            missing = int(np.sum(~np.isin(q.frames, list(have))))
            if missing:
                log.warning("%s: %d labelled frames have no image; they are left out", q.source.path, missing)
                info["no_image"] += missing
        row = {int(f): i for i, f in enumerate(q.frames)}
        keep = np.array([int(f) in row for f in c.index], bool)
        info["unlabelled"] += int((~keep).sum())
        rows = np.array([row[int(f)] for f in c.index[keep]], np.int64)
        lab, crops, idx = q.labels[rows], c.crops[keep], c.index[keep]
        known = (lab != UNKNOWN).all(1)
        info["unknown_label"] += int((~known).sum())
        if not known.any():
            why = (f"{len(known)} labelled frames with a face, each with an evaluated AU coded {UNKNOWN} (not coded)"
                   if len(known) else f"no face in the {c.seen - c.unreadable} frames read" if not len(c.index)
                   else f"none of the {len(c.index)} frames with a face is in the label file")
            log.warning("%s: left out: %s", q.source.path, why)
            continue
        if q.subject not in subj_names:
            subj_names.append(q.subject)
        parts["frames"].append(crops[known])
        parts["labels"].append(lab[known].astype(np.float32))
        parts["inten"].append(q.intensity[rows][known])
        parts["ident"].append(np.full(int(known.sum()), subj_names.index(q.subject)))
        parts["video"].append(np.full(int(known.sum()), vi))
        parts["index"].append(idx[known] + q.first)
    if not parts["labels"]:
        raise UsageError(f"{root}: no labelled frame with a face found ({info})")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    log.info("%s: %d frames of %d subjects kept; dropped %s", name, len(cat["labels"]), len(subj_names),
             {k: v for k, v in info.items() if k in ("no_face", "unknown_label", "unlabelled", "no_image", "unreadable")})
    return LabelledFrames(cat["frames"], cat["labels"], cat["inten"], cat["ident"].astype(np.int64),
                          cat["video"].astype(np.int64), [f"AU{a}" for a in AUS[name]], subj_names,
                          frame_index=cat["index"].astype(np.int64),
                          video_names=[q.source.name for q in seqs], dataset=name, info=info)
