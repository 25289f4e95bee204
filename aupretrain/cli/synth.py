"""aupretrain-synth OUT --identities N --videos-per-identity K --frames F --seed S [--sheet PNG]

Defaults come from configs/synth/default.yaml; extra Hydra overrides may follow `--`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from ..config import load_config
from ..settings import validate
from ..errors import UsageError
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
    a = ap.parse_intermixed_args(argv)  # flags before or after the positionals, then `-- OVERRIDES`
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        c = OmegaConf.to_container(load_config(a.overrides).synth, resolve=True)
        flags = {}
        for k in ("identities", "videos_per_identity", "frames", "fps", "size", "seed", "first_identity", "workers"):
            if getattr(a, k) is not None:  # a flag wins over the config
                c[k] = getattr(a, k)
                flags[f"synth.{k}"] = "--" + k.replace("_", "-")
        validate({"synth": c}, ["synth"], flags=flags)
    except UsageError as e:
        print(f"aupretrain-synth: error: {e}", file=sys.stderr)
        return 2
    out = a.out or c["out"]
    t0 = time.time()
    try:
        stats = write_corpus(out, c["identities"], c["videos_per_identity"], c["frames"], c["seed"], fps=c["fps"],
                             size=c["size"], workers=c["workers"], first_identity=c["first_identity"],
                             overwrite=a.overwrite, head_motion=float(c.get("head_motion", 1.0)))
    except (FileExistsError, NotADirectoryError) as e:  # a file where OUT (or a folder in it) has to be
        where = e.filename or out
        why = (f"OUT {out} is an existing file, not a folder" if Path(where) == Path(out) and Path(out).is_file()
               else f"OUT {out}: cannot make the folder {where}: a file is in the way ({e.strerror})")
        print(f"aupretrain-synth: error: {why}", file=sys.stderr)
        return 2
    except ValueError as e:  # OUT holds a corpus rendered with other settings, ...: the message says what to do
        print(f"aupretrain-synth: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    stats["seconds"] = round(time.time() - t0, 1)
    if a.sheet:
        contact_sheet(a.sheet, c["seed"], size=c["size"])
        stats["sheet"] = a.sheet
    print(json.dumps(stats, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
