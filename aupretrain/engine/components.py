"""The trainer's components, built from the config (torchtitan's `components/` idea): the process group and run
folder, the data loader, the method inside a DeepSpeed engine with its optimizer and schedule, where the job
starts (`resume.ResumePlan`), the MLflow tracker with the run's record, and the checkpoint cadence. The loop in
`trainer.py` only calls them."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import storage
from ..data.dataset import build_loader, manifest_as_read
from ..methods import build_method, method_class
from ..objectives import build_objective
from ..track.host import device_description, run_tags
from ..track.tracker import Tracker
from . import checkpoint
from .distributed import DistInfo, broadcast_object, gather_objects, init_distributed
from .metrics import skipped_metrics
from .optim import build_optimizer, lr_lambda
from .resume import ResumePlan, describe
from .run_folder import resolve_run_dir
from .threads import cpu_threads

log = logging.getLogger("aupretrain.train")


def deepspeed_config(cfg: DictConfig, world: int) -> dict:
    """The DeepSpeed config dict: `cfg.deepspeed` resolved, with `train_micro_batch_size_per_gpu` = data.batch_size
    (clips per rank) and `train_batch_size` = data.batch_size x `world` x gradient_accumulation_steps."""
    ds = OmegaConf.to_container(cfg.deepspeed, resolve=True)
    accum = int(ds.get("gradient_accumulation_steps", 1))
    ds["train_micro_batch_size_per_gpu"] = int(cfg.data.batch_size)
    ds["train_batch_size"] = int(cfg.data.batch_size) * world * accum
    return ds


def check_precision(cfg: DictConfig) -> None:
    """Refuse `deepspeed.fp16` / `deepspeed.bf16` when DeepSpeed's accelerator here has no kernels for that type
    (e.g. fp16 on a CPU without AVX512-FP16/AMX: `is_fp16_supported()` is False), before any process group or
    data exists; DeepSpeed itself would refuse it only inside `deepspeed.initialize`, after the loader started.
    Raises UsageError naming the setting, the accelerator and what works instead."""
    from deepspeed.accelerator import get_accelerator

    from ..errors import UsageError

    acc = get_accelerator()
    for key, supported in (("fp16", acc.is_fp16_supported), ("bf16", acc.is_bf16_supported)):
        if cfg.deepspeed.get(key, {}).get("enabled") and not supported():
            raise UsageError(f"deepspeed.{key}.enabled=true: DeepSpeed's {acc.device_name()} accelerator has no "
                             f"{key} support on this machine; use deepspeed.torch_autocast.enabled=true, "
                             f"another 16-bit type, or fp32 (the default)")


def check_settings(cfg: DictConfig, precision: bool = True) -> None:
    """Every refusal that needs no process group, data or weights, in one place — precision on this machine's
    accelerator (`precision`), the method's own conditions (`Method.check`), the optimizer against the ZeRO stage —
    so that `train.py --check` (a launcher's or a Kubernetes entrypoint's pre-flight) refuses what training would.
    Raises UsageError naming the setting."""
    from .optim import check_optimizer

    if precision:
        check_precision(cfg)
    method_class(cfg.objective.name).check(cfg)
    check_optimizer(cfg)


def torch_threads(cfg: DictConfig, local_ranks: int) -> int:
    """Threads per rank: `train.torch_threads`, else what `threads.cpu_threads` reads from $OMP_NUM_THREADS or this
    process' CPUs, shared among the host's `local_ranks` ranks."""
    return cpu_threads(cfg.train.torch_threads, local_ranks)


def absolute_paths(cfg: DictConfig) -> None:
    """Local `data.shards`, `data.labels` and `run.dir` made absolute (against this job's working directory)
    before the config is recorded or compared with a checkpoint's: a job resumed from another folder then reads
    the same data, and the record says which data (a relative path is ambiguous across working directories)."""
    for section, key in (("data", "shards"), ("data", "labels"), ("run", "dir")):
        value = cfg[section].get(key)
        if value and isinstance(value, str) and not storage.is_s3(value) and not os.path.isabs(value):
            cfg[section][key] = os.path.abspath(value)


@dataclass
class Components:
    """What one training job is made of (`build`); `start`: the steps already done (0, or the checkpoint's step)."""
    cfg: DictConfig
    dist: DistInfo
    run_dir: Path
    objective: object
    loader: object
    engine: object
    plan: ResumePlan
    start: int
    run_id: str | None


def build(cfg: DictConfig) -> Components:
    """Every rank (collective): settings checked, S3 retries configured, the process group joined, torch threads
    set (`torch_threads`), local paths made absolute, the run folder resolved (created, checked writable and
    locked: `run_folder`), the seed set; the resume
    decided and refused up front when it cannot work (before any data or state is touched); then the loader,
    the method, its optimizer and warmup + cosine schedule inside `deepspeed.initialize`, and the checkpoint
    loaded. The order is fixed: a resumed run draws the same random numbers as an uninterrupted one.
    Raises UsageError for settings it cannot train or resume with."""
    import deepspeed

    check_settings(cfg)  # settings it cannot train with: refused before any process group or data
    storage.configure(cfg.get("storage", {}).get("s3"))  # S3 retries for boto3 and DALI, before any request
    d = init_distributed(cfg.train.get("collective_timeout_s"))
    torch.set_num_threads(torch_threads(cfg, d.local_world))
    absolute_paths(cfg)
    run_dir = resolve_run_dir(cfg, d)
    torch.manual_seed(int(cfg.run.seed))
    objective = build_objective(cfg.objective)
    plan = ResumePlan(cfg, run_dir, d.rank, d.world, d.is_main)  # rank 0 decides for all
    loader = build_loader(cfg, d.rank, d.world, state=plan.reader)
    model = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    ds_cfg = deepspeed_config(cfg, d.world)
    load_from = plan.prepare(ds_cfg)
    global_batch = int(ds_cfg["train_batch_size"])
    opt = build_optimizer(cfg, model, global_batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds_cfg)
    start, run_id = plan.load(engine, load_from, opt, sched, cfg, global_batch, run_dir, loader.restored)
    return Components(cfg, d, run_dir, objective, loader, engine, plan, start, run_id)


def mlflow_run_name(cfg, run_dir: Path) -> str:
    """The name of a new MLflow run: the run folder's (`<run.root>/<run.name>-<time>`), or `run.name` where it was
    set to something else than its default (the objective's name) beside a fixed `run.dir`."""
    name = str(cfg.run.get("name") or "")
    return name if cfg.run.get("dir") and name and name != str(cfg.objective.name) else run_dir.name


def open_tracker(c: Components) -> tuple[Tracker, Path]:
    """The job's MLflow run (collective): rank 0 creates it, or continues the checkpoint's, and broadcasts its id
    (`c.run_id` is updated), tagged with the git sha, world size, every rank's host and device and the library
    versions. Rank 0 then writes the config record — `<run>/config.yaml` for the first job, `config.step_<N>.yaml`
    for a resumed one, `config.step_<N>.<k>.yaml` for the k-th job resuming from the same step (a record is never
    rewritten; logged with the changes as tags `resume.step_<N>[.<k>].changed`) — and logs the data:
    samples, samples skipped at start, and the manifest of the shards read as MLflow's dataset input (again when
    a resumed job changes `data.shards`). Returns (tracker, the config record's path; meaningful on rank 0)."""
    cfg, d, loader, found = c.cfg, c.dist, c.loader, c.plan.found
    where = gather_objects((socket.gethostname(), device_description()))  # every rank's host and device
    tracker = Tracker(cfg, d.is_main, run_name=mlflow_run_name(cfg, c.run_dir), run_id=c.run_id, backfill_until=c.start,
                      run_dir=c.run_dir if d.is_main else None,
                      tags=run_tags(cfg, d.world, [h for h, _ in where], [dv for _, dv in where]))
    c.run_id = broadcast_object(tracker.run_id)
    first = not found or not (c.run_dir / "config.yaml").exists()
    record = c.run_dir / ("config.yaml" if first else f"config.step_{c.start}.yaml")
    again = 1
    while not first and record.exists():  # a second job resuming from the same step (the first one crashed)
        again += 1
        record = c.run_dir / f"config.step_{c.start}.{again}.yaml"
    if d.is_main:
        OmegaConf.save(cfg, record, resolve=True)
        if found:
            key = f"resume.step_{c.start}" + (f".{again}" if again > 1 else "")
            tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), record.name)
            tracker.set_tags({f"{key}.changed": describe(c.plan.changes) or "nothing",
                              f"{key}.checkpoint": str(found[1])})
        tracker.log_metrics({"data/samples": loader.manifest.samples, **skipped_metrics(loader)}, step=c.start)
        if not found or "data.shards" in c.plan.changes:  # the shards read, those left out named
            tracker.log_dataset(str(cfg.data.shards), manifest_as_read(loader.manifest, loader.bad_shards))
        log.info("run %s: %d ranks, %d clips/rank/step, %d steps, shards %s (%d samples, %d identities)",
                 c.run_dir, d.world, cfg.data.batch_size, cfg.train.steps, cfg.data.shards,
                 loader.manifest.samples, len(loader.manifest.identities))
    return tracker, record


class Checkpointer:
    """The checkpoint component: saves every `train.checkpoint_every` steps, on a stop and at the last step
    (never twice at one step), keeping the newest `train.keep_checkpoints` (0: all). Each checkpoint holds the
    DeepSpeed state, every rank's data-stream state and meta.json (MLflow run id, world size, epoch, config).
    `save` is collective; a write that fails raises the same EnvironmentFault on every rank, the previous
    checkpoint kept (`checkpoint.save`)."""

    def __init__(self, c: Components, tracker: Tracker):
        self.c, self.tracker = c, tracker
        self.every = int(c.cfg.train.checkpoint_every or 0)
        self.keep = int(c.cfg.train.get("keep_checkpoints", 0))
        self.saved = c.start

    def save(self, n: int) -> None:
        """Checkpoint step `n` (collective)."""
        c = self.c
        meta = {"mlflow_run_id": self.tracker.run_id or c.run_id, "world_size": c.dist.world,
                "epoch": c.loader.epoch, "config": OmegaConf.to_container(c.cfg, resolve=True)}
        checkpoint.save(c.engine, c.run_dir, n, meta, c.dist.is_main, c.dist.rank, c.loader.state(), self.keep)
        self.saved = n

    def due(self, n: int, end: int) -> None:
        """Save at step `n` when it is a multiple of `train.checkpoint_every` before `end`."""
        if self.every and n % self.every == 0 and n < end:
            self.save(n)

    def last(self, end: int) -> None:
        """Save at `end` unless that step is saved already or no step ran."""
        if self.c.start < end and self.saved != end:
            self.save(end)

