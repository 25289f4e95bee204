"""The training loop: DeepSpeed engine, DALI batches, gathered negatives, MLflow, checkpoints."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..data import integrity, storage
from ..data.dataset import build_loader, manifest_as_read
from ..data.storage import EnvironmentFault
from ..methods import Method, build_method, method_class
from ..models.encoder import save_encoder
from ..objectives import build_objective
from . import checkpoint, resume
from .distributed import DistInfo, barrier, broadcast_object, gather_objects, init_distributed, mean_across_ranks
from .metrics import StepTimer
from .online_probe import OnlineProbe
from .optim import apply_settings, build_optimizer, lr_lambda
from .signals import StopRequest
from .step import train_step
from .host import device_description, run_tags
from .tracking import Tracker

log = logging.getLogger("aupretrain.train")
AU_HEAD = "au_head"  # <run>/au_head: the method's own AU classifier as an AU head folder (supervised runs)


def resolve_run_dir(cfg: DictConfig, d: DistInfo) -> Path:
    """The run folder, absolute, the same on every rank: `run.dir`, else `<run.root>/<run.name>-<YYYYmmdd-HHMMSS>`
    (rank 0's local time, broadcast). Rank 0 creates it; collective (a barrier follows)."""
    if cfg.run.dir:
        path = Path(cfg.run.dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S") if d.is_main else None
        path = Path(cfg.run.root) / f"{cfg.run.name}-{broadcast_object(stamp)}"
    if d.is_main:
        path.mkdir(parents=True, exist_ok=True)
    barrier()
    return path.resolve()


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


def export_encoder(engine, path: Path, extra: dict) -> None:
    """Rank 0 writes the encoder's fp32 weights (gathered first under ZeRO-3); collective. A failed write (a full
    disk ...) raises the same `EnvironmentFault` on every rank (`checkpoint.write_on_main`)."""
    import deepspeed

    enc = engine.module.encoder
    params = list(enc.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=int(engine.zero_optimization_stage()) == 3):
        checkpoint.write_on_main(lambda tmp: save_encoder(enc, tmp, extra), path, "the trained encoder",
                                 engine.global_rank == 0)


def export_au_head(engine, path: Path, aus, meta: dict) -> bool:
    """Rank 0 writes the method's own AU classifier (`Method.au_head`: the supervised bound's, fitted on the
    pretraining labels) as an AU head folder (`aupretrain.models.head`) that `aupretrain-extract --head` and
    `aupretrain-eval --head` read; collective. `aus`: a callable giving the AU names (rank 0 only). Returns
    False when the method has no such classifier. A failed write raises `EnvironmentFault` on every rank."""
    import shutil

    import deepspeed

    from ..models.head import save_head

    module = engine.module
    if type(module).au_head is Method.au_head:
        return False
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None,
                                           enabled=int(engine.zero_optimization_stage()) == 3):
        tensors = module.au_head()
    def write(tmp: Path) -> None:  # on rank 0; the AU names are read here so a failure is the same one fault
        names = list(aus())
        save_head(tmp, tensors, {"protocol": "linear", "aus": names, "thresholds": [0.5] * len(names),
                                 "code_dim": int(tensors["linear.weight"].shape[1]), **meta})

    if engine.global_rank == 0:
        shutil.rmtree(path, ignore_errors=True)  # a finished run exported again
    checkpoint.write_on_main(write, path, "the AU head", engine.global_rank == 0)
    return True


RUNTIME_DAMAGE = (integrity.BAD_JPEG, integrity.BAD_JSON)  # found by a rank while reading (the same keys on all)


def skipped_metrics(loader, found: dict[str, float] | None = None) -> dict[str, float]:
    """`data/skipped` and `data/skipped/<reason>`: samples left out at start (rank 0's check) plus the damaged
    samples every rank found while reading (`found`, summed over ranks)."""
    out = {f"data/skipped/{r}": float(n) for r, n in loader.skipped.items()}
    for r, n in (found or {}).items():
        out[f"data/skipped/{r}"] = out.get(f"data/skipped/{r}", 0.0) + round(n)
    out["data/skipped"] = sum(out.values())
    return out


def train(cfg: DictConfig) -> dict:
    """Pretrain on every rank (collective): resume from a checkpoint of `train.resume` when one is found, run
    `train.steps` (or up to `train.stop_at`) DeepSpeed steps, log to MLflow, checkpoint every `train.checkpoint_every`
    steps, on a stop signal and at the last step; once all `train.steps` are done, export `<run>/encoder.pt` (and
    `<run>/au_head` for methods with one) and, on rank 0 with `train.eval_at_end`, evaluate it in a fresh process.

    Returns {"run_dir", "mlflow_run_id", "loss_history" (mean train/loss per logging step), "rank"}, plus
    "stopped_at" (the step) when it stopped early or "eval_exit" (the evaluation's exit status) on rank 0.
    Raises UsageError for settings it cannot train or resume with, EnvironmentFault when a checkpoint or export
    cannot be written (on every rank alike)."""
    import deepspeed

    check_precision(cfg)
    storage.configure(cfg.get("storage", {}).get("s3"))  # S3 retries for boto3 and DALI, before any request
    d = init_distributed(cfg.train.get("collective_timeout_s"))
    threads = cfg.train.torch_threads or max(1, (os.cpu_count() or 1) // max(1, d.local_world))
    torch.set_num_threads(int(threads))
    run_dir = resolve_run_dir(cfg, d)
    torch.manual_seed(int(cfg.run.seed))
    objective = build_objective(cfg.objective)
    method_class(cfg.objective.name).check(cfg)  # settings the method cannot train with: refused first
    found = checkpoint.choose(run_dir, cfg.train.resume, d.is_main, d.rank)  # rank 0 decides for all
    changes: dict = {}
    if found:  # refused up front (one clear error) before any data or state is touched
        checkpoint.vet(found[1])
        changes = resume.check_resume(checkpoint.read_meta(found[1]), OmegaConf.to_container(cfg, resolve=True),
                                      d.world, str(found[1]))
    reader = checkpoint.reader_state(found[1], d.rank, d.world) if found else None
    loader = build_loader(cfg, d.rank, d.world, state=reader)
    model = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    ds_cfg = deepspeed_config(cfg, d.world)
    load_from = found[1] if found else None
    if "world_size" in changes:  # another number of ranks: the universal form of the checkpoint
        load_from = checkpoint.universal(found[1], d.is_main)
        ds_cfg["checkpoint"] = {"load_universal": True}
    opt = build_optimizer(cfg, model, int(ds_cfg["train_batch_size"]))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds_cfg)
    start, run_id = 0, None
    if found:
        state = checkpoint.load(engine, load_from)
        start, run_id = int(state["step"]), state.get("mlflow_run_id")
        if not found[1].is_relative_to(run_dir):  # another run's checkpoint (train.resume=PATH): a new MLflow run
            run_id = None
        apply_settings(opt, sched, cfg, int(ds_cfg["train_batch_size"]))
        (log.info if loader.restored else log.warning)(  # a restarted epoch reads some clips again: said loudly
            "resumed from %s at step %d (data stream %s)%s", found[1], start,
            "continues where it stopped" if loader.restored else "restarts its epoch: clips of this epoch already "
            "read are read again (documented in docs/launching.md)",
            f"; changed: {resume.describe(changes)}" if changes else "")
    import socket

    where = gather_objects((socket.gethostname(), device_description()))  # every rank's host and device, for the tags
    tracker = Tracker(cfg, d.is_main, run_name=run_dir.name, run_id=run_id, run_dir=run_dir if d.is_main else None,
                      tags=run_tags(cfg, d.world, [h for h, _ in where], [dv for _, dv in where]))
    run_id = broadcast_object(tracker.run_id)
    if d.is_main:
        first = not found or not (run_dir / "config.yaml").exists()
        record = run_dir / ("config.yaml" if first else f"config.step_{start}.yaml")  # the record is never rewritten
        OmegaConf.save(cfg, record, resolve=True)
        if found:
            tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), record.name)
            tracker.set_tags({f"resume.step_{start}.changed": resume.describe(changes) or "nothing",
                              f"resume.step_{start}.checkpoint": str(found[1])})
        tracker.log_metrics({"data/samples": loader.manifest.samples, **skipped_metrics(loader)}, step=start)
        if not found or "data.shards" in changes:  # the shards read, those left out named (a new dataset: again)
            tracker.log_dataset(str(cfg.data.shards), manifest_as_read(loader.manifest, loader.bad_shards))
        log.info("run %s: %d ranks, %d clips/rank/step, %d steps, shards %s (%d samples, %d identities)",
                 run_dir, d.world, cfg.data.batch_size, cfg.train.steps, cfg.data.shards,
                 loader.manifest.samples, len(loader.manifest.identities))
    online = OnlineProbe(cfg, d.is_main)
    b = int(cfg.data.batch_size)
    keep = int(cfg.train.get("keep_checkpoints", 0))
    check_every = max(1, int(cfg.train.get("signal_check_every", 1)))  # a collective + host sync: not every step
    accum = int(cfg.deepspeed.get("gradient_accumulation_steps", 1))
    clip_len = loader.clip_len
    timer = StepTimer()
    history: list[float] = []
    it = iter(loader)
    meta = lambda: {"mlflow_run_id": tracker.run_id or run_id, "world_size": d.world,  # noqa: E731
                    "epoch": loader.epoch, "config": OmegaConf.to_container(cfg, resolve=True)}
    from tqdm import tqdm

    steps = int(cfg.train.steps)
    end = min(steps, int(cfg.train.stop_at)) if cfg.train.get("stop_at") else steps  # chained jobs stop early
    stop, saved, why = StopRequest(), start, "train.stop_at"
    bar = tqdm(range(start, end), desc="train", disable=not d.is_main or None, initial=start, total=steps)

    def save(n: int) -> None:
        try:
            checkpoint.save(engine, run_dir, n, meta(), d.is_main, d.rank, loader.state(), keep)
        except EnvironmentFault:  # disk full ...: raised on every rank alike, the previous checkpoint kept
            bar.close()
            stop.close()
            tracker.finish("FAILED")
            raise
    for step in bar:
        t0 = time.perf_counter()
        batches = [next(it) for _ in range(accum)]
        timer.data_wait(time.perf_counter() - t0)
        loss, parts = train_step(engine, objective, batches, d.rank)
        timer.step(accum * b * clip_len)
        n = step + 1
        if n % int(cfg.train.log_every) == 0 or n == end:
            m = mean_across_ranks({"train/loss": loss.detach(), **{f"train/{k}": v for k, v in parts.items()},
                                   **{f"found/{r}": torch.tensor(float(loader.found_damaged.get(r, 0)))
                                      for r in RUNTIME_DAMAGE}})
            m.update(skipped_metrics(loader, {r: m.pop(f"found/{r}") * d.world for r in RUNTIME_DAMAGE}))
            m.update(timer.summary(d.world))
            m["train/lr"] = engine.get_lr()[0]
            m["data/epoch"] = loader.epoch
            history.append(m["train/loss"])
            tracker.log_metrics(m, step=n)
            bar.set_postfix(loss=f"{m['train/loss']:.3f}", fps=f"{m['perf/frames_per_s']:.0f}")
            if d.is_main and bar.disable:  # no terminal (batch jobs, CI): progress as log lines
                terms = " ".join(f"{k[6:]} {v:.3f}" for k, v in m.items() if k.startswith("train/") and k != "train/lr")
                log.info("step %d/%d %s lr %.2e %.0f frames/s stall %.1f%%", n, steps, terms,
                         m["train/lr"], m["perf/frames_per_s"], m["perf/data_stall_pct"])
        if online.due(n):  # rank 0, no gradient; the other ranks wait at the next collective
            tracker.log_metrics(online(n, engine.module.encoder), step=n)
        if cfg.train.checkpoint_every and n % int(cfg.train.checkpoint_every) == 0 and n < end:
            save(n)
            saved = n
        if n < end and n % check_every == 0 and stop.agreed(engine.device):
            end, why = n, "signal"  # preempted (on any rank): checkpoint here and return
            break
    bar.close()
    if start < end and saved != end:
        save(end)
    stop.close()  # after the last checkpoint: a signal during the save must not kill it
    if end < steps:
        log.info("stopped at step %d of %d (%s): run again with run.dir=%s to continue", end, steps, why, run_dir)
        if d.is_main:
            checkpoint.record_stop(run_dir, end, steps, why, d.world, tracker.run_id or run_id)
        tracker.finish("KILLED")
        return {"run_dir": str(run_dir), "mlflow_run_id": run_id, "loss_history": history, "rank": d.rank,
                "stopped_at": end}
    run_id = broadcast_object(tracker.run_id or run_id)  # a store that was down at start may have answered since
    try:  # a full disk here: one error on every rank, the final checkpoint is complete (a rerun exports again)
        export_encoder(engine, run_dir / "encoder.pt", {"step": steps, "mlflow_run_id": run_id})
        export_au_head(engine, run_dir / AU_HEAD, lambda: loader.labels.names(),
                       {"source": f"training run {run_dir.name}: objective={cfg.objective.name}, fitted on the "
                                  f"labels at data.labels={cfg.data.labels}", "dataset": str(cfg.data.shards),
                        "label_threshold": float(cfg.objective.get("label_threshold", 0.5)), "steps": steps})
        barrier()
        if d.is_main:
            checkpoint.record_stop(run_dir, steps, steps, "finished", d.world, tracker.run_id or run_id)
    except EnvironmentFault:
        tracker.finish("FAILED")
        raise
    result = {"run_dir": str(run_dir), "mlflow_run_id": run_id, "loss_history": history, "rank": d.rank}
    if d.is_main:
        tracker.log_artifact(run_dir / "config.yaml")  # the first job's; resumed jobs logged theirs at start
        tracker.finish()
        if cfg.train.eval_at_end:
            result["eval_exit"] = evaluate_in_own_process(run_dir, record, steps, tracker.run_id)
    return result


def evaluate_in_own_process(run_dir: Path, config: Path, step: int, run_id: str | None) -> int:
    """`aupretrain-eval` on the exported encoder as a fresh process (spawned, not forked: no CUDA, NCCL or DALI
    threads of the training job are inherited, and it gets every core); results go to <run>/eval.json and
    the same MLflow run; `<run>/au_head`, when the method wrote one, is scored as a row of its own. Returns its
    exit status (logged as an error when not 0)."""
    import subprocess
    import sys

    head = run_dir / AU_HEAD  # the supervised bound's own classifier: scored as it is, beside the probe
    cmd = [sys.executable, "-m", "aupretrain.cli.evaluate", str(run_dir / "encoder.pt"), "--config", str(config),
           "--step", str(step), *(["--mlflow-run", run_id] if run_id else []),
           *(["--head", str(head)] if (head / "head.json").is_file() else [])]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                                                            "MASTER_ADDR", "MASTER_PORT")}
    rc = subprocess.run(cmd, env=env).returncode
    if rc != 0:
        log.error("evaluation failed (exit %d); run it again with: %s", rc, " ".join(cmd))
    return rc
