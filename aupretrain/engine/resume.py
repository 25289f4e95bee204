"""What a resumed job may change: the new config against the checkpoint's, and applying what can change.

A checkpoint records the config that was in effect (`meta.json`). A job with another number of ranks loads the
checkpoint's DeepSpeed universal form (converted once, by rank 0, into `<checkpoint>/universal/`, or into
`<run>/universal/` for another run's or a read-only checkpoint), and its data
stream restarts its epoch. On resume every changed key is named:
- keys in `APPLIED` take effect from the first resumed step (the LR schedule's inputs, logging, evaluation,
  tracking, loader threads, augmentation, data paths — a new shard list restarts the data epoch —, S3 retries);
- any other change (model, objective, batch size, input size, ZeRO/precision, seed ...) cannot take effect on
  the restored weights, optimizer state and data stream, so the job is refused before anything is loaded.
The record is never rewritten: `<run>/config.yaml` stays the first job's config; each resumed job writes
`<run>/config.step_<N>.yaml` (`config.step_<N>.<k>.yaml` for the k-th job resuming from the same step) and tags
the MLflow run with what changed (`resume.step_<N>[.<k>].changed`).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..config import flatten
from ..errors import UsageError

log = logging.getLogger("aupretrain.train")

RESIZABLE_STAGES = (1, 2)  # DeepSpeed's ds_to_universal converts ZeRO-1/2 optimizer partitions (tested: 2 <-> 1)
# data.geometry (and data.device, which `auto` geometry follows) may change on resume: the DALI reader then starts a
# new epoch, logged (its saved pipeline state names operators the other pipeline lacks)
APPLIED = ("train.", "eval.", "tracking.", "run.name", "run.root", "run.dir", "data.num_threads", "data.prefetch",
           "data.device", "data.geometry", "data.loader", "data.verify_checksums", "data.augment.", "data.shards", "data.labels", "optim.lr",
           "optim.weight_decay", "optim.betas", "optim.momentum", "optim.warmup_steps", "optim.min_lr_ratio",
           "optim.lr_scaling", "optim.reference_batch", "synth.", "pack.", "storage.")


def changed_keys(old: dict, new: dict) -> dict[str, tuple[str | None, str | None]]:
    """{dotted key: (checkpoint value, new value)} for every key whose value differs (flattened, as strings)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(meta: dict, cfg: dict, world: int, ckpt: str) -> dict[str, tuple]:
    """The changes a resumed job applies; raises UsageError (naming every offending key) for the others, for
    a `train.steps` below the checkpoint's step, and for a `train.stop_at` at or below it (the job would train
    nothing).

    Args:
        meta: the checkpoint's meta.json (`world_size`, `config`, `step`).
        cfg: the new job's resolved config as a dict.
        world: the new job's world size.
        ckpt: the checkpoint folder, for the message.
    """
    saved_world = int(meta.get("world_size", world))
    stage = int(cfg["deepspeed"]["zero_optimization"]["stage"])
    step, steps = int(meta.get("step", 0)), int(cfg["train"]["steps"])
    if steps < step:  # the run's encoder, checkpoints and stop record are of step `step` already
        raise UsageError(f"{ckpt} is at step {step} and train.steps={steps} ends before it: a resumed run cannot go "
                         f"back; set train.steps >= {step}, or start a new run with run.dir=<new folder>")
    stop_at = cfg["train"].get("stop_at")
    # nothing to train: no false stop record, no conversion (a finished run rerun with its own stop_at >= steps is
    # the same run again, as without stop_at)
    if stop_at is not None and int(stop_at) <= step and int(stop_at) < steps:
        raise UsageError(f"{ckpt} is at step {step} and train.stop_at={stop_at} is not beyond it: this job would train "
                         f"nothing; raise train.stop_at above {step}, or drop it (train.stop_at=null) to train to "
                         f"train.steps={steps}")
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
        per_rank = int(cfg["data"]["batch_size"]) * int(cfg["deepspeed"].get("gradient_accumulation_steps", 1))
        scaling = str(cfg["optim"].get("lr_scaling", "none"))
        key = "global_batch" + (f" (optim.lr_scaling={scaling}: the peak LR follows it)" if scaling != "none" else "")
        changes[key] = (str(per_rank * saved_world), str(per_rank * world))  # clips per optimizer step
    return changes


def describe(changes: dict[str, tuple]) -> str:
    """The changes of `check_resume` as one line: "key: old -> new; ..."."""
    return "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changes.items())


class ResumePlan:
    """Where a job starts, decided before any data or state is touched: rank 0 chooses the checkpoint for
    `train.resume` (`choice.choose`, broadcast; a COMPLETE checkpoint missing a file is passed over), every rank vets it (no file that would run code) and checks
    what the new config changes (`check_resume`). Empty (`found` None) for a new run.

    Attributes: found ((step, checkpoint folder) or None), changes ({key: (old, new)}), reader (this rank's
    data-stream state, or None when the stream restarts its epoch).
    Raises (at construction, on every rank alike): UsageError for a checkpoint that cannot be resumed with this
    config or world size, or that holds a file that would run code.
    """

    def __init__(self, cfg, run_dir: Path, rank: int, world: int, is_main: bool):
        from omegaconf import OmegaConf

        from . import checkpoint, choice

        self.is_main = is_main
        self.run_dir = run_dir
        self.found = choice.choose(run_dir, cfg.train.resume, is_main, rank)
        self.changes: dict = {}
        self.reader = None
        if self.found:
            checkpoint.vet(self.found[1])
            self.changes = check_resume(checkpoint.read_meta(self.found[1]), OmegaConf.to_container(cfg, resolve=True),
                                        world, str(self.found[1]))
            self.reader = checkpoint.reader_state(self.found[1], rank, world)

    def prepare(self, ds_config: dict) -> Path | None:
        """The folder DeepSpeed loads (collective): the checkpoint itself, or — on another number of ranks — its
        universal form (converted once by rank 0; `ds_config` gains `checkpoint.load_universal`)."""
        from . import checkpoint

        if not self.found:
            return None
        if "world_size" in self.changes:
            ds_config["checkpoint"] = {"load_universal": True}
            return checkpoint.universal(self.found[1], self.is_main, self.run_dir)
        return self.found[1]

    def load(self, engine, load_from: Path | None, optimizer, scheduler, cfg, global_batch: int, run_dir: Path,
             restored: bool) -> tuple[int, str | None]:
        """Load the checkpoint into `engine` and re-apply the settings a resume may change (`optim.apply_settings`).
        Returns (steps already done, MLflow run id to continue); (0, None) for a new run. A checkpoint of another run
        (`train.resume=PATH`) continues in a new MLflow run. `restored`: whether the data stream continues where
        it stopped (else it restarts its epoch, which is logged as a warning)."""
        from . import checkpoint
        from .optim import apply_settings

        if not self.found:
            return 0, None
        state = checkpoint.load(engine, load_from)
        if load_from.parent == Path(self.run_dir) / "universal":  # a conversion of another run's checkpoint: done
            checkpoint.barrier()  # with once every rank holds it (a relaunch converts again if it needs it)
            if self.is_main:
                import shutil

                shutil.rmtree(load_from, ignore_errors=True)
        start, run_id = int(state["step"]), state.get("mlflow_run_id")
        if not self.found[1].is_relative_to(run_dir):
            run_id = None
        apply_settings(optimizer, scheduler, cfg, global_batch)
        (log.info if restored else log.warning if self.is_main else log.debug)(  # said once, by rank 0; a restarted
            # epoch reads some clips again: said loudly
            "resumed from %s at step %d (data stream %s)%s", self.found[1], start,
            "continues where it stopped" if restored else "restarts its epoch: clips of this epoch already "
            "read are read again (documented in docs/launching.md)",
            f"; changed: {describe(self.changes)}" if self.changes else "")
        return start, run_id
