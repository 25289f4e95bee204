"""DALI pipeline over clip shards: decode T frames per clip (GPU "mixed" or CPU), two views rotated, cropped and
resized (one resampling each) and kept uint8 — by DALI's operators on the GPU, by OpenCV on the host after a
decode-only pipeline on CPU (`data.geometry`, `augment.host_views`); the colour jitter (one 3x3 map per clip), the
Gaussian blur and the normalisation are applied to the batch afterwards, where it lies (`augment.finish_views`).

Each view draws one set of random augmentation parameters per clip and applies it to every frame of the
clip, so differences between frames of a view stay expression/pose differences (with `augment.shared_geometry`
the two views share one rotation and crop). Output per batch is the
Batch contract of ARCHITECTURE.md: view1/view2 [B, T, 3, S, S] float (normalised), identity [B],
video [B], partner [B] (a clip of another identity in the same batch, -1 if none).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import integrity, shards, storage
from .augment import (clean_view, finish_views, host_views, without_augmentation,  # noqa: F401 (re-exported)
                      working_size)
from .dataset import (ReaderSettings, assemble_batch, check_shards, host_geometry,  # noqa: F401 (re-exported)
                      local_cache, partners, require_full_batches, shared_dataset_view, use_gpu, video_id)
from .labels import FrameLabels

log = logging.getLogger(__name__)
MAX_RECOVERIES = 20  # pipeline rebuilds after damaged samples, per loader (then the error is raised)


def build_pipeline(s: ReaderSettings, paths: list[str], index_paths: list[str], clip_len: int,
                   checkpoint: str | None = None, source_size: int = 0):
    """The reader pipeline; `checkpoint` (from `ClipLoader.state()`) restores reader position and RNG state.

    Geometry per view, one resampling each (measured on CPU, `bench/data.py`): without rotation, an antialiased
    ROI resize of the view's square crop (area fraction in `s.scale`) to `s.input_size`; with rotation, one
    `fn.warp_affine` (bilinear, borders clamped) whose destination -> source matrix composes the rotation about
    the frame centre (angle in +-`s.rotate` degrees), the crop (anywhere in the rotated frame) and the resize,
    after frames larger than `working_size` are resized (antialiased) once for both views — 1.8x a rotation
    followed by a crop-resize at 64 px.

    With `host_geometry(s)` (`data.geometry`: opencv, or auto without a GPU) the pipeline only decodes (on the
    CPU) and returns the clip itself, uint8 [T, H, W, 3], and the meta: the views are then cut on the host by
    `augment.host_views` (OpenCV's resampling: ~10x DALI's on CPU, measured in `bench/data.py`)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali import math as dmath

    host = host_geometry(s)
    gpu = use_gpu(s.device) and not host
    device_id = torch.cuda.current_device() if gpu else None
    size = working_size(s, source_size) if s.rotate and not host else 0  # only the warps (rotation) need the shared resize

    def uniform(lo: float, hi: float):  # DALI refuses an empty range: a fixed value is a constant
        return fn.random.uniform(range=[lo, hi]) if hi > lo else float(lo)

    def crop(side):
        """The crop's top-left corner (relative), anywhere in the frame."""
        return uniform(0.0, 1.0) * (1.0 - side), uniform(0.0, 1.0) * (1.0 - side)

    def view(seq):
        """One augmented view, uint8 [T, S, S, 3]; one draw of angle and crop per clip, shared by its T frames."""
        full = tuple(s.scale) == (1.0, 1.0)  # the whole frame: no crop drawn
        side = dmath.sqrt(uniform(*s.scale)) if s.scale[1] > s.scale[0] else math.sqrt(s.scale[0])
        if not s.rotate:  # an antialiased ROI resize: DALI's separable resampling, the fastest (measured)
            if full:
                return fn.resize(seq, size=[s.input_size, s.input_size], antialias=True)
            ox, oy = crop(side)
            return fn.resize(seq, roi_start=fn.stack(oy, ox), roi_end=fn.stack(oy + side, ox + side),
                             roi_relative=True, size=[s.input_size, s.input_size], antialias=True)
        # Rotation, crop and resize as one warp. For destination pixel d (continuous coordinates, [0, S]^2)
        # the source point is c + R(-a) (w * (o + side * d / S) - c): w = (W, H) the frame size, c = w / 2 its
        # centre, o the crop's top-left corner and side its relative side, both in the rotated frame.
        hw = seq.shape(dtype=types.FLOAT)  # [F, H, W, C]
        h, w = hw[1], hw[2]
        a = uniform(-s.rotate, s.rotate) * (math.pi / 180.0)
        cos, sin = dmath.cos(a), dmath.sin(a)
        ox, oy = (0.0, 0.0) if full else crop(side)
        sx, sy = w * side / s.input_size, h * side / s.input_size
        px, py = w * ox - w * 0.5, h * oy - h * 0.5  # the crop corner, relative to the centre
        m = fn.stack(cos * sx, sin * sy, w * 0.5 + cos * px + sin * py,
                     -sin * sx, cos * sy, h * 0.5 - sin * px + cos * py)
        return fn.warp_affine(seq, matrix=fn.reshape(m, shape=[2, 3]), size=[s.input_size, s.input_size],
                              interp_type=types.INTERP_LINEAR, inverse_map=True)

    @pipeline_def(batch_size=s.batch_size, num_threads=s.num_threads, device_id=device_id, seed=s.seed,
                  prefetch_queue_depth=s.prefetch, enable_checkpointing=True)
    def pipe():
        outs = fn.readers.webdataset(
            paths=paths, index_paths=index_paths, ext=shards.frame_exts(clip_len) + ["json"],
            missing_component_behavior="skip", shard_id=s.rank, num_shards=s.world, random_shuffle=True,
            initial_fill=s.shuffle_buffer, pad_last_batch=True, name="Reader")
        frames = [fn.decoders.image(j, device="mixed" if gpu else "cpu", output_type=types.RGB) for j in outs[:clip_len]]
        seq = fn.stack(*frames, axis_name="F")
        # `s.clean_view` (the views cut here): the whole frames resized, antialiased, as the probe reads them
        clean = [fn.resize(seq, size=[s.input_size, s.input_size], antialias=True)] if s.clean_view and not host else []
        if size:  # the warps do not antialias: downsample once, antialiased, for both views
            seq = fn.resize(seq, size=[size, size], antialias=True)
        # <key>.json zero-padded to the longest in the batch: a dense tensor whatever the length of the identity and
        # video names (a fixed 1,024 bytes failed the whole batch on a clip with longer names)
        meta = fn.pad(outs[clip_len], axes=[0], fill_value=0)
        if host:  # the views are cut on the host (`augment.host_views`)
            return seq, meta
        if s.shared_geometry:  # one rotation and crop for both views (their colour and blur still differ)
            v = view(seq)
            return (v, fn.copy(v), *clean, meta)
        return (view(seq), view(seq), *clean, meta)

    p = pipe(checkpoint=checkpoint)
    p.build()
    return p


def s3_read_failure(error: BaseException, uris: list[str]) -> storage.S3Error | None:
    """The S3Error for a DALI failure on one of `uris` (s3:// shards or indexes), else None.

    DALI's S3 reader (the AWS C++ SDK, retrying up to AWS_MAX_ATTEMPTS = storage.s3.max_attempts) reports any
    failure to open an object — endpoint down, 503 SlowDown beyond its retries — as "S3 Object not found.
    bucket=<b> object=<k>: <detail>". The object is asked for again with boto3 (its own retries), which names the
    real cause; when boto3 reads it, the error says so (the failure was DALI's client's, or is over)."""
    text = str(error)
    for uri in uris:
        if not storage.is_s3(uri):
            continue
        bucket, key = storage.split_s3(uri)
        mark = f"bucket={bucket} object={key}"
        if mark not in text:
            continue
        detail = text.split(mark, 1)[1].split("Current pipeline object is no longer valid")[0]
        detail = " ".join(detail.split()).strip(" :") or "no detail"
        said = (f"DALI's S3 reader failed on it after up to {os.environ.get('AWS_MAX_ATTEMPTS', 3)} attempts "
                f"(AWS_MAX_ATTEMPTS; DALI says: {detail[:300]})")
        try:
            storage.size(uri)
        except storage.S3Error as e:
            return storage.S3Error(f"{uri}: {said}; asked again with boto3: {str(e).split(': ', 1)[1]}")
        except Exception as e:  # noqa: BLE001 - e.g. 404: the object went away after the start-up check
            return storage.S3Error(f"{uri}: {said}; asked again with boto3: {type(e).__name__}: {e}")
        return storage.S3Error(f"{uri}: {said}; boto3 reads it, so the failure was transient or DALI's S3 "
                               f"client's own")
    return None


class ClipLoader:
    """Endless iterator of training batches for one rank (an epoch ends, the reader starts the next)."""

    def __init__(self, settings: ReaderSettings, state: dict | None = None):
        self.settings = settings
        self.manifest, paths, idx, self.bad_shards, skipped, self._counts = shared_dataset_view(
            settings.root, settings.verify_checksums)
        if not all(storage.dali_readable(p) for p in paths + idx):  # keys with `#`/`?`: DALI would cut them
            cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "aupretrain", "shards",
                         hashlib.sha1(settings.root.encode()).hexdigest()[:16])
            log.warning("%s: DALI cannot open S3 keys holding %r; reading local copies in %s", settings.root,
                        storage.DALI_UNSAFE, cache)
            paths, idx = storage.stage(paths, cache), storage.stage(idx, cache)
        # samples left out, by reason: at start (rank 0's check, the same on every rank) and found by this rank
        self.skipped = {integrity.UNREADABLE_SHARD: sum(b["samples"] for b in self.bad_shards), **skipped}
        self.found_damaged: dict[str, int] = {}
        require_full_batches(settings, sum(self._counts))
        self.clip_len = self.manifest.clip_len
        self.identity_ids = {name: i for i, name in enumerate(self.manifest.identities)}
        self.shard_paths, self.index_paths = paths, list(idx)
        self._source_index = dict(zip(paths, idx))
        if state is not None and state.get("loader", "dali") != "dali":
            log.warning("reader state is from the %s loader: the DALI reader starts a new epoch", state.get("loader"))
            state = None
        self.host = host_geometry(settings)  # the views cut on the host (`augment.host_views`), not by DALI
        self.geometry = "opencv" if self.host else "dali"
        if state is not None and state.get("geometry", "dali") != self.geometry:  # another pipeline: cannot load it
            log.warning("reader state is from a pipeline cutting the views with %s (data.geometry), this one uses %s: "
                        "the DALI reader starts a new epoch", state.get("geometry", "dali"), self.geometry)
            state = None
        if state is not None and state.get("shards") != paths:
            log.warning("reader state is for other shards (%d listed, %d usable now): starting a new epoch",
                        len(state.get("shards") or []), len(paths))
            state = None
        # damaged samples this rank found before a resume: left out again, so the restored reader state matches
        self.quarantine: dict[str, dict[str, str]] = dict(state.get("quarantine", {})) if state else {}
        self._apply_quarantine()
        self.epoch = int(state["epoch"]) if state else 0
        self._dali_epoch = self.epoch  # epochs of the current pipeline (its shard rotation), for a scan
        self._build(base64.b64decode(state["dali"]) if state else None)
        self._gen = torch.Generator().manual_seed(settings.seed)
        if state:
            self._gen.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self.restored = state is not None
        self.labels = FrameLabels(settings.labels) if settings.labels else None

    @property
    def skipped_samples(self) -> int:
        """Samples left out at start (unreadable shards, samples missing a member; the same on every rank)."""
        return sum(self.skipped.values())

    def _build(self, checkpoint: bytes | None = None) -> None:
        """Build the pipeline and its iterator (which already runs the first batches: damage found there is
        handled like damage found later, `_recover`)."""
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        for attempt in range(MAX_RECOVERIES + 1):
            try:
                self.pipe = build_pipeline(self.settings, self.shard_paths, self.index_paths, self.clip_len, checkpoint,
                                           int(self.manifest.size or 0))
            except RuntimeError as e:  # DALI opens its files here: S3 down or throttled shows first here
                failure = s3_read_failure(e, self.shard_paths + self.index_paths)
                if failure is not None:
                    raise failure from e
                raise
            try:
                clean = ["clean"] if self.settings.clean_view else []
                names = ["clip", "meta"] if self.host else ["view1", "view2", *clean, "meta"]
                self.iterator = DALIGenericIterator([self.pipe], names, reader_name="Reader",
                                                    auto_reset=True, last_batch_policy=LastBatchPolicy.DROP)
                return
            except RuntimeError as e:
                del self.pipe
                if attempt == MAX_RECOVERIES:
                    raise
                self._find_damage(e)
                checkpoint = None
                self._dali_epoch = 0

    def _index_cache(self) -> Path:
        return local_cache("indexes", hashlib.sha1(f"{self.settings.root}:{self.settings.rank}:{os.getpid()}"
                                                   .encode()).hexdigest()[:16])

    def _reindex(self, i: int, data: bytes, samples: list[integrity.IndexedSample]) -> bool:
        """When the index this rank reads for shard i does not match the tar (every member's header checked:
        the tar is in memory; rank 0's start-up check reads two), read an index rebuilt from the tar from now
        on. Returns whether it did (not when the tar itself cannot be indexed: then its samples are scanned)."""
        tar = self.shard_paths[i]
        try:
            integrity.verify_index(samples, lambda off, n: data[off:off + n], len(data), tar, full=True)
            return False
        except integrity.IndexMismatch as e:
            try:
                text = integrity.index_tar(io.BytesIO(data), tar)
            except ValueError:
                return False
            log.warning("rank %d: %s; rebuilt the index from the tar", self.settings.rank, e)
        local = self._index_cache() / f"{Path(tar).stem}.rebuilt.idx"
        integrity.write_text(local, text)
        self._source_index[tar] = self.index_paths[i] = str(local)
        entries = integrity.parse_index(text, str(local))
        missing = integrity.check_index(entries, shards.frame_exts(self.clip_len) + ["json"])
        self._counts[i] = len(entries) - len(missing)
        return True

    def _apply_quarantine(self) -> None:
        """Point the reader at local copies of the indexes of shards with quarantined samples, without them."""
        for i, tar in enumerate(self.shard_paths):
            drop = self.quarantine.get(tar)
            if drop:
                src = self._source_index[tar]
                local = self._index_cache() / Path(src).name
                integrity.write_index(integrity.parse_index(storage.read_text(src), src), set(drop), local)
                self.index_paths[i] = str(local)

    def _share(self) -> list[int]:
        """Indexes (into shard_paths) of the shards holding this rank's share of the current epoch: DALI gives
        rank r of W the contiguous samples [N k / W, N (k+1) / W) with k = (r + epoch) mod W."""
        counts = [c - len(self.quarantine.get(tar, {})) for tar, c in zip(self.shard_paths, self._counts)]
        w = self.settings.world
        k = (self.settings.rank + self._dali_epoch) % w
        n = sum(counts)
        lo, hi = n * k // w, n * (k + 1) // w
        out, start = [], 0
        for i, c in enumerate(counts):
            if start < hi and start + c > lo:
                out.append(i)
            start += c
        return out

    def _recover(self, error: BaseException) -> None:
        """The pipeline failed (an undecodable JPEG, JSON that does not parse): find the damaged samples in this
        rank's shards, leave them out, rebuild the pipeline (this rank restarts its epoch). Re-raises `error`
        when no damaged sample is found (then it is not the data's fault)."""
        self._find_damage(error)
        del self.iterator, self.pipe
        self._dali_epoch = 0
        self._build()

    def _find_damage(self, error: BaseException) -> None:
        """Scan this rank's shards (its share of the epoch first, then the rest) for indexes that do not match
        their tar (`_reindex`) and damaged samples, and put those in quarantine (local index copies without
        them). Re-raises `error` when there is neither, and raises an S3Error instead of scanning when DALI's S3
        reader failed on an object (not a damaged sample)."""
        failure = s3_read_failure(error, self.shard_paths + self.index_paths)
        if failure is not None:
            raise failure from error
        first = str(error).strip().splitlines()
        log.warning("rank %d: the input pipeline failed (%s); scanning its shards for damaged samples",
                    self.settings.rank, next((ln for ln in reversed(first) if "failure" in ln or "Error" in ln),
                                             first[0] if first else type(error).__name__))
        exts = shards.frame_exts(self.clip_len)
        order = self._share()
        found: dict[str, dict[str, str]] = {}
        reindexed = False
        for pass_ in (order, [i for i in range(len(self.shard_paths)) if i not in order]):
            for i in pass_:
                tar, ix = self.shard_paths[i], self.index_paths[i]
                data = storage.read_bytes(tar)
                samples = integrity.parse_index(storage.read_text(ix), ix)
                if self._reindex(i, data, samples):
                    reindexed = True
                    samples = [s for s in integrity.parse_index(storage.read_text(self.index_paths[i]))
                               if s.key not in self.quarantine.get(tar, {})]
                # the host geometry needs every clip of a batch at one size (the manifest's): DALI resizes the others
                bad = integrity.scan_shard(data, samples, exts, int(self.manifest.size or 0) if self.host else 0)
                if bad:
                    found[tar] = bad
            if found or reindexed:
                break
        if not found and not reindexed:
            raise error
        for tar, bad in found.items():
            for key, why in bad.items():
                log.warning("left out damaged sample %s of %s (%s)", key, tar, why)
                self.found_damaged[why] = self.found_damaged.get(why, 0) + 1
            self.quarantine[tar] = {**self.quarantine.get(tar, {}), **bad}
        self._apply_quarantine()
        log.warning("rank %d: %d damaged samples left out%s; its reader restarts its epoch", self.settings.rank,
                    sum(len(b) for b in found.values()), ", indexes rebuilt" if reindexed else "")

    def state(self) -> dict:
        """Everything needed to continue exactly where this loader is (between batches): the DALI reader
        position and RNG states, the epoch, the partner sampler's RNG. JSON-serialisable."""
        cpt = self.iterator.checkpoints()[0]
        cpt = base64.b64encode(cpt if isinstance(cpt, bytes) else cpt.encode()).decode("ascii")
        return {"format": 1, "loader": "dali", "dali": cpt, "epoch": self.epoch,
                "geometry": self.geometry,
                "generator": self._gen.get_state().tolist(),
                "shards": self.shard_paths, "quarantine": self.quarantine}

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch on this rank (its share of the samples, last partial batch dropped)."""
        return max(1, len(self.iterator))

    def _decode_meta(self, meta: torch.Tensor) -> list[dict]:
        raw = meta.cpu().numpy().astype(np.uint8)
        return [json.loads(bytes(r).rstrip(b"\0")) for r in raw]

    def __iter__(self) -> Iterator[dict]:
        recoveries = 0
        while True:
            it = iter(self.iterator)
            while True:
                try:
                    d = next(it)[0]
                    if "clip" in d:  # decoded only: both views' geometry on the host
                        clip = d.pop("clip")
                        d["view1"], d["view2"] = host_views(clip, self.settings, self._gen)
                        if self.settings.clean_view:  # the whole frames resized (no draw from the loader's RNG)
                            d["clean"] = host_views(clip, without_augmentation(self.settings), torch.Generator())[0]
                        if use_gpu(self.settings.device):  # colour, blur and normalisation on the device
                            for k in ("view1", "view2", "clean"):
                                if k in d:
                                    d[k] = d[k].pin_memory().cuda(non_blocking=True)
                    v1, v2 = (finish_views(d[k], self.settings, self._gen) for k in ("view1", "view2"))
                    clean = clean_view(d["clean"], self.settings) if "clean" in d else None
                    batch = assemble_batch(v1, v2, self._decode_meta(d["meta"]), self.identity_ids, self._gen,
                                           self.settings, self.labels, clean)
                except StopIteration:
                    break
                except (RuntimeError, ValueError, UnicodeDecodeError, KeyError, TypeError) as e:  # DALI: RuntimeError
                    recoveries += 1
                    if recoveries > MAX_RECOVERIES:
                        raise
                    self._recover(e)
                    it = iter(self.iterator)
                    continue
                yield batch
            self.epoch += 1
            self._dali_epoch += 1
