"""aupretrain-extract INPUT OUT.csv --encoder E [--head H]: AU codes (or AU probabilities) per frame of your own video(s).

    aupretrain-extract interview.mp4 interview_au.csv --encoder exports/quickstart
    aupretrain-extract videos/ codes.csv --encoder runs/x/encoder.pt -- pack.detect_every=10
    aupretrain-extract interview.mp4 aus.csv --encoder exports/quickstart --head heads/bp4d   # AU probabilities

INPUT: a video file, an image, or a folder (every video below it, every folder of numbered images — 00001.jpg,
frame_12.png … — as one video's frames in natural order at `pack.frames_fps`, as `aupretrain-pack` reads them, and
every other image on its own; `--stills`: every image on its own). An input in which no face is found gives empty
rows and a warning. Faces are detected, tracked and
aligned exactly as `aupretrain-pack` does (`pack.*` settings; `--align center` for inputs that are already face
crops). One CSV row per frame: input, frame (a video's 0-based frame index; a numbered frame folder's number from
the file name, gaps kept), time_s (seconds since the first frame; a frame folder's: (number − first number) /
pack.frames_fps), file (the image a row was read from; empty for a video), face (0/1), x1, y1, x2, y2 (face box in
source pixels), a0 … a<D-1> (the AU code) — or, with `--head` (a folder from `aupretrain-eval --save-head`), one
column per AU named after it (`AU1`, `AU2`, …: P(AU present)) plus `<AU>_on` (0/1 at the head's own per-AU
threshold); the columns of an AU the head was not trained for (no positive frame; head.json's aus_trained) are
empty, with a warning naming it. A frame without a face is a row with empty values. An input that cannot be read is
reported and skipped; the exit code is 0 when at least one input gave rows, 2 otherwise (and no CSV is left).
The CSV is written to OUT.csv.partial and renamed when complete; OUT's folder is created if missing.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aupretrain-extract", description=__doc__.splitlines()[0])
    ap.add_argument("input", help="video, image, or folder of them")
    ap.add_argument("out", help="CSV to write")
    ap.add_argument("--encoder", required=True, help="aupretrain-export folder or a run's encoder.pt")
    ap.add_argument("--head", help="an AU head folder (aupretrain-eval --save-head): write AU probabilities, not codes")
    ap.add_argument("--align", choices=["detect", "center"], help="default: pack.align (detect)")
    ap.add_argument("--batch", type=int, default=64, help="crops per encoder call")
    ap.add_argument("--stills", action="store_true", help="every image is an input of its own (default: a folder "
                    "of numbered images, e.g. 00001.jpg ..., is one video's frames, as aupretrain-pack reads it)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the pack group after -- (e.g. pack.detect_every=10)")
    a = ap.parse_intermixed_args(argv)  # flags before or after the positionals, then `-- OVERRIDES`
    if a.batch < 1:
        ap.error(f"--batch {a.batch}: crops per encoder call must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from tqdm import tqdm

    from ..config import load_config
    from ..pack.mtcnn import DetectorUnavailable
    from ..pack.video import VideoError
    from ..eval.extract import extract, list_inputs, write_csv
    from ..models.encoder import load_encoder
    from .pack import settings_from

    try:
        s = settings_from(load_config(a.overrides).pack, argparse.Namespace(align=a.align))  # settings first
        enc = load_encoder(a.encoder)
        predictor = None
        if a.head:
            from ..eval.head import load_head

            predictor = load_head(a.head, enc)
        inputs = list_inputs(a.input, stills=a.stills)
        if s.align == "detect":
            from ..pack.clips import detector

            detector(s)  # the detector loads once here, or one clear error
    except (FileNotFoundError, ValueError, DetectorUnavailable) as e:
        print(f"aupretrain-extract: error: {e}", file=sys.stderr)
        return 2
    skipped = []
    if predictor is None:
        encode, columns = enc.encode, [f"a{k}" for k in range(enc.au_dim)]
    else:  # probabilities, then 0/1 at the head's thresholds (NaN, written empty: an AU the head never learnt)
        import torch

        def encode(frames, batch_size=256):
            p = predictor(frames, batch_size)
            return torch.cat([p, predictor.decide(p)], dim=1)

        columns = [*predictor.aus, *[f"{au}_on" for au in predictor.aus]]
        if predictor.untrained:
            logging.warning("--head %s: not trained for %s (no positive frame where it was fitted): %s columns "
                            "are left empty", a.head, " / ".join(predictor.untrained),
                            " / ".join(f"{au}, {au}_on" for au in predictor.untrained))

    def rows():
        bar = tqdm(unit="frame", desc="extract", disable=None)
        for path in inputs:
            n = found = 0
            try:
                for r in extract(path, encode, s, a.batch):
                    bar.update(1)
                    n, found = n + 1, found + (r.code is not None)
                    yield r
            except VideoError as e:  # a bad input: reported, the others go on
                logging.warning("skipped %s", e)
                skipped.append(str(path))
                continue
            if path.is_dir():
                logging.info("%s: read as one video's frames (%d; --stills reads each image on its own)", path, n)
            if n and not found:  # rows are written (empty), but the user should know why they are empty
                logging.warning("%s: no face found in any of its %d frame(s): its rows are empty", path, n)
        bar.close()

    out = Path(a.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)  # like --out of the other commands
        counts = write_csv(rows(), out, columns)
    except OSError as e:  # a directory of that name, no permission, a full disk: nothing half-written is left
        print(f"aupretrain-extract: error: cannot write {a.out}: {e.strerror or e}", file=sys.stderr)
        return 2 if isinstance(e, (IsADirectoryError, NotADirectoryError, PermissionError)) else 1
    print(json.dumps({"out": a.out, "inputs": len(inputs), "skipped": skipped, **counts}, indent=1))
    if not counts["frames"]:  # every input skipped: no CSV that looks like a result
        out.unlink(missing_ok=True)
        print(f"aupretrain-extract: error: no input gave a frame ({len(skipped)} of {len(inputs)} skipped, "
              f"reasons above); {a.out} not written", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
