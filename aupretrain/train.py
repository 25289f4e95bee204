"""Pretraining entry point.

    deepspeed --num_gpus 8 aupretrain/train.py data.shards=s3://bucket/vox2 objective=tcl
    torchrun --nproc_per_node 2 aupretrain/train.py experiment=smoke
    python aupretrain/train.py experiment=smoke

Arguments are Hydra overrides of configs/. The deepspeed launcher's `--local_rank=N` is accepted (and
ignored: LOCAL_RANK is in the environment). `--cfg` prints the composed config and exits; `--check` checks the
settings (exit 0, or 2 with one error line) without training; `-h` / `--help` prints this text and the config groups
to choose from.
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


def usage() -> str:
    """`--help`: this module's docstring and each config group's options (the YAML files under configs/)."""
    from aupretrain.config import config_dir

    root = config_dir()
    groups = sorted(d for d in root.iterdir() if d.is_dir())
    lines = [f"  {d.name}=" + " | ".join(sorted(f.stem for f in d.glob("*.yaml"))) for d in groups]
    return (f"usage: aupretrain-train [OVERRIDE ...] [--cfg | --check]\n\n{__doc__.strip()}\n\nConfig groups "
            f"(group=option; every key of {root} can be set as key=value, e.g. train.steps=100):\n" + "\n".join(lines))


RANK0_FIRST_S = 10.0  # how long the other ranks wait, on an error every rank has, for rank 0 to print it


def main(argv: list[str] | None = None) -> int:
    args, local_rank = split_launcher_args(list(sys.argv[1:] if argv is None else argv))
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    from omegaconf import OmegaConf

    from aupretrain.config import load_config
    from aupretrain.settings import validate
    from aupretrain.errors import UsageError

    def refuse(e: Exception, code: int = 2, own: bool = False) -> int:
        """One line from rank 0, no traceback; exit 2 (a setting or input to fix) or 1 (the machine's fault).
        Every rank has the same error: the others wait a little, since a launcher (torchrun, deepspeed) stops
        all ranks as soon as the first one exits, and rank 0 must have said why by then. `own`: a fault this
        rank met by itself (its storage), which it reports too, naming itself. With $AUPRETRAIN_REFUSED_MARK
        set, a refusal (exit 2) also creates that file: torchrun reports only "failed" and would restart the
        ranks, so a launcher watches for it (launchers/k8s/entrypoint.sh)."""
        if code == 2 and os.environ.get("AUPRETRAIN_REFUSED_MARK"):
            try:
                open(os.environ["AUPRETRAIN_REFUSED_MARK"], "a").close()
            except OSError:
                pass
        if launcher_rank() == "0" or own:
            where = f" [rank {launcher_rank()}]" if own and launcher_rank() != "0" else ""
            print(f"aupretrain-train: error{where}: {' | '.join(str(e).splitlines())}", file=sys.stderr, flush=True)
        else:
            import time

            time.sleep(RANK0_FIRST_S)
        return code

    if "-h" in args or "--help" in args:
        print(usage())
        return 0
    show, check = "--cfg" in args, "--check" in args
    try:  # every rank of a torchrun / deepspeed job parses the same arguments: all refuse alike, at once
        cfg = load_config([a for a in args if a not in ("--cfg", "--check")])  # an override that does not parse
        if show:
            print(OmegaConf.to_yaml(cfg))
            return 0
        validate(cfg, training=True)  # types and ranges, data.shards: before any process group or worker
    except UsageError as e:
        return refuse(e)
    if check:  # a launcher's check before it starts the ranks (exit 0, or 2 with the one line)
        from deepspeed.accelerator import get_accelerator

        from aupretrain.engine.components import check_precision, check_settings

        try:
            check_settings(cfg, precision=False)  # what training would refuse before its first step, without it
        except UsageError as e:
            return refuse(e)
        try:  # precision depends on the machine: a refusal binds where training runs, not on a CPU login node
            check_precision(cfg)
        except UsageError as e:
            if get_accelerator().device_name() != "cpu":
                return refuse(e)
            print(f"aupretrain-train: note: {e} (checked on a machine without a GPU: training on one may accept it)",
                  file=sys.stderr)
        return 0
    rank = launcher_rank()
    level = logging.INFO if rank == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s [rank " + rank + "] %(name)s: %(message)s")
    from aupretrain.data.storage import EnvironmentFault
    from aupretrain.engine.trainer import train

    try:
        result = train(cfg)
    except UsageError as e:
        return refuse(e)
    except EnvironmentFault as e:  # the machine's fault (storage down past its retries, a full disk): rerun
        own = not getattr(e, "raised_on_rank0", False)
        if "run the same command again" not in str(e):
            e = EnvironmentFault(f"{e}; run the same command again once it is back (it resumes from the last "
                                 "checkpoint)")
        return refuse(e, 1, own=own)
    return 1 if result.get("eval_exit") else 0  # the end-of-run evaluation failed (its process said why)


if __name__ == "__main__":
    sys.exit(main())
