"""aupretrain-pack INPUT OUTPUT [--align detect|center --clip-len T --stride S --size PX ...] [-- OVERRIDES]

INPUT: a folder <identity>/<video>.mp4 (or <identity>/<video>/<frame>.jpg), a .csv/.jsonl list, local or
s3://bucket/prefix. OUTPUT: a folder or s3://bucket/prefix. Defaults come from configs/pack/default.yaml;
Hydra overrides may follow `--` (e.g. `-- pack.main_face=central storage.s3.max_attempts=3`). Re-running the same
command after a crash or Ctrl-C resumes. Exit code 0 when something was packed (rejects are listed in the
manifest), 2 when nothing could be packed, the input is missing, or OUTPUT cannot be made or lies inside
INPUT, 1 when the output cannot be written
(S3 errors after boto3's retries, `storage.s3.*` in configs/config.yaml; disk full; another packer writing
OUTPUT through the same work folder: on this host, or a --work-dir on a shared file system), 130 when interrupted (Ctrl-C), 143 when stopped by SIGTERM (workers end with the packer either way).
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from ..config import load_config
from ..errors import UsageError
from ..settings import validate
from ..pack.packer import OutputBusy, PackSettings, pack
from ..data import storage
from ..data.storage import EnvironmentFault

FLAGS = (("--align", str), ("--detector", str), ("--clip-len", int), ("--stride", int), ("--clip-step", int),
         ("--size", int), ("--fps", float), ("--samples-per-shard", int), ("--shuffle-buffer", int),
         ("--jpeg-quality", int), ("--workers", int), ("--seed", int), ("--work-dir", str))


def settings_from(cfg_pack, args: argparse.Namespace | None = None) -> PackSettings:
    """PackSettings from the `pack` config group with the flags given in `args` on top, validated.

    Raises:
        UsageError: a setting out of range or of the wrong type (naming the key and its flag)."""
    c = OmegaConf.to_container(cfg_pack, resolve=True)
    given = {}
    for k in list(c):
        v = getattr(args, k, None) if args is not None else None
        if v is not None:
            c[k] = v
            given[f"pack.{k}"] = "--" + k.replace("_", "-")
    validate({"pack": c}, ["pack"], flags=given)
    c["thresholds"] = tuple(c["thresholds"])
    c["template"] = tuple(tuple(p) for p in c["template"])
    return PackSettings(**c)


def file_in_the_way(path: str) -> Path | None:
    """The regular file (or other non-folder) that stops a folder being made at local `path`: `path` itself or
    the nearest of its parents that exists; None when there is none (or `path` is on S3)."""
    if not path or storage.is_s3(str(path)):
        return None
    p = Path(path).absolute()
    for q in (p, *p.parents):
        if q.exists():
            return None if q.is_dir() else q
    return None


def _inside(inner: str, outer: str) -> bool:
    """Whether `inner` is `outer` or lies under it (local paths resolved, links followed; s3:// URLs by prefix)."""
    if storage.is_s3(inner) != storage.is_s3(outer):
        return False
    if storage.is_s3(inner):
        a, b = inner.rstrip("/") + "/", outer.rstrip("/") + "/"
        return a.startswith(b)
    a, b = Path(inner).resolve(), Path(outer).resolve()
    return a == b or b in a.parents


def check_folders(source: str, output: str, s: PackSettings) -> None:
    """Refuse, before any work, an OUTPUT or work folder (`--work-dir` / pack.work_dir) that cannot be a folder
    because a file is in the way (rerunning would not help), and an OUTPUT inside the INPUT folder (its shards
    and manifest would be listed as inputs by the next packing of INPUT).

    Raises:
        UsageError: naming the argument and the file."""
    if Path(source).suffix.lower() not in (".csv", ".jsonl") and _inside(output, source):
        same = storage.is_s3(output) and output.rstrip("/") == source.rstrip("/") or (
            not storage.is_s3(output) and Path(output).resolve() == Path(source).resolve())
        raise UsageError(f"OUTPUT {output} {'is INPUT' if same else f'is inside INPUT {source}'}: the next packing "
                         "of INPUT would read its shards and manifest as videos; give an output folder outside it")
    for what, path in (("OUTPUT", output), ("--work-dir (pack.work_dir)", s.work_dir)):
        f = file_in_the_way(path)
        if f is None:
            continue
        if f == Path(path).absolute():
            raise UsageError(f"{what} {path} is an existing file, not a folder; give a folder")
        raise UsageError(f"{what} {path}: {f} is an existing file, not a folder; give a folder")


def main(argv: list[str] | None = None) -> int:
    """The command; SIGTERM (a scheduler's preemption, `kill`, `docker stop`: sent to this process only) stops the
    packer as Ctrl-C does — workers terminated, the journal kept, one line, exit 143 — instead of killing it
    silently (left alone when SIGTERM is ignored at start; the handler it replaced is back when it returns)."""
    came: list[int] = []

    def on_term(signum, frame):
        came.append(signum)
        raise KeyboardInterrupt

    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_term)
    try:
        return _main(argv, came)
    finally:
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None, terminated: list[int]) -> int:
    ap = argparse.ArgumentParser(prog="aupretrain-pack", description="Pack face videos into aligned face-clip "
                                 "WebDataset shards with DALI indexes and a manifest (resumable).")
    ap.add_argument("input", help="folder <identity>/<video>.mp4 or <identity>/<video>/<frame>.jpg, a .csv/.jsonl "
                    "list, or s3://bucket/prefix")
    ap.add_argument("output", help="output folder or s3://bucket/prefix")
    for flag, typ in FLAGS:
        ap.add_argument(flag, type=typ)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides after --")
    a = ap.parse_intermixed_args(argv)  # flags before or after the positionals, then `-- OVERRIDES`
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    t0 = time.time()
    try:
        cfg = load_config(a.overrides)
        storage.configure(cfg.storage.s3)  # boto3's retries (storage.s3.*), before any S3 request
        s = settings_from(cfg.pack, a)
        check_folders(a.input, a.output, s)
        m = pack(a.input, a.output, s)
    except (FileNotFoundError, RuntimeError, ValueError) as e:  # incl. DetectorUnavailable: once, before any input
        print(f"aupretrain-pack: error: {e}", file=sys.stderr)
        return 2
    except OutputBusy as e:  # a conflict that clears: not a setting to fix, and a rerun now is refused again
        print(f"aupretrain-pack: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        how = "stopped (SIGTERM)" if terminated else "interrupted"
        print(f"aupretrain-pack: {how}; run the same command again to resume", file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    except (EnvironmentFault, MemoryError) as e:  # disk full, out of memory, S3Error: no input is blamed
        print(f"aupretrain-pack: error: {e}; run the same command again to resume", file=sys.stderr)
        return 1
    except OSError as e:  # the output became unwritable (disk full, permissions)
        print(f"aupretrain-pack: error writing {a.output}: {e}; run the same command again to resume", file=sys.stderr)
        return 1
    except Exception as e:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        if not isinstance(e, (BotoCoreError, ClientError, Boto3Error)):
            raise
        print(f"aupretrain-pack: S3 error after retries: {e}; run the same command again to resume", file=sys.stderr)
        return 1
    dt = time.time() - t0
    print(json.dumps({"samples": m.samples, "frames": m.frames, "shards": len(m.shards), "identities": len(m.identities),
                      "videos": m.videos, "rejects": len(m.rejects), "seconds": round(dt, 1),
                      "source_frames_per_s": round(m.stats.get("frames_decoded", 0) / dt, 1),
                      "packed_frames_per_s": round(m.frames / dt, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
