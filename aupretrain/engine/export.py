"""The end of a finished run: the encoder (and the method's own AU head) exported, the stop recorded, and the AU
probe launched as its own process."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..methods import Method
from ..models.encoder import save_encoder
from . import checkpoint
from .distributed import barrier

log = logging.getLogger("aupretrain.train")
AU_HEAD = "au_head"  # <run>/au_head: the method's own AU classifier as an AU head folder (supervised runs)


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


def export_run(engine, cfg, run_dir: Path, loader, steps: int, run_id: str | None) -> None:
    """Every rank (collective), after the last step: `<run>/encoder.pt` (fp32, recording `run_id`) and
    `<run>/au_head` for methods with their own AU classifier; a barrier follows. Raises EnvironmentFault (on every
    rank alike) when a file cannot be written; the final checkpoint is complete, so a rerun exports again."""
    export_encoder(engine, run_dir / "encoder.pt", {"step": steps, "mlflow_run_id": run_id})
    export_au_head(engine, run_dir / AU_HEAD, lambda: loader.labels.names(),
                   {"source": f"training run {run_dir.name}: objective={cfg.objective.name}, fitted on the "
                              f"labels at data.labels={cfg.data.labels}", "dataset": str(cfg.data.shards),
                    "label_threshold": float(cfg.objective.get("label_threshold", 0.5)), "steps": steps})
    barrier()


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
