"""Checkpoints: <run>/checkpoints/step_<N>/ with DeepSpeed state, meta.json and a COMPLETE marker last."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .distributed import barrier

COMPLETE = "COMPLETE"


def root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag(step: int) -> str:
    return f"step_{step}"


def save(engine, run_dir: str | Path, step: int, meta: dict, is_main: bool, rank: int = 0,
         reader: dict | None = None) -> Path:
    """Every rank writes its DeepSpeed shards and its reader state (reader_rank<R>.json); rank 0 writes
    meta.json, then COMPLETE after all ranks are done."""
    d = root(run_dir)
    engine.save_checkpoint(str(d), tag=tag(step), client_state={"step": step})
    out = d / tag(step)
    if reader is not None:
        (out / f"reader_rank{rank}.json").write_text(json.dumps(reader))
    barrier()
    if is_main:
        (out / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=1))
        (out / COMPLETE).write_text("ok\n")
    barrier()
    return out


def latest(run_dir: str | Path) -> tuple[int, Path] | None:
    """Newest checkpoint that finished (has COMPLETE); half-written ones are ignored."""
    best = None
    for p in root(run_dir).glob("step_*"):
        m = re.fullmatch(r"step_(\d+)", p.name)
        if m and (p / COMPLETE).exists() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best


def read_meta(ckpt_dir: str | Path) -> dict:
    """A complete checkpoint's meta.json (step, world_size, mlflow_run_id, epoch, config)."""
    return json.loads((Path(ckpt_dir) / "meta.json").read_text())


def load(engine, run_dir: str | Path, step: int) -> dict:
    _, client = engine.load_checkpoint(str(root(run_dir)), tag=tag(step))
    return {**(client or {}), **read_meta(root(run_dir) / tag(step))}


def reader_state(ckpt_dir: str | Path, rank: int, world: int) -> dict | None:
    """This rank's saved reader state, if the checkpoint was written by the same number of ranks."""
    path = Path(ckpt_dir) / f"reader_rank{rank}.json"
    meta = read_meta(ckpt_dir)
    if not path.exists() or int(meta.get("world_size", -1)) != world:
        return None
    return json.loads(path.read_text())
