"""videos -> face clips -> shuffled WebDataset shards + DALI indexes + manifest, streaming and resumable.

1. `inputs.discover` lists the inputs (folder tree, CSV/JSONL list, local or s3://); the list is put in a
   seeded random order (mixing identities).
2. Workers (`clips.process_video`, one process per core, a bounded number of videos in flight) turn each
   video into a *spill file* of JPEG clips in the work folder. The main process takes the results in the
   shuffled order and appends one line per video (clip count or reject reason) to `journal.jsonl`.
3. Clips enter a seeded shuffle buffer of `shuffle_buffer` references (not pixels); when it is full a
   random one leaves into the current shard. Every `samples_per_shard` clips are read back from their
   spill files and written as one shard (temp name + rename locally, multipart upload on S3), then
   journalled; spill files whose clips are all in journalled shards are deleted. At the end the buffer is
   drained in random order, `manifest.json` is written last and the work folder is removed. An earlier
   packing's manifest stays until the first shard is written over: a run that stops before (nothing could be
   packed, a bad setting, Ctrl-C early) leaves the earlier dataset whole and readable.

Memory and scratch disk are bounded by the buffer and the videos in flight, not by the corpus. The output
is a function of (inputs, settings, seed) only — not of the worker count or of interruptions: a re-run after
a crash or Ctrl-C replays the journal (no pixels are touched for shards already written), reprocesses only
videos without a journal line and writes only the missing shards, byte-identical to an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from .. import locks
from ..data import shards, storage

from . import spill
from .clips import PackSettings, VideoResult, detector, process_video
from .inputs import VideoItem, discover
from .parallel import parallel_map

log = logging.getLogger(__name__)
__all__ = ["PackSettings", "pack", "work_folder"]
LOCK = ".lock"  # in the work folder: held by the packer writing it
_SHARD_FILE = re.compile(r"\.?shard-\d{6}\.(tar|idx)(\.tmp)?$")  # final names and a crashed run's temp names


def work_folder(output: str, settings: PackSettings) -> Path:
    """Where spill files and the journal live: <output>/.pack-work locally; for s3:// outputs a folder
    under work_dir (default ~/.cache/aupretrain/pack) named after the output URL."""
    if settings.work_dir:
        base = Path(settings.work_dir)
    elif not storage.is_s3(output):
        return Path(output) / ".pack-work"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aupretrain" / "pack"
    return base / hashlib.sha1(str(output).encode()).hexdigest()[:16]


class Journal:
    """Append-only record of finished videos and shards; a torn last line (crash) is ignored."""

    def __init__(self, folder: Path, fingerprint: str):
        self.path = folder / "journal.jsonl"
        self.videos: dict[str, dict] = {}
        self.shards: dict[int, shards.ShardInfo] = {}
        self.resumed = False
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # a line torn by a crash: cut it off before appending
                text = text[: text.rfind("\n") + 1]
                self.path.write_text(text)
            lines = text.splitlines()
            head = _json(lines[0]) if lines else None
            if head and head.get("fingerprint") == fingerprint:
                self.resumed = True
                for line in lines[1:]:
                    rec = _json(line)
                    if rec and "video" in rec:
                        self.videos[rec["video"]] = _compact(rec)
                    elif rec and "shard" in rec:
                        self.shards[rec["shard"]] = shards.ShardInfo(**rec["info"])
            else:
                log.warning("%s: left by a run with other inputs or settings; starting over", folder)
        if not self.resumed:  # everything of the earlier run goes but the lock file this run holds
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.iterdir():
                if old.name == LOCK:
                    continue
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
            self.path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
        self.f = open(self.path, "a")

    def add(self, rec: dict, sync: bool = False) -> None:
        """Append `rec` as one JSON line (flushed; fsynced with `sync`); a video record ({"video", "clips", "frames",
        "sampled", "face_frames", "dropped", "reason"}) is also kept in `videos`."""
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if sync:
            os.fsync(self.f.fileno())
        if "video" in rec:
            self.videos[rec["video"]] = _compact(rec)

    def close(self) -> None:
        """Close the journal file."""
        self.f.close()


def _compact(rec: dict) -> tuple:
    """(clips, frames, sampled, face_frames, dropped small, dropped blurry, reason): ~100 bytes a video."""
    return (rec["clips"], rec["frames"], rec["sampled"], rec["face_frames"], rec["dropped"]["small"],
            rec["dropped"]["blurry"], rec["reason"])


def _json(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _work(args) -> VideoResult:
    return process_video(*args)


def _worker_died(args, error: BaseException) -> VideoResult:
    """The input that killed its worker process on its own (out of memory, a crash in FFmpeg or OpenCV)."""
    item, _, spill_path = args
    Path(spill_path).unlink(missing_ok=True)
    res = VideoResult(item.video)
    res.reason = f"{item.path}: the worker process died on this input ({error}); out of memory, or a crash in a native decoder"
    return res


class Assembler:
    """Seeded shuffle buffer of clip references -> shards of samples_per_shard, written in order."""

    def __init__(self, output: str, s: PackSettings, journal: Journal, work: Path, items: dict[str, VideoItem]):
        self.output, self.s, self.journal, self.work, self.items = output, s, journal, work, items
        self.rng = random.Random(f"shuffle-{s.seed}")
        self.buf: list[tuple[str, int]] = []
        self.cur: list[tuple[str, int]] = []
        self.remaining: dict[str, int] = {}
        self.infos: list[shards.ShardInfo] = []
        self.scratch = Path(tempfile.mkdtemp(prefix="shard-", dir=work)) if storage.is_s3(output) else Path(output)
        self.replacing = True  # an earlier packing's manifest.json may still stand: removed before the first write

    def spill_path(self, video: str) -> Path:
        """The spill file of `video` in the work folder: `spill/<sha1 of the video id, 20 hex>.clips`."""
        return self.work / "spill" / f"{hashlib.sha1(video.encode()).hexdigest()[:20]}.clips"

    def add(self, video: str, n: int) -> None:
        """Put the `n` clips of `video` into the shuffle buffer; while it holds more than `shuffle_buffer`
        references, a random one leaves into the current shard, and a full shard is written (or taken from the journal
        when already published)."""
        self.remaining[video] = n
        for c in range(n):
            self.buf.append((video, c))
            if len(self.buf) > self.s.shuffle_buffer:
                j = self.rng.randrange(len(self.buf))
                self.buf[j], self.buf[-1] = self.buf[-1], self.buf[j]
                self._emit(self.buf.pop())

    def finish(self) -> None:
        """Drain the shuffle buffer in random order into shards and write the last, partial shard."""
        self.rng.shuffle(self.buf)
        for ref in self.buf:
            self._emit(ref)
        self.buf = []
        if self.cur:
            self._write()

    def _emit(self, ref: tuple[str, int]) -> None:
        self.cur.append(ref)
        if len(self.cur) == self.s.samples_per_shard:
            self._write()

    def _published(self, info: shards.ShardInfo) -> bool:
        try:
            tar, idx = storage.join(self.output, info.name), storage.join(self.output, info.index)
            return storage.size(tar) == info.bytes and storage.exists(idx)
        except storage.EnvironmentFault:  # S3 down: stop (a rerun resumes), do not rewrite what may be there
            raise
        except Exception:  # noqa: BLE001 - anything missing or unreadable is rewritten
            return False

    def _write(self) -> None:
        n = len(self.infos)
        info = self.journal.shards.get(n)
        if info is None or not self._published(info):
            samples = []
            for video, c in self.cur:
                path = self.spill_path(video)
                if not path.exists():  # never expected; rebuild it (deterministic) rather than fail
                    log.warning("spill file of %s missing; processing the video again", video)
                    again = process_video(self.items[video], self.s, str(path))
                    if again.reason:  # it packed before, so this is the environment (e.g. S3 gone), not the input
                        raise storage.EnvironmentFault(f"{video}: could not be processed again ({again.reason})")
                samples.append(spill.read_clip(path, c))
            if self.replacing:  # until now the earlier dataset stood whole; from here its shards change
                self.replacing = False
                if storage.exists(storage.join(self.output, shards.MANIFEST)):
                    storage.delete(storage.join(self.output, shards.MANIFEST))
            info = shards.write_shard(samples, self.output, n, self.scratch)
            self.journal.add({"shard": n, "info": info.__dict__}, sync=True)
        self.infos.append(info)
        for video, _ in self.cur:
            self.remaining[video] -= 1
            if self.remaining[video] == 0:
                self.spill_path(video).unlink(missing_ok=True)
                del self.remaining[video]
        self.cur = []


def fingerprint(source: str, items: list[VideoItem], s: PackSettings) -> str:
    """Hex sha256 of the input, the byte-deciding settings (`PackSettings.content`) and each item (video id,
    path, size, face track): a journal with another fingerprint is not resumed."""
    h = hashlib.sha256(json.dumps({"input": str(source), "settings": s.content()}, sort_keys=True).encode())
    for it in items:
        h.update(json.dumps([it.video, it.path, it.nbytes, str(it.boxes)]).encode())
    return h.hexdigest()


def pack(source: str, output: str, s: PackSettings) -> shards.Manifest:
    """Pack the videos under `source` (folder tree or CSV/JSONL list, local or s3://) into shards + DALI indexes +
    `manifest.json` at `output` (the steps of the module docstring); resumes from the work folder's journal when
    inputs and settings are unchanged, and removes shards of an earlier, larger packing. Returns the manifest
    written. Holds the work folder's lock meanwhile (one packer per output and work folder). Raises
    FileNotFoundError (no videos found), RuntimeError (no clip could be packed), DetectorUnavailable (the face
    detector cannot be loaded), UsageError (OUTPUT or the work folder cannot be made; foreign shard files in
    OUTPUT), OutputBusy (another packer holds the work folder) and storage.EnvironmentFault (disk or storage failure:
    rerun to resume)."""
    # `in`, `in/` and `/abs/in` are the same run (journal fingerprint, work folder, manifest)
    source, output = (str(p) if storage.is_s3(str(p)) else str(Path(p).resolve()) for p in (source, output))
    storage.check_bucket(output)  # a bucket that does not exist: one line before any video is read
    items, list_rejects = discover(source)
    if not items:
        raise FileNotFoundError(f"{source}: no videos found (expected <identity>/<video file>, "
                                f"<identity>/<video>/<frame>.jpg, or a .csv/.jsonl list)"
                                + (f"; {list_rejects[0]['reason']}" if list_rejects else ""))
    for r in list_rejects:  # bad list rows, duplicate ids: said now, as the rejects of decoding are
        log.warning("rejected %s", r["reason"])
    if s.align == "detect":
        detector(s)  # the detector loads once here, or the run stops with one clear error (DetectorUnavailable)
    work = work_folder(output, s)
    made = not work.exists()
    for what, folder in (("OUTPUT", None if storage.is_s3(output) else Path(output)), ("the work folder", work)):
        try:
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # /proc/x, a read-only mount, no permission: a setting to fix, before any work
            from ..errors import UsageError

            raise UsageError(f"{what} {folder}: the folder cannot be made ({e.strerror or e}); give a folder you "
                             "can write") from None
    _lock(work, output)
    try:
        return _pack(source, output, s, items, list_rejects, work)
    finally:
        locks.release(work / LOCK)
        if made and work.is_dir() and [p.name for p in work.iterdir()] == [LOCK]:  # refused before any work
            shutil.rmtree(work, ignore_errors=True)


class OutputBusy(Exception):
    """Another packer holds the output's work folder (`_lock`): a conflict that clears; exit 1."""


def _lock(work: Path, output: str) -> None:
    """Take the work folder's lock (`locks.try_lock`: one packer writes a journal and an output at a time).

    Raises:
        OutputBusy: another packer holds it (naming its pid, host and start time)."""
    holder = locks.try_lock(work / LOCK, str(work))
    if holder is not None:
        raise OutputBusy(
            f"{output}: another aupretrain-pack is writing it ({holder}); two packers would write one journal and "
            f"the same shards — let it end or stop it, or give another output (if no packer runs — an NFS lock a "
            f"crashed client left — remove {work / LOCK})")


def _pack(source: str, output: str, s: PackSettings, items: list[VideoItem], list_rejects: list[dict],
          work: Path) -> shards.Manifest:
    """`pack` once the inputs are listed and the work folder's lock is held."""
    previous = _previous_shards(output, (work / "journal.jsonl").exists())  # before the journal is (re)made
    journal = Journal(work, fingerprint(source, items, s))
    by_video = {it.video: it for it in items}
    order = sorted(items, key=lambda it: it.video)
    random.Random(f"videos-{s.seed}").shuffle(order)
    asm = Assembler(output, s, journal, work, by_video)
    todo = [it for it in order if it.video not in journal.videos]
    workers = s.workers or min(os.cpu_count() or 1, max(1, len(todo)))
    results = parallel_map(_work, [(it, s, str(asm.spill_path(it.video))) for it in todo], workers,
                           on_crash=_worker_died)
    names = ("frames_decoded", "frames_sampled", "frames_with_face", "clips_dropped_small", "clips_dropped_blurry")
    totals = dict.fromkeys(names, 0)
    clips, t0, decoded_now, rejects, identities, videos = 0, time.time(), 0, [], set(), 0
    bar = tqdm(total=len(order), unit="video", desc="pack", disable=None, initial=len(journal.videos))
    if journal.resumed:
        log.info("resuming: %d of %d videos and %d shards already done", len(journal.videos), len(order), len(journal.shards))
    for it in order:
        if it.video not in journal.videos:
            r = next(results)
            assert r.video == it.video, (r.video, it.video)
            if r.warning:
                log.warning("%s", r.warning)
            if r.reason:
                log.warning("rejected %s", r.reason)
            journal.add({"video": it.video, "clips": r.clips, "frames": r.frames, "sampled": r.sampled,
                         "face_frames": r.face_frames, "dropped": r.dropped, "reason": r.reason})
            decoded_now += r.frames
            bar.update(1)
        n, *stats, reason = journal.videos[it.video]
        for k, v in zip(names, stats):
            totals[k] += v
        if reason:
            rejects.append({"input": it.path, "reason": reason})
        elif n:
            clips, videos = clips + n, videos + 1
            identities.add(it.identity)
        asm.add(it.video, n)
        bar.set_postfix(clips=clips, shards=len(asm.infos), fps=f"{decoded_now / max(time.time() - t0, 1e-6):.0f}",
                        rejects=len(rejects), refresh=False)
    bar.close()
    rejects = list_rejects + sorted(rejects, key=lambda r: r["input"])
    if clips == 0:
        journal.close()
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"{source}: nothing could be packed; {len(rejects)} inputs rejected, first: "
                           f"{rejects[0]['reason'] if rejects else 'n/a'}")
    asm.finish()
    journal.close()
    manifest = shards.Manifest(
        samples=clips, frames=clips * s.clip_len, clip_len=s.clip_len, stride=s.stride, size=s.size, fps=s.fps,
        identities=sorted(identities), videos=videos, shards=asm.infos, rejects=rejects,
        stats=totals, settings=s.content() | {"input": str(source)})
    shards.write_manifest(output, manifest)
    _remove_stale_shards(output, {i.name for i in asm.infos} | {i.index for i in asm.infos}, previous)
    shutil.rmtree(work, ignore_errors=True)  # last: its lock file goes with it
    return manifest


def _previous_shards(output: str, journal: bool) -> set[str]:
    """The shard and index files directly in `output` that a new packing may replace and remove: those the
    manifest of an earlier packing there records, and — where a pack journal for this output exists (its work
    folder: a packing of ours ran here and stopped, with these or other settings) — every shard file there. A shard
    file that neither explains (someone's files, or those of a packing whose journal is gone — an S3 output packed
    from another machine, a cleared cache) is refused, not overwritten or deleted.

    Raises:
        UsageError: `output` holds shard files (shard-NNNNNN.tar/.idx) that no manifest or journal accounts for.
    """
    from ..errors import UsageError

    names = {uri.rsplit("/", 1)[-1] for uri, _ in storage.list_files(output)
             if storage.join(output, uri.rsplit("/", 1)[-1]) == uri}  # this folder's own files, not its subfolders'
    ours = {n for n in names if _SHARD_FILE.match(n) and not n.startswith(".")}
    recorded: set[str] = set()
    if shards.MANIFEST in names:
        try:
            old = shards.load_manifest(output)
        except UsageError:  # an unreadable manifest: it records nothing
            old = None
        if old is not None:
            recorded = {i.name for i in old.shards} | {i.index for i in old.shards}
            log.warning("%s: replacing the dataset there (%d clips of %s)", output,
                        old.samples, old.settings.get("input", "?"))
    if journal:
        return recorded | ours
    foreign = sorted(ours - recorded)
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
        raise UsageError(f"{output}: holds shard files that no manifest.json or pack journal there accounts for "
                         f"({shown}); they would be overwritten or removed — give an empty or new output folder, or "
                         "remove them first (a packing that stopped before its manifest leaves such files; its "
                         "journal is in the work folder: <output>/.pack-work, or --work-dir for S3)")
    return recorded


def _remove_stale_shards(output: str, keep: set[str], previous: set[str]) -> None:
    """Shards of an earlier packing of the same output that the new manifest does not hold (`previous`, as its
    manifest recorded them), and temporary files of a crashed packing; no other file is touched."""
    for uri, _ in storage.list_files(output):
        name = uri.rsplit("/", 1)[-1]
        stale = name in previous or (_SHARD_FILE.match(name) and name.startswith("."))
        if stale and name not in keep and storage.join(output, name) == uri:
            storage.delete(uri)
