"""Pretraining entry point.

    deepspeed --num_gpus 8 aupretrain/train.py data.shards=s3://bucket/vox2 objective=tcl
    torchrun --nproc_per_node 2 aupretrain/train.py experiment=smoke
    python aupretrain/train.py experiment=smoke

Arguments are Hydra overrides of configs/. The deepspeed launcher's `--local_rank=N` is accepted (and
ignored: LOCAL_RANK is in the environment). `--cfg` prints the composed config and exits.
"""
from __future__ import annotations

import logging
import os
import sys

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def split_launcher_args(argv: list[str]) -> tuple[list[str], int | None]:
    """Remove `--local_rank=N` / `--local_rank N` (deepspeed launcher) from argv; return (overrides, N)."""
    out, local_rank, skip = [], None, False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a.startswith("--local_rank=") or a.startswith("--local-rank="):
            local_rank = int(a.split("=", 1)[1])
        elif a in ("--local_rank", "--local-rank"):
            local_rank = int(argv[i + 1])
            skip = True
        else:
            out.append(a)
    return out, local_rank


def launcher_rank() -> str:
    """This process's global rank as the launcher gave it (before the process group exists): RANK from
    deepspeed / torchrun, SLURM_PROCID from a bare srun, else "0"."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))


def main(argv: list[str] | None = None) -> int:
    args, local_rank = split_launcher_args(list(sys.argv[1:] if argv is None else argv))
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    from omegaconf import OmegaConf

    from aupretrain.config import load_config

    from hydra.errors import HydraException

    show = "--cfg" in args
    try:
        cfg = load_config([a for a in args if a != "--cfg"])
    except HydraException as e:  # an override that does not parse or names no key
        if launcher_rank() == "0":
            print(f"aupretrain-train: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if show:
        print(OmegaConf.to_yaml(cfg))
        return 0
    rank = launcher_rank()
    level = logging.INFO if rank == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s [rank " + rank + "] %(name)s: %(message)s")
    from aupretrain.data.storage import EnvironmentFault
    from aupretrain.engine.trainer import train
    from aupretrain.errors import UsageError

    try:
        result = train(cfg)
    except UsageError as e:  # a setting or input to fix: one line (from rank 0), no traceback
        if launcher_rank() == "0":
            print(f"aupretrain-train: error: {e}", file=sys.stderr)
        return 2
    except EnvironmentFault as e:  # storage down (S3 after its retries, disk full): one line, exit 1, rerun resumes
        if launcher_rank() == "0" or not getattr(e, "raised_on_rank0", False):
            print(f"aupretrain-train: error [rank {rank}]: {e}; run the same command again once it is back "
                  f"(it resumes from the last checkpoint)", file=sys.stderr)
        return 1
    return 1 if result.get("eval_exit") else 0  # the end-of-run evaluation failed (its process said why)


if __name__ == "__main__":
    sys.exit(main())
