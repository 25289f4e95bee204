"""The dataset as training reads it, whatever the loader: reader settings from the config, rank 0's check of
the manifest and shards (broadcast to every rank), the start-up size check, the batch helpers both loaders
share (partners, video ids), and the choice of loader (`data.loader`: DALI `ClipLoader` or the torch baseline).
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from . import integrity, shards, storage

log = logging.getLogger(__name__)


@dataclass
class ReaderSettings:
    """What both loaders read and how they augment it (`data.*`, `data.augment.*` of the config, `from_config`).

    `root`: the shard folder (local or s3://); `batch_size`: clips per rank per step; `input_size`: side S (pixels) of
    each view; `rank`/`world`: this process's share of the samples; `device`: "gpu", "cpu", "auto" (`use_gpu`:
    DALI's decode and both loaders' batch colour, blur and normalisation); `geometry`: "dali", "opencv" or "auto"
    (where the DALI reader cuts the views, `host_geometry`);
    `scale`: crop area fraction range; `rotate`, `hue`, `frame_rotate`: degrees (+-); `blur_sigma`: pixels;
    `noise_sigma`: grey levels; `brightness`/`contrast`/`saturation`: factor ranges; `mean`/`std`: per-channel RGB
    normalisation in [0, 1] units (x255 on uint8 frames); `labels`: folder of `<video>.labels.json` (`FrameLabels`)."""
    root: str
    batch_size: int
    input_size: int
    rank: int = 0
    world: int = 1
    device: str = "auto"
    geometry: str = "auto"  # where the views are cut: "dali", "opencv" (on the host), "auto" (`host_geometry`)
    num_threads: int = 2
    prefetch: int = 2
    shuffle_buffer: int = 256
    seed: int = 0
    scale: tuple[float, float] = (0.6, 1.0)
    rotate: float = 0.0  # degrees, +-: one in-plane rotation per clip and view
    shared_geometry: bool = False  # both views of a clip get the same rotation and crop (colour and blur differ)
    brightness: tuple[float, float] = (0.7, 1.3)
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.6, 1.4)
    hue: float = 10.0
    blur_sigma: tuple[float, float] = (0.1, 1.2)
    frame_shift: float = 0.0  # per-frame similarity warp (augment.jitter_frames): translation, fraction of the side
    frame_scale: float = 0.0  # zoom 1 +- this
    frame_rotate: float = 0.0  # degrees, +-
    noise_sigma: tuple[float, float] = (0.0, 0.0)  # per-view Gaussian noise, grey levels (augment.noise_views)
    hflip: float = 0.0  # probability that a clip's view is mirrored left to right (augment.flip_views)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    verify_checksums: bool = False
    labels: str | None = None  # folder of <video>.labels.json: adds `au` [B, T, A] to every batch
    clean_view: bool = False  # adds `clean` [B, T, 3, S, S]: each clip's frames un-augmented (`augment.clean_view`)

    @classmethod
    def from_config(cls, cfg, rank: int, world: int) -> "ReaderSettings":
        """The settings of this rank from the config `cfg` (`data`, `data.augment`, `model.mean/std`, `run.seed`); the
        reader seed is `run.seed + 7919 * rank`, so each rank draws its own augmentations."""
        d, aug = cfg.data, cfg.data.augment
        return cls(root=str(d.shards), batch_size=int(d.batch_size), input_size=int(d.input_size), rank=rank,
                   world=world, device=str(d.device), geometry=str(d.get("geometry", "auto")),
                   num_threads=int(d.num_threads), prefetch=int(d.prefetch),
                   shuffle_buffer=int(d.shuffle_buffer), seed=int(cfg.run.seed) + 7919 * rank,
                   scale=tuple(aug.scale), rotate=float(aug.rotate), shared_geometry=bool(aug.shared_geometry),
                   brightness=tuple(aug.brightness), contrast=tuple(aug.contrast),
                   saturation=tuple(aug.saturation), hue=float(aug.hue), blur_sigma=tuple(aug.blur_sigma),
                   frame_shift=float(aug.frame_jitter.shift), frame_scale=float(aug.frame_jitter.scale),
                   frame_rotate=float(aug.frame_jitter.rotate), noise_sigma=tuple(aug.noise_sigma),
                   hflip=float(aug.hflip),
                   mean=tuple(cfg.model.mean), std=tuple(cfg.model.std), verify_checksums=bool(d.verify_checksums),
                   labels=str(d.labels) if d.get("labels") else None, clean_view=bool(d.get("clean_view", False)))


def local_cache(*parts: str) -> Path:
    """A folder of this machine's cache: `$XDG_CACHE_HOME/aupretrain/<parts>` (default ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "aupretrain", *parts)


def _absent(e: BaseException) -> bool:
    """Whether `e` says the file does not exist (locally or on S3)."""
    response = getattr(e, "response", None)  # botocore ClientError
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    return isinstance(e, FileNotFoundError) or code in ("404", "NoSuchKey", "NotFound")


def rebuild_index(tar: str, size: int | None = None) -> str:
    """The DALI index text of the tar at `tar` (local path or s3://), from the tar's own headers
    (`integrity.index_tar`) in its first `size` bytes (default: all of it; rank 0 passes the size it checked).
    Raises ValueError when those are not a complete tar."""
    n = storage.size(tar) if size is None else size
    return integrity.index_tar(io.BytesIO(storage.read_range(tar, 0, n)), tar)


def check_shard(root: str, s: shards.ShardInfo, verify: bool = False
                ) -> tuple[list[integrity.IndexedSample], str | None, int, list[str]]:
    """Rank 0's check of one shard of the manifest: (its samples, the index text to read instead of its own
    index file or None, samples cut off a truncated tar, what differs from the manifest, to be logged).

    The tar is the truth: its index is verified against it (`integrity.verify_index`: 2 small reads) and, when
    it is missing, unreadable or does not describe the tar, rebuilt from the tar; a tar shorter than the
    manifest says keeps the samples before the cut (`integrity.complete_prefix`). Raises FileNotFoundError (no
    such tar) or ValueError (empty, sha256 differs with `verify`, or no sample can be read) naming why."""
    tar, ix = storage.join(root, s.name), storage.join(root, s.index)
    try:
        n = storage.size(tar)
    except Exception as e:
        if _absent(e):
            raise FileNotFoundError("listed in the manifest, but there is no such file") from e
        raise
    if n == 0:
        raise ValueError(f"empty file (0 bytes; the manifest says {s.bytes})")
    if verify and not storage.is_s3(root) and shards.sha256_file(tar) != s.sha256:
        raise ValueError("sha256 differs from the manifest")
    notes, text, cut, entries = [], None, 0, None
    read = functools.partial(storage.read_range, tar)
    try:
        entries = integrity.parse_index(storage.read_text(ix), ix)
        integrity.verify_index(entries, read, n, ix)
    except storage.EnvironmentFault:  # the storage is down, not the index wrong
        raise
    except Exception as e:  # noqa: BLE001 - any index that cannot be used is made anew from the tar
        problem = f"{ix}: missing" if _absent(e) else str(e)
        kept = []
        if entries and n < s.bytes:  # the index was written for the whole tar
            try:
                kept = integrity.complete_prefix(entries, read, n, ix)
            except ValueError:
                kept = []
        if kept:
            cut, entries, text = len(entries) - len(kept), kept, integrity.index_text(kept)
            notes.append(f"{integrity.TRUNCATED}: {n} bytes, the manifest says {s.bytes}: reading its {len(kept)} "
                         f"samples before the cut, {cut} cut off")
        else:
            try:
                text = rebuild_index(tar, n)
            except ValueError as e2:
                cut_note = f"{integrity.TRUNCATED} ({n} bytes, the manifest says {s.bytes}); " if n < s.bytes else ""
                raise ValueError(f"{cut_note}index unusable ({problem}) and the tar cannot be indexed ({e2})") from e2
            entries = integrity.parse_index(text, tar)
            notes.append(f"index rebuilt from the tar ({len(entries)} samples): {problem}")
    if n != s.bytes and not cut:
        notes.append(f"{n} bytes, the manifest says {s.bytes}; the tar and its index agree: reading it")
    if len(entries) + cut != s.samples:
        notes.append(f"the manifest says {s.samples} samples, the tar holds {len(entries) + cut}: reading the tar's")
    return entries, text, cut, notes


def _unlisted(root: str, listed: set[str]) -> list[str]:
    """Names of the tars in the dataset folder that the manifest does not list (none when it cannot be listed)."""
    try:
        files = storage.list_files(root)
    except Exception as e:  # noqa: BLE001 - the listing only adds a warning; the manifest decides what is read
        log.warning("%s: cannot list the folder (%s)", root, e)
        return []
    names = [u.rsplit("/", 1)[-1] for u, _ in files]
    return [n for u, n in zip(files, names) if n.endswith(".tar") and n not in listed and storage.join(root, n) == u[0]]


def _check_all(root: str, manifest: shards.Manifest, verify: bool = False):
    """`check_shards` with the index texts to read instead of a shard's own ({position in paths: text})."""
    exts = shards.frame_exts(manifest.clip_len) + ["json"]
    listed, unique = set(), []
    for s in manifest.shards:
        if s.name in listed:
            log.warning("%s: listed twice in the manifest: read once", storage.join(root, s.name))
        else:
            listed.add(s.name)
            unique.append(s)

    def one(s):
        try:
            return check_shard(root, s, verify)
        except storage.EnvironmentFault:  # S3 down or throttled past its retries: the storage's fault, not the shard's
            raise
        except Exception as e:  # noqa: BLE001 - every failure mode of a shard is reported the same way
            return e

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(unique)))) as pool:  # requests overlap (S3)
        results = list(pool.map(one, unique))
    paths, idx, bad, skipped, counts, texts = [], [], [], {}, [], {}
    for s, r in zip(unique, results):
        tar = storage.join(root, s.name)
        if isinstance(r, BaseException):
            log.warning("skipping shard %s: %s", tar, r)
            bad.append({"shard": tar, "name": s.name, "reason": str(r), "samples": s.samples})
            continue
        entries, text, cut, notes = r
        for note in notes:
            log.warning("%s: %s", tar, note)
        missing = integrity.check_index(entries, exts)
        if missing:
            log.warning("%s: %d samples miss a member (e.g. %s): skipped", tar, len(missing), missing[0])
            skipped[integrity.MISSING] = skipped.get(integrity.MISSING, 0) + len(missing)
        if cut:
            skipped[integrity.CUT] = skipped.get(integrity.CUT, 0) + cut
        if text is not None:
            texts[len(paths)] = text
        paths.append(tar)
        idx.append(storage.join(root, s.index))
        counts.append(len(entries) - len(missing))
    extra = _unlisted(root, listed)
    if extra:
        log.warning("%s: %d shard(s) in the folder are not in the manifest and are not read: %s", root, len(extra),
                    ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else ""))
    if not paths:
        from ..errors import UsageError

        first = f"first: {bad[0]['shard']}: {bad[0]['reason']}" if bad else "none listed"
        raise UsageError(f"{root}: no usable shard: all {len(bad)} listed in the manifest are unreadable ({first}); "
                         "repack the videos (aupretrain-pack) or point data.shards at another copy")
    return paths, idx, bad, skipped, counts, texts


def _local_indexes(idx: list[str], texts: dict[int, str]) -> list[str]:
    """`idx` with the index texts of `texts` written to this machine's cache (named by content) in their place."""
    out = list(idx)
    for i, text in texts.items():
        digest = hashlib.sha1(text.encode()).hexdigest()[:16]
        path = local_cache("indexes", "checked", f"{Path(idx[i]).stem}.{digest}.idx")
        if not path.is_file() or path.read_text() != text:
            integrity.write_text(path, text)
        out[i] = str(path)
    return out


def check_shards(root: str, manifest: shards.Manifest, verify: bool = False
                 ) -> tuple[list[str], list[str], list[dict], dict[str, int], list[int]]:
    """Usable shard paths, their index paths, bad shards [{"shard" (path), "name" (the manifest's), "reason",
    "samples"}] (missing, empty, not a readable tar, checksum with `verify`), {reason: samples} left out of usable shards (samples missing a member,
    which DALI skips; samples cut off a truncated tar), and the number of complete samples of each usable shard
    (so no other rank needs to read an index to split the samples). A shard's index that is missing, unreadable
    or not its tar's is rebuilt from the tar into this machine's cache and that path is given (`check_shard`);
    tars in the folder that the manifest does not list are named in a warning and not read. Raises
    UsageError (naming the folder and the first bad shard) when no shard is usable."""
    paths, idx, bad, skipped, counts, texts = _check_all(root, manifest, verify)
    return paths, _local_indexes(idx, texts), bad, skipped, counts


def manifest_as_read(manifest: shards.Manifest, bad_shards: list[dict]) -> str:
    """The manifest of what a run reads, as JSON text: `manifest` without the shards rank 0 found unusable
    (`bad_shards`, as `check_shards` gives them, each with its manifest "name"), which are listed under "left_out"
    instead — what MLflow records as the run's dataset (its digest changes when a shard is left out)."""
    import json
    from dataclasses import replace

    bad = {b["name"] for b in bad_shards}
    read = replace(manifest, shards=[s for s in manifest.shards if s.name not in bad])
    return json.dumps({**json.loads(read.to_json()), "left_out": list(bad_shards)}, indent=1)


def shared_dataset_view(root: str, verify: bool = False
                        ) -> tuple[shards.Manifest, list[str], list[str], list[dict], dict[str, int], list[int]]:
    """(manifest, *check_shards(...)) as rank 0 sees them, on every rank.

    Rank 0 alone reads the manifest and checks every shard (size, index verified against the tar, optional
    sha256) — one pass over storage per job instead of one per rank (at 512 ranks x 10k shards that is the
    difference between 10k and 5M requests at start) — and broadcasts the result, so every rank splits exactly
    the same shard list even when its own view of storage differs (NFS attribute caches, a transient S3 error).
    The indexes rank 0 rebuilt travel with it and each rank writes them to its own machine's cache. An error on
    rank 0 (no manifest, a manifest that cannot be used — UsageError —, no usable shard) is raised on every
    rank, so none waits in a collective. Without a process group (one process) this is `load_manifest` +
    `check_shards`."""
    import torch.distributed as dist

    many = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not many or dist.get_rank() == 0:
        try:
            manifest = shards.load_manifest(root)
            view: tuple | BaseException = (manifest, *_check_all(root, manifest, verify))
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            view = e
    else:
        view = None
    if many:
        box = [view]
        dist.broadcast_object_list(box, src=0)
        view = box[0]
    if isinstance(view, BaseException):
        view.raised_on_rank0 = True  # rank 0 reports it; the others exit with it quietly
        raise view
    manifest, paths, idx, bad, skipped, counts, texts = view
    return manifest, paths, _local_indexes(idx, texts), bad, skipped, counts


def require_full_batches(settings: ReaderSettings, usable: int) -> None:
    """Raise UsageError when some rank's share of `usable` clips is smaller than one batch (it would yield no
    batch at all and the others would wait for it in the first collective)."""
    if usable // settings.world < settings.batch_size:
        from ..errors import UsageError

        raise UsageError(
            f"{settings.root}: {usable} usable clips, but each of the {settings.world} ranks needs at least "
            f"data.batch_size={settings.batch_size} clips per step ({settings.batch_size * settings.world} in "
            f"all); lower data.batch_size, use fewer ranks, or pack more clips (more videos, or a smaller "
            f"--clip-step)")


def partners(identity: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """For each clip, the index of a random clip of another identity in the batch (-1 if there is none)."""
    b = identity.numel()
    other = identity[None, :] != identity[:, None]
    score = torch.rand(b, b, generator=generator) + other.float() * 2
    best = score.argmax(1)
    return torch.where(other.any(1), best, torch.full_like(best, -1))


def video_id(name: str) -> int:
    """A stable integer id of a video name (the same in every process and run)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=7).digest(), "little")


def assemble_batch(view1: torch.Tensor, view2: torch.Tensor, metas: list[dict], identity_ids: dict[str, int],
                   generator: torch.Generator, settings: ReaderSettings, labels=None,
                   clean: torch.Tensor | None = None) -> dict:
    """The batch contract from two views [B, T, 3, S, S] and the clips' metadata (both loaders): identity [B]
    (-1 for an identity the manifest does not list), video [B] (`video_id`), partner [B] (drawn from
    `generator`), the mirrored clips (`augment.flip_views`), the per-frame jitter (`augment.jitter_views`), the
    per-view noise (`augment.noise_views`), and `au` [B, T, A] when `labels` (FrameLabels) is set. The views come
    finished (augmented, blurred, normalised) from the loader; so does `clean` [B, T, 3, S, S] (`settings.clean_view`:
    the frames un-augmented, neither jittered nor noised). Raises KeyError when a clip's metadata lacks `identity`
    or `video`."""
    from .augment import flip_views, jitter_views, noise_views

    ident = torch.tensor([identity_ids.get(m["identity"], -1) for m in metas])
    batch = {"view1": view1, "view2": view2, "identity": ident,
             "video": torch.tensor([video_id(m["video"]) for m in metas]),
             "partner": partners(ident, generator), "meta": metas}
    flip_views(batch, settings, generator)
    jitter_views(batch, settings, generator)
    noise_views(batch, settings, generator)
    if labels is not None:
        batch["au"] = torch.from_numpy(labels.batch(metas))
    if clean is not None:
        batch["clean"] = clean
    return batch


def use_gpu(device: str) -> bool:
    """Whether a loader works on the GPU (`data.device`): "gpu" yes, "cpu" no, otherwise (auto) when CUDA is
    available. The DALI reader decodes there (`mixed`); both loaders colour, blur and normalise their batches
    there (`augment.finish_views`)."""
    if device == "gpu":
        return True
    if device == "cpu":
        return False
    return torch.cuda.is_available()


def host_geometry(s: ReaderSettings) -> bool:
    """Whether the DALI reader cuts the views on the host (`augment.host_views`, OpenCV) instead of with DALI's
    operators (`data.geometry`): "opencv" yes, "dali" no, "auto" when the loader is not on the GPU
    (`use_gpu`) — on CPU DALI's resize and warp cost ~10x OpenCV's per frame, on the GPU DALI's run on the
    device (docs/benchmarks.md "Input pipelines"). Raises UsageError naming `data.geometry` for any other value."""
    if s.geometry not in ("auto", "dali", "opencv"):
        from ..errors import UsageError

        raise UsageError(f"data.geometry={s.geometry!r}: expected auto, dali or opencv")
    return s.geometry == "opencv" or (s.geometry == "auto" and not use_gpu(s.device))


def build_loader(cfg, rank: int, world: int, state: dict | None = None, plain: bool = False):
    """The training loader `data.loader` names: "dali" (`ClipLoader`), "torch" (the baseline
    `torch_reader.TorchClipLoader`) or "auto" (DALI when it can be imported, else the baseline, logged). `plain`:
    every augmentation off (`augment.without_augmentation`: both views the whole frames, as the probe reads them)."""
    kind = str(cfg.data.get("loader", "auto"))
    if kind == "auto":
        try:
            import nvidia.dali  # noqa: F401
            kind = "dali"
        except ImportError:
            log.warning("NVIDIA DALI is not installed: reading with the torch baseline loader (data.loader=torch)")
            kind = "torch"
    settings = ReaderSettings.from_config(cfg, rank, world)
    if plain:
        from .augment import without_augmentation

        settings = without_augmentation(settings)
    if kind == "dali":
        from .dali_reader import ClipLoader

        return ClipLoader(settings, state)
    if kind == "torch":
        from .torch_reader import TorchClipLoader

        return TorchClipLoader(settings, state)
    from ..errors import UsageError

    raise UsageError(f"data.loader={kind!r}: expected auto, dali or torch")


