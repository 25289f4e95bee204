"""aupretrain-synth OUT --identities N --videos-per-identity K --frames F --seed S [--sheet PNG]

Defaults come from configs/synth/default.yaml; extra Hydra overrides may follow `--`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from ..config import load_config
from ..synth.corpus import contact_sheet, write_corpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aupretrain-synth", description="Render a synthetic face-video corpus "
                                 "(<OUT>/<identity>/<video>.mp4 + <video>.labels.json).")
    ap.add_argument("out", nargs="?", help="output folder (default: synth.out)")
    ap.add_argument("--identities", type=int)
    ap.add_argument("--videos-per-identity", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--fps", type=float)
    ap.add_argument("--size", type=int)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--first-identity", type=int, help="number of the first identity (disjoint corpora)")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--overwrite", action="store_true", help="replace a corpus in OUT rendered with other settings")
    ap.add_argument("--sheet", help="also write a contact sheet PNG (identities x expressions)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides after --")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    c = load_config(a.overrides).synth
    out = a.out or c.out
    pick = lambda v, d: d if v is None else v  # noqa: E731
    t0 = time.time()
    stats = write_corpus(out, pick(a.identities, c.identities), pick(a.videos_per_identity, c.videos_per_identity),
                         pick(a.frames, c.frames), pick(a.seed, c.seed), fps=pick(a.fps, c.fps),
                         size=pick(a.size, c.size), workers=pick(a.workers, c.workers),
                         first_identity=pick(a.first_identity, c.first_identity), overwrite=a.overwrite)
    stats["seconds"] = round(time.time() - t0, 1)
    if a.sheet:
        contact_sheet(a.sheet, pick(a.seed, c.seed), size=pick(a.size, c.size))
        stats["sheet"] = a.sheet
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
