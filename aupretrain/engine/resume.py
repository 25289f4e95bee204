"""What a resumed job may change: the new config against the checkpoint's, and applying what can change.

A checkpoint records the config that was in effect (`meta.json`). A job with another number of ranks loads the
checkpoint's DeepSpeed universal form (converted once, by rank 0, into `<checkpoint>/universal/`), and its data
stream restarts its epoch. On resume every changed key is named:
- keys in `APPLIED` take effect from the first resumed step (the LR schedule's inputs, logging, evaluation,
  tracking, loader threads, augmentation, data paths — a new shard list restarts the data epoch —, S3 retries);
- any other change (model, objective, batch size, input size, ZeRO/precision, seed ...) cannot take effect on
  the restored weights, optimizer state and data stream, so the job is refused before anything is loaded.
The record is never rewritten: `<run>/config.yaml` stays the first job's config; each resumed job writes
`<run>/config.step_<N>.yaml` and tags the MLflow run with what changed (`resume.step_<N>.changed`).
"""
from __future__ import annotations

from ..config import flatten
from ..errors import UsageError

RESIZABLE_STAGES = (1, 2)  # DeepSpeed's ds_to_universal converts ZeRO-1/2 optimizer partitions (tested: 2 <-> 1)
APPLIED = ("train.", "eval.", "tracking.", "run.name", "run.root", "run.dir", "data.num_threads", "data.prefetch",
           "data.device", "data.loader", "data.verify_checksums", "data.augment.", "data.shards", "data.labels", "optim.lr",
           "optim.weight_decay", "optim.betas", "optim.momentum", "optim.warmup_steps", "optim.min_lr_ratio",
           "optim.lr_scaling", "optim.reference_batch", "synth.", "pack.", "storage.")


def changed_keys(old: dict, new: dict) -> dict[str, tuple[str | None, str | None]]:
    """{dotted key: (checkpoint value, new value)} for every key whose value differs (flattened, as strings)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(meta: dict, cfg: dict, world: int, ckpt: str) -> dict[str, tuple]:
    """The changes a resumed job applies; raises UsageError (naming every offending key) for the others.

    Args:
        meta: the checkpoint's meta.json (`world_size`, `config`, `step`).
        cfg: the new job's resolved config as a dict.
        world: the new job's world size.
        ckpt: the checkpoint folder, for the message.
    """
    saved_world = int(meta.get("world_size", world))
    stage = int(cfg["deepspeed"]["zero_optimization"]["stage"])
    if saved_world != world and stage not in RESIZABLE_STAGES:
        raise UsageError(f"{ckpt} was written by {saved_world} ranks and this job has {world}: resuming on another "
                         f"number of ranks goes through DeepSpeed universal checkpoints, supported here for ZeRO "
                         f"stages {', '.join(map(str, RESIZABLE_STAGES))}, not stage {stage}; resume with "
                         f"{saved_world} ranks (or start a new run with run.dir=<new folder>)")
    changes = changed_keys(meta.get("config") or {}, cfg)
    refused = {k: v for k, v in changes.items() if not k.startswith(APPLIED)}
    if refused and all(a is None for a, _ in refused.values()):  # settings the checkpoint's version did not have
        raise UsageError(f"{ckpt} was written by an older aupretrain without the settings {', '.join(refused)}; its "
                         "optimizer and model state may not match this version: resume it with the version that "
                         "wrote it, or start a new run with run.dir=<new folder>")
    if refused:
        listed = ", ".join(f"{k} ({a} -> {b})" for k, (a, b) in refused.items())
        raise UsageError(f"{ckpt}: these settings differ from the checkpoint's and cannot take effect on a resumed "
                         f"run: {listed}; revert them, or start a new run with run.dir=<new folder>")
    if saved_world != world:
        changes["world_size"] = (str(saved_world), str(world))
    return changes


def describe(changes: dict[str, tuple]) -> str:
    """The changes of `check_resume` as one line: "key: old -> new; ..."."""
    return "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changes.items())
