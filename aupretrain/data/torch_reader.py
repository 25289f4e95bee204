"""Baseline clip loader (`data.loader=torch`): PIL decode + torch augmentation + a torch `DataLoader`, the same
batch contract, sample split, augmentations and damaged-data handling as the DALI reader.

It is the fallback where DALI is not installed and the yardstick of `bench/data.py`. Samples are read by byte
range through the shards' DALI indexes (local files or S3 range GETs), so ranks split the samples exactly as
DALI does (rank r of W reads the contiguous share k = (r + epoch) mod W of the samples, shuffled per epoch with
a seeded RNG) and a resumed run continues from the same sample. The work is split as DALI's reader splits it:
the workers decode and apply the geometry (one crop box and rotation per clip and view, applied to every frame:
`augment.geometry_view_uint8`) and stack a batch of uint8 channels-last views; the loader's process then applies
the colour jitter, blur and normalisation to the batch where it will be used (`augment.finish_views`: OpenCV on
CPU, torch on the GPU when `data.device` allows it), with its own saved generator, as the DALI reader does.
Measured on a 16-core GPU machine: when the workers sent per-clip float views, the loader's process spent its
time mapping and stacking them (~700 source frames/s whatever the worker count); uint8 batches stacked in the
workers carry a quarter of the bytes in two tensors instead of 2 x batch (docs/benchmarks.md).
"""
from __future__ import annotations

import io
import json
import logging
from typing import Iterator

import numpy as np
import torch

from . import integrity, shards, storage
from .augment import clean_view, finish_views, geometry_view_uint8, without_augmentation
from .dataset import (ReaderSettings, assemble_batch, rebuild_index, require_full_batches, shared_dataset_view,
                      use_gpu)
from .labels import FrameLabels

log = logging.getLogger(__name__)

class _Clips(torch.utils.data.Dataset):
    """Map-style dataset over (tar, IndexedSample) pairs: decoded, checked and augmented in the worker."""

    def __init__(self, items, settings: ReaderSettings, clip_len: int, seed: tuple, offset: int):
        self.items, self.s, self.clip_len = items, settings, clip_len  # items: [(tar, IndexedSample)] in order
        self.seed, self.offset = seed, offset  # draws depend on (seed, epoch, position in the epoch): resumable
        self.rebuilt: dict[str, dict[str, integrity.IndexedSample]] = {}  # this worker's indexes made anew
        self.new: list[tuple[str, str, str]] = []  # (tar, why, index text) rebuilt since the last item

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, tar: str, smp: integrity.IndexedSample, ext: str) -> bytes:
        """A member's bytes, read with the tar header before them; when that header is not the member's (an
        index that does not match its tar), from an index rebuilt from the tar (once per shard and worker).
        Raises IndexMismatch (a ValueError) when the member cannot be found there either."""
        off, size = smp.members[ext]
        b = integrity.BLOCK
        got = storage.read_range(tar, off - b, size + b)
        name = smp.names.get(ext, f"{smp.key}.{ext}")
        why = integrity.header_problem(got[:b], name, size)
        if why is None:
            return got[b:]
        if tar not in self.rebuilt:
            try:
                text = rebuild_index(tar)
            except ValueError:
                text = None
            self.rebuilt[tar] = {s.key: s for s in integrity.parse_index(text, tar)} if text else {}
            if text:
                self.new.append((tar, f"the index puts {name} ({size} bytes) at offset {off}, the tar has {why} "
                                      f"there", text))
        fixed = self.rebuilt[tar].get(smp.key)
        if fixed is None or ext not in fixed.members:
            raise integrity.IndexMismatch(f"{tar}: the index puts {name} at offset {off}, the tar has {why} there "
                                          f"and no such member")
        return storage.read_range(tar, *fixed.members[ext])

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        skipped = []
        for j in range(len(self.items)):  # a damaged sample is replaced by the next one of the epoch's order
            tar, smp = self.items[(i + j) % len(self.items)]
            try:
                meta = json.loads(self._read(tar, smp, "json"))
                if not isinstance(meta, dict) or not {"video", "identity"} <= set(meta):
                    raise ValueError("not clip metadata")
            except (ValueError, UnicodeDecodeError):
                skipped.append((integrity.BAD_JSON, tar, smp.key))
                continue
            try:
                frames = [np.asarray(Image.open(io.BytesIO(self._read(tar, smp, e))).convert("RGB"))
                          for e in shards.frame_exts(self.clip_len)]
            except (OSError, ValueError, SyntaxError):
                skipped.append((integrity.BAD_JPEG, tar, smp.key))
                continue
            if len({f.shape for f in frames}) > 1:  # one clip, frames of different sizes: not one sequence
                skipped.append((integrity.FRAME_SIZE, tar, smp.key))
                continue
            frames = np.stack(frames)
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([*self.seed, self.offset + i]).generate_state(1)[0]))
            clip = torch.from_numpy(frames)
            new, self.new = self.new, []
            if self.s.shared_geometry:  # one geometric draw for both views: a generator state each view replays
                geo = int(torch.randint(0, 2 ** 62, (1,), generator=g))
                v1 = geometry_view_uint8(clip, self.s, torch.Generator().manual_seed(geo))
                v2 = geometry_view_uint8(clip, self.s, torch.Generator().manual_seed(geo))
            else:
                v1, v2 = geometry_view_uint8(clip, self.s, g), geometry_view_uint8(clip, self.s, g)
            out = {"view1": v1, "view2": v2, "meta": meta, "skipped": skipped, "reindexed": new}
            if self.s.clean_view:
                out["clean"] = geometry_view_uint8(clip, without_augmentation(self.s), g)  # draws nothing from g
            return out
        raise RuntimeError("every sample of this rank's share is damaged")


def _collate(items: list[dict]) -> dict:
    """A batch from the workers' samples, stacked in the worker: views uint8 [B, T, S, S, 3], and the lists of
    metadata, damaged samples skipped and indexes rebuilt."""
    out = {"view1": torch.stack([it["view1"] for it in items]), "view2": torch.stack([it["view2"] for it in items]),
           "meta": [it["meta"] for it in items], "skipped": [x for it in items for x in it["skipped"]],
           "reindexed": [x for it in items for x in it["reindexed"]]}
    if "clean" in items[0]:
        out["clean"] = torch.stack([it["clean"] for it in items])
    return out


class TorchClipLoader:
    """Endless iterator of training batches for one rank, the interface of `dali_reader.ClipLoader`."""

    def __init__(self, settings: ReaderSettings, state: dict | None = None):
        self.settings = settings
        self.manifest, paths, idx, self.bad_shards, skipped, counts = shared_dataset_view(settings.root,
                                                                                          settings.verify_checksums)
        self.skipped = {integrity.UNREADABLE_SHARD: sum(b["samples"] for b in self.bad_shards), **skipped}
        self.found_damaged: dict[str, int] = {}
        require_full_batches(settings, sum(counts))
        self.clip_len = self.manifest.clip_len
        self.identity_ids = {name: i for i, name in enumerate(self.manifest.identities)}
        self.shard_paths = paths
        self.index_paths = idx
        self._starts = np.cumsum([0, *counts])  # global sample index of each shard's first complete sample
        self._indexes: dict[int, list[integrity.IndexedSample]] = {}  # read when a share first needs the shard
        self._rebuilt: set[str] = set()  # shards whose index a worker found not to match the tar
        if state is not None and (state.get("shards") != paths or state.get("loader") != "torch"):
            log.warning("reader state is for other shards or another loader: starting a new epoch")
            state = None
        # damaged samples found so far ({tar: {key: reason}}): left out from the next epoch on, and after a resume
        self.quarantine: dict[str, dict[str, str]] = dict(state.get("quarantine", {})) if state else {}
        self.epoch = int(state["epoch"]) if state else 0
        self.position = int(state["position"]) if state else 0  # samples of this epoch's order already served
        self._gen = torch.Generator().manual_seed(settings.seed)
        if state:
            self._gen.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self.restored = state is not None
        self.labels = FrameLabels(settings.labels) if settings.labels else None
        # where the batch's colour, blur and normalisation run: this rank's GPU where DALI would decode on it
        gpu = use_gpu(settings.device)
        self.device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")

    def _sample(self, g: int) -> tuple[str, integrity.IndexedSample]:
        """(tar, sample) of global sample index g; the shard's index is read the first time one is needed."""
        i = int(np.searchsorted(self._starts, g, side="right")) - 1
        if i not in self._indexes:
            ix, exts = self.index_paths[i], [*shards.frame_exts(self.clip_len), "json"]
            self._indexes[i] = [s for s in integrity.parse_index(storage.read_text(ix), ix)
                                if all(e in s.members for e in exts)]
        return self.shard_paths[i], self._indexes[i][g - int(self._starts[i])]

    def _order(self, epoch: int) -> list[tuple[str, integrity.IndexedSample]]:
        """This rank's share of `epoch` (DALI's split and rotation over the complete samples), shuffled with a
        seed of (seed, epoch), without the samples found damaged so far. Reads only the share's indexes."""
        n, w = int(self._starts[-1]), self.settings.world
        k = (self.settings.rank + epoch) % w
        share = np.arange(n * k // w, n * (k + 1) // w)
        np.random.default_rng([self.settings.seed, epoch]).shuffle(share)
        items = [self._sample(int(g)) for g in share]
        return [(tar, smp) for tar, smp in items if smp.key not in self.quarantine.get(tar, {})]

    def _reindexed(self, tar: str, why: str, text: str) -> None:
        """A worker found that shard `tar`'s index does not match the tar and read it through `text`, an index
        rebuilt from the tar: read the shard through it from now on (logged once)."""
        if tar in self._rebuilt:
            return
        self._rebuilt.add(tar)
        i = self.shard_paths.index(tar)
        exts = [*shards.frame_exts(self.clip_len), "json"]
        entries = [s for s in integrity.parse_index(text, tar) if all(e in s.members for e in exts)]
        log.warning("%s: %s; rebuilt the index from the tar", tar, why)
        if len(entries) == int(self._starts[i + 1] - self._starts[i]):  # the split of the samples stays as it is
            self._indexes[i] = entries

    @property
    def steps_per_epoch(self) -> int:
        """Full batches in this rank's share of the current epoch (damaged samples left out), at least 1."""
        return max(1, len(self._order(self.epoch)) // self.settings.batch_size)

    def state(self) -> dict:
        """Where this loader is (between batches): epoch, samples served, partner RNG. JSON-serialisable."""
        return {"format": 1, "loader": "torch", "epoch": self.epoch, "position": self.position,
                "generator": self._gen.get_state().tolist(), "shards": self.shard_paths, "quarantine": self.quarantine}

    def __iter__(self) -> Iterator[dict]:
        b = self.settings.batch_size
        while True:
            order = self._order(self.epoch)
            usable = len(order) // b * b  # the last partial batch is dropped, as DALI does
            rest = order[self.position:usable]
            data = _Clips(rest, self.settings, self.clip_len, (self.settings.seed, self.epoch), self.position)
            workers = max(0, int(self.settings.num_threads))
            loader = torch.utils.data.DataLoader(data, batch_size=b, shuffle=False, drop_last=True,
                                                 num_workers=workers, collate_fn=_collate,
                                                 pin_memory=self.device.type == "cuda",
                                                 prefetch_factor=self.settings.prefetch if workers else None,
                                                 persistent_workers=False)
            for batch in loader:
                self.position += b
                for tar, why, text in batch["reindexed"]:
                    self._reindexed(tar, why, text)
                for why, tar, key in batch["skipped"]:
                    if key not in self.quarantine.setdefault(tar, {}):
                        log.warning("left out damaged sample %s of %s (%s)", key, tar, why)
                        self.found_damaged[why] = self.found_damaged.get(why, 0) + 1
                        self.quarantine[tar][key] = why
                v1, v2 = (finish_views(batch[k].to(self.device, non_blocking=True), self.settings, self._gen)
                          for k in ("view1", "view2"))
                clean = clean_view(batch["clean"].to(self.device), self.settings) if "clean" in batch else None
                yield assemble_batch(v1, v2, batch["meta"], self.identity_ids, self._gen, self.settings, self.labels,
                                     clean)
            self.epoch += 1
            self.position = 0
