"""aupretrain-pack INPUT OUTPUT [--clip-len T --stride S --size PX --samples-per-shard N --workers W]

Defaults come from configs/pack/default.yaml; extra Hydra overrides may follow `--`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from ..config import load_config
from ..data.pack import PackSettings, pack


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aupretrain-pack", description="Pack face videos into WebDataset clip "
                                 "shards with DALI indexes and a manifest.")
    ap.add_argument("input", help="folder <identity>/<video>.mp4")
    ap.add_argument("output", help="output folder or s3://bucket/prefix")
    for flag, typ in (("--clip-len", int), ("--stride", int), ("--clip-step", int), ("--size", int),
                      ("--fps", float), ("--samples-per-shard", int), ("--jpeg-quality", int), ("--workers", int),
                      ("--seed", int)):
        ap.add_argument(flag, type=typ)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides after --")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    c = dict(load_config(a.overrides).pack)
    for k in list(c):
        v = getattr(a, k, None)
        if v is not None:
            c[k] = v
    t0 = time.time()
    try:
        m = pack(a.input, a.output, PackSettings(**c))
    except (FileNotFoundError, RuntimeError) as e:
        print(f"aupretrain-pack: error: {e}", file=sys.stderr)
        return 2
    dt = time.time() - t0
    print(json.dumps({"samples": m.samples, "frames": m.frames, "shards": len(m.shards), "identities": len(m.identities),
                      "videos": m.videos, "rejects": len(m.rejects), "seconds": round(dt, 1),
                      "frames_per_s": round(m.frames / dt, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
