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


def encoder_from_checkpoint(ckpt: Path):
    """(AUEncoder in eval mode, meta) from a complete DeepSpeed checkpoint folder `.../checkpoints/step_<N>`, its
    fp32 weights gathered by `checkpoint.full_weights` (bf16/fp16 runs: the optimizer's fp32 master weights, ZeRO
    1-3). Raises what `full_weights` raises, and ValueError when the weights do not fit the saved model config."""
    from ..models.encoder import AUEncoder

    full = checkpoint.full_weights(ckpt)  # vetted first: DeepSpeed's reader unpickles with weights_only=False
    meta = checkpoint.read_meta(ckpt)
    state = {k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}
    cfg = meta["config"]
    enc = AUEncoder(cfg["model"], int(cfg["data"]["input_size"]))
    missing, unexpected = enc.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith(("mean", "std"))]:
        raise ValueError(f"{ckpt}: encoder weights do not match the model config (missing {missing}, unexpected {unexpected})")
    return enc.eval(), meta


def master_method(engine, cfg, final_checkpoint: Path) -> tuple[Method | None, bool]:
    """In DeepSpeed's bf16 and fp16 modes the module holds 16-bit copies of the weights; under ZeRO 1-3 the
    optimizer's fp32 master weights are in the checkpoints. Returns (on rank 0, the method rebuilt from the config
    in fp32 with the master weights of `final_checkpoint`, read as `aupretrain-export` reads them:
    `checkpoint.full_weights`; None on the other ranks, and None, False in fp32 or under ZeRO-0, where the module's
    weights are the weights; whether it is used: the same on every rank). Where that checkpoint is not there (a
    run resumed from another run's checkpoint at `train.steps`) or cannot be read, rank 0 warns and every
    rank falls back to the module's weights, cast."""
    from ..methods import build_method
    from .distributed import broadcast_object
    from .step import input_dtype

    if input_dtype(engine) is None or int(engine.zero_optimization_stage()) < 1:  # the same on every rank
        return None, False
    method = None
    if engine.global_rank == 0:
        try:
            if not (final_checkpoint / checkpoint.COMPLETE).exists():
                raise FileNotFoundError(f"{final_checkpoint}: no complete checkpoint of the last step")
            method = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
            missing, unexpected = method.load_state_dict(checkpoint.full_weights(final_checkpoint), strict=False)
            if unexpected or [k for k in missing if not k.endswith(("mean", "std"))]:
                raise ValueError(f"weights do not match the method (missing {missing}, unexpected {unexpected})")
            method.eval()
        except (OSError, ValueError, KeyError) as e:  # UsageError (a vetted file refused) is a ValueError
            log.warning("the fp32 master weights of %s were not read (%s); exporting the 16-bit module's weights, "
                        "cast to fp32", final_checkpoint, " ".join(str(e).split())[:300])
            method = None
    return method, broadcast_object(method is not None)


def export_encoder(engine, path: Path, extra: dict, master: tuple[Method | None, bool] = (None, False)) -> None:
    """Rank 0 writes the encoder's fp32 weights: those of `master` when it is used (`master_method`: 16-bit runs
    under ZeRO 1-3, so `encoder.pt` and an export of the final checkpoint agree), else the module's (gathered first
    under ZeRO-3), cast; collective. A failed write (a full disk ...) raises the same `EnvironmentFault` on every
    rank (`checkpoint.write_on_main`)."""
    import deepspeed

    method, used = master
    if used:
        checkpoint.write_on_main(lambda tmp: save_encoder(method.encoder, tmp, extra), path, "the trained encoder",
                                 engine.global_rank == 0)
        return
    enc = engine.module.encoder
    with deepspeed.zero.GatheredParameters(list(enc.parameters()), modifier_rank=None,
                                           enabled=int(engine.zero_optimization_stage()) == 3):
        checkpoint.write_on_main(lambda tmp: save_encoder(enc, tmp, extra), path, "the trained encoder",
                                 engine.global_rank == 0)


def export_au_head(engine, path: Path, aus, meta: dict, master: tuple[Method | None, bool] = (None, False)) -> bool:
    """Rank 0 writes the method's own AU classifier (`Method.au_head`: the supervised bound's, fitted on the
    pretraining labels) as an AU head folder (`aupretrain.models.head`) that `aupretrain-extract --head` and
    `aupretrain-eval --head` read; collective. Its weights are `master`'s when it is used (`master_method`), else
    the module's. `aus`: a callable giving the AU names (rank 0 only). Returns False when the method has no such
    classifier. A failed write raises `EnvironmentFault` on every rank."""
    import shutil

    import deepspeed

    from ..models.head import save_head

    module = engine.module
    if type(module).au_head is Method.au_head:
        return False
    method, used = master
    if used:
        tensors = method.au_head() if engine.global_rank == 0 else None
    else:
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
    master = master_method(engine, cfg, checkpoint.root(run_dir) / checkpoint.tag(steps))  # saved before this
    export_encoder(engine, run_dir / "encoder.pt", {"step": steps, "mlflow_run_id": run_id}, master)
    export_au_head(engine, run_dir / AU_HEAD, lambda: loader.labels.names(),
                   {"source": f"training run {run_dir.name}: objective={cfg.objective.name}, fitted on the "
                              f"labels at data.labels={cfg.data.labels}", "dataset": str(cfg.data.shards),
                    "label_threshold": float(cfg.objective.get("label_threshold", 0.5)), "steps": steps}, master)
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
