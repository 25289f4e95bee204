"""The dataset as training reads it, whatever the loader: reader settings from the config, rank 0's check of
the manifest and shards (broadcast to every rank), the start-up size check, the batch helpers both loaders
share (partners, video ids), and the choice of loader (`data.loader`: DALI `ClipLoader` or the torch baseline).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch

from . import integrity, shards, storage

log = logging.getLogger(__name__)


@dataclass
class ReaderSettings:
    root: str
    batch_size: int
    input_size: int
    rank: int = 0
    world: int = 1
    device: str = "auto"
    num_threads: int = 2
    prefetch: int = 2
    shuffle_buffer: int = 256
    seed: int = 0
    scale: tuple[float, float] = (0.6, 1.0)
    rotate: float = 0.0  # degrees, +-: one in-plane rotation per clip and view
    brightness: tuple[float, float] = (0.7, 1.3)
    contrast: tuple[float, float] = (0.7, 1.3)
    saturation: tuple[float, float] = (0.6, 1.4)
    hue: float = 10.0
    blur_sigma: tuple[float, float] = (0.1, 1.2)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    verify_checksums: bool = False
    labels: str | None = None  # folder of <video>.labels.json: adds `au` [B, T, A] to every batch

    @classmethod
    def from_config(cls, cfg, rank: int, world: int) -> "ReaderSettings":
        d, aug = cfg.data, cfg.data.augment
        return cls(root=str(d.shards), batch_size=int(d.batch_size), input_size=int(d.input_size), rank=rank,
                   world=world, device=str(d.device), num_threads=int(d.num_threads), prefetch=int(d.prefetch),
                   shuffle_buffer=int(d.shuffle_buffer), seed=int(cfg.run.seed) + 7919 * rank,
                   scale=tuple(aug.scale), rotate=float(aug.rotate), brightness=tuple(aug.brightness),
                   contrast=tuple(aug.contrast),
                   saturation=tuple(aug.saturation), hue=float(aug.hue), blur_sigma=tuple(aug.blur_sigma),
                   mean=tuple(cfg.model.mean), std=tuple(cfg.model.std), verify_checksums=bool(d.verify_checksums),
                   labels=str(d.labels) if d.get("labels") else None)


def check_shards(root: str, manifest: shards.Manifest, verify: bool = False
                 ) -> tuple[list[str], list[str], list[dict], dict[str, int], list[int]]:
    """Usable shard paths, their index paths, bad shards [{"shard", "reason", "samples"}] (missing, another size
    than the manifest's — a truncated upload —, index missing, unreadable or pointing past the end, checksum),
    {reason: samples} left out of usable shards (samples missing a member; DALI skips them), and the number of
    complete samples of each usable shard (so no other rank needs to read an index to split the samples)."""
    exts = shards.frame_exts(manifest.clip_len) + ["json"]
    paths, idx, bad, skipped, counts = [], [], [], {}, []
    for s in manifest.shards:
        tar, ix = storage.join(root, s.name), storage.join(root, s.index)
        try:
            n = storage.size(tar)
            if n != s.bytes:
                raise ValueError(f"{integrity.TRUNCATED if n < s.bytes else 'wrong size'}: {n} bytes, the manifest "
                                 f"says {s.bytes}")
            if not storage.exists(ix):
                raise FileNotFoundError("index file missing")
            entries = integrity.parse_index(storage.read_text(ix), ix)
            missing = integrity.check_index(entries, n, exts, tar)
            if verify and not storage.is_s3(root) and shards.sha256_file(tar) != s.sha256:
                raise ValueError("sha256 differs from the manifest")
        except storage.EnvironmentFault:  # S3 down or throttled past its retries: the storage's fault, not the shard's
            raise
        except Exception as e:  # noqa: BLE001 - every failure mode of a shard is reported the same way
            log.warning("skipping shard %s: %s", tar, e)
            bad.append({"shard": tar, "reason": str(e), "samples": s.samples})
            continue
        if missing:
            log.warning("%s: %d samples miss a member (e.g. %s): skipped", tar, len(missing), missing[0])
            skipped[integrity.MISSING] = skipped.get(integrity.MISSING, 0) + len(missing)
        paths.append(tar)
        idx.append(ix)
        counts.append(len(entries) - len(missing))
    if not paths:
        raise RuntimeError(f"{root}: no usable shards ({len(bad)} bad; first: {bad[0] if bad else 'none listed'})")
    return paths, idx, bad, skipped, counts


def shared_dataset_view(root: str, verify: bool = False
                        ) -> tuple[shards.Manifest, list[str], list[str], list[dict], dict[str, int], list[int]]:
    """(manifest, *check_shards(...)) as rank 0 sees them, on every rank.

    Rank 0 alone reads the manifest and checks every shard (size, index, optional sha256) — one pass over
    storage per job instead of one per rank (at 512 ranks x 10k shards that is the difference between 10k and
    5M requests at start) — and broadcasts the result, so every rank splits exactly the same shard list even
    when its own view of storage differs (NFS attribute caches, a transient S3 error). An error on rank 0 (no
    manifest, no usable shard) is raised on every rank, so none waits in a collective. Without a process group
    (one process) this is `load_manifest` + `check_shards`."""
    import torch.distributed as dist

    many = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if not many or dist.get_rank() == 0:
        try:
            manifest = shards.load_manifest(root)
            view: tuple | BaseException = (manifest, *check_shards(root, manifest, verify))
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
    return view


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
                   generator: torch.Generator, settings: ReaderSettings, labels=None) -> dict:
    """The batch contract from two views [B, T, 3, S, S] and the clips' metadata (both loaders): identity [B]
    (-1 for an identity the manifest does not list), video [B] (`video_id`), partner [B] (drawn from
    `generator`), the batch blur (`augment.blur_views`), and `au` [B, T, A] when `labels` (FrameLabels) is set.
    Raises KeyError when a clip's metadata lacks `identity` or `video`."""
    from .augment import blur_views

    ident = torch.tensor([identity_ids.get(m["identity"], -1) for m in metas])
    batch = {"view1": view1, "view2": view2, "identity": ident,
             "video": torch.tensor([video_id(m["video"]) for m in metas]),
             "partner": partners(ident, generator), "meta": metas}
    blur_views(batch, settings, generator)
    if labels is not None:
        batch["au"] = torch.from_numpy(labels.batch(metas))
    return batch


def build_loader(cfg, rank: int, world: int, state: dict | None = None):
    """The training loader `data.loader` names: "dali" (`ClipLoader`), "torch" (the baseline
    `torch_reader.TorchClipLoader`) or "auto" (DALI when it can be imported, else the baseline, logged)."""
    kind = str(cfg.data.get("loader", "auto"))
    if kind == "auto":
        try:
            import nvidia.dali  # noqa: F401
            kind = "dali"
        except ImportError:
            log.warning("NVIDIA DALI is not installed: reading with the torch baseline loader (data.loader=torch)")
            kind = "torch"
    settings = ReaderSettings.from_config(cfg, rank, world)
    if kind == "dali":
        from .dali_reader import ClipLoader

        return ClipLoader(settings, state)
    if kind == "torch":
        from .torch_reader import TorchClipLoader

        return TorchClipLoader(settings, state)
    from ..errors import UsageError

    raise UsageError(f"data.loader={kind!r}: expected auto, dali or torch")


