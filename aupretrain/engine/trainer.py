"""The training loop, read as the algorithm: the method's targets fitted on un-augmented clips where it has any
(`prefit.py`); then batches from the loader, one DeepSpeed step of the method's objective with negatives gathered
across ranks, metrics, the online probe, checkpoints, a stop on signal; then the encoder exported and the AU probe
run in its own process. Every part is a component built from the config (`components.py`, `metrics.py`,
`online_probe.py`, `signals.py`, `export.py`)."""
from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from ..data.storage import EnvironmentFault
from . import checkpoint
from .components import Checkpointer, build, open_tracker
from .distributed import broadcast_object
from .export import evaluate_in_own_process, export_run
from .metrics import StepMetrics
from .online_probe import OnlineProbe
from .prefit import fit_on_clean_clips
from .signals import StopRequest
from .step import train_step

log = logging.getLogger("aupretrain.train")


def train(cfg: DictConfig) -> dict:
    """`_train`, with the run folder's lock released when it returns or raises (`run_folder.release`; a second
    training job in the same process may then take it)."""
    from .run_folder import release

    try:
        return _train(cfg)
    finally:
        release()


def _train(cfg: DictConfig) -> dict:
    """Pretrain on every rank (collective): resume from a checkpoint of `train.resume` when one is found, run
    `train.steps` (or up to `train.stop_at`) DeepSpeed steps, log to MLflow, checkpoint every `train.checkpoint_every`
    steps, on a stop signal and at the last step; once all `train.steps` are done, export `<run>/encoder.pt` (and
    `<run>/au_head` for methods with one) and, on rank 0 with `train.eval_at_end`, evaluate it in a fresh process.

    Returns {"run_dir", "mlflow_run_id", "loss_history" (mean train/loss per logging step), "rank"}, plus
    "stopped_at" (the step) when it stopped early or "eval_exit" (the evaluation's exit status) on rank 0.
    Raises UsageError for settings it cannot train or resume with, EnvironmentFault when a checkpoint or export
    cannot be written (on every rank alike)."""
    c = build(cfg)
    d, engine, loader = c.dist, c.engine, c.loader
    tracker, record = open_tracker(c)
    fit_on_clean_clips(cfg, engine, d)  # targets the method fits on un-augmented clips, before step 1 (if any)
    steps = int(cfg.train.steps)
    end = min(steps, int(cfg.train.stop_at)) if cfg.train.get("stop_at") else steps  # chained jobs stop early
    accum = int(cfg.deepspeed.get("gradient_accumulation_steps", 1))
    check_every = max(1, int(cfg.train.get("signal_check_every", 1)))  # a collective + host sync: not every step
    online = OnlineProbe(cfg, d.is_main)  # before the timer starts: rank 0 may render its validation corpus
    metrics = StepMetrics(cfg, tracker, loader, d.world, d.is_main, c.start, steps)
    ckpt, stop, why = Checkpointer(c, tracker), StopRequest(), "train.stop_at"
    batches = iter(loader)
    try:
        for n in range(c.start + 1, end + 1):
            t0 = time.perf_counter()
            batch = [next(batches) for _ in range(accum)]
            metrics.data_wait(time.perf_counter() - t0)
            lr = engine.get_lr()[0]  # the rate step n uses: the scheduler moves on inside train_step
            loss, parts = train_step(engine, c.objective, batch, d.rank)
            metrics.step(n, end, loss, parts, lr)
            if online.due(n):  # rank 0, no gradient; the other ranks wait at the next collective
                tracker.log_metrics(online(n, engine.module.encoder), step=n)
            ckpt.due(n, end)
            if n < end and n % check_every == 0 and stop.agreed(engine.device):
                end, why = n, "signal"  # preempted (on any rank): checkpoint here and return
                break
        metrics.close()
        ckpt.last(end)
        stop.close()  # after the last checkpoint: a signal during the save must not kill it
        result = {"run_dir": str(c.run_dir), "mlflow_run_id": c.run_id, "loss_history": metrics.history,
                  "rank": d.rank}
        if end < steps:
            log.info("stopped at step %d of %d (%s): run again with run.dir=%s to continue", end, steps, why,
                     c.run_dir)
            if d.is_main:
                checkpoint.record_stop(c.run_dir, end, steps, why, d.world, tracker.run_id or c.run_id)
            tracker.finish("KILLED")
            return {**result, "stopped_at": end}
        run_id = broadcast_object(tracker.run_id or c.run_id)  # a store that was down at start may have answered
        export_run(engine, cfg, c.run_dir, loader, steps, run_id)
        if d.is_main:
            checkpoint.record_stop(c.run_dir, steps, steps, "finished", d.world, tracker.run_id or run_id)
    except EnvironmentFault:  # a full disk, storage gone ...: the run is marked FAILED; the last complete
        # checkpoint is kept
        metrics.close()
        tracker.finish("FAILED")
        raise
    finally:
        stop.close()  # whatever ended the job: the signal handlers it replaced are back, the launcher watch ends
    result["mlflow_run_id"] = run_id
    if d.is_main:
        tracker.log_artifact(c.run_dir / "config.yaml")  # the first job's; resumed jobs logged theirs at start
        tracker.finish()
        if cfg.train.eval_at_end:
            result["eval_exit"] = evaluate_in_own_process(c.run_dir, record, steps, tracker.run_id)
    return result
