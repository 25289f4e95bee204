"""aupretrain-extract INPUT OUT.csv --encoder E [--head H]: AU codes (or AU probabilities) per frame of your own video(s).

    aupretrain-extract interview.mp4 interview_au.csv --encoder exports/quickstart
    aupretrain-extract videos/ codes.csv --encoder runs/x/encoder.pt -- pack.detect_every=10
    aupretrain-extract interview.mp4 aus.csv --encoder exports/quickstart --head heads/bp4d   # AU probabilities

INPUT: a video file, an image, or a folder (every video below it, every folder of numbered images — 00001.jpg,
frame_12.png … — as one video's frames in natural order at `pack.frames_fps`, as `aupretrain-pack` reads them — a
stray image beside the numbered frames, e.g. cover.jpg, is an input of its own, with a warning naming it — and every
other image on its own; `--stills`: every image on its own). Images are the types `pack.inputs.IMAGE_EXTS` (.jpg
.png .webp .bmp .tif …), alone or in a folder; a folder's other files are left out, one line counting them. An input
in which no face is found gives empty rows and a warning. Faces are detected, tracked and
aligned exactly as `aupretrain-pack` does (`pack.*` settings; `--align center` for inputs that are already face
crops). One CSV row per frame: input, frame (a video's 0-based frame index; a numbered frame folder's number from
the file name, gaps kept), time_s (seconds since the first frame; a frame folder's: (number − first number) /
pack.frames_fps), file (the image a row was read from; empty for a video), face (0/1), x1, y1, x2, y2 (face box in
source pixels), a0 … a<D-1> (the AU code) — or, with `--head` (a folder from `aupretrain-eval --save-head`), one
column per AU named after it (`AU1`, `AU2`, …: P(AU present)) plus `<AU>_on` (0/1 at the head's own per-AU
threshold); the columns of an AU the head was not trained for (no positive frame; head.json's aus_trained) are
empty, with a warning naming it. A linear head is refused on an encoder other than the one it was fitted on
(head.json's `encoder` fingerprint; older heads: one warning); a fine-tuned head carries its own encoder, which
gives the probabilities (a warning says `--encoder` is not used). A frame without a face is a row with empty
values. One face per frame is followed; a warning names the frames where the track comes back elsewhere in the
picture (maybe another person). An input that cannot be read is reported and skipped; the exit code is 0 when at
least one input gave rows, 2 otherwise (and OUT is left as it was). ENCODER: an export folder, a run folder (its
encoder.pt, as aupretrain-eval takes it) or an encoder.pt file.
OUT is checked before any input is read (not an input, not a folder, writable; its folder is created if missing:
one line, exit 2; an environment fault, e.g. a full disk, exits 1); the CSV is written to OUT.partial and renamed
over OUT only when complete, so a failed run leaves OUT as it was and no partial file.
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
    ap.add_argument("--encoder", required=True, help="aupretrain-export folder, a run folder or its encoder.pt")
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
    from ..eval.extract import check_out, extract, list_inputs, write_csv
    from ..models.encoder import load_encoder
    from .pack import settings_from

    try:
        s = settings_from(load_config(a.overrides).pack, argparse.Namespace(align=a.align))  # settings first
        inputs = list_inputs(a.input, stills=a.stills)
        try:
            check_out(a.out, inputs)  # before any input is read or the encoder loaded
        except OSError as e:  # not a path to fix (UsageError): the environment — a full disk, an I/O error
            print(f"aupretrain-extract: error: cannot write {a.out}: {e.strerror or e}", file=sys.stderr)
            return 1
        enc = load_encoder(encoder_path(a.encoder))
        predictor = None
        if a.head:
            from ..eval.head import load_head

            predictor = load_head(a.head, enc, a.encoder)  # a linear head fitted on another encoder is refused
            finetuned_note(predictor.meta, a.head, a.encoder, enc)
        if s.align == "detect":
            from ..pack.clips import detector

            detector(s)  # the detector loads once here, or one clear error
    except (FileNotFoundError, ValueError, DetectorUnavailable) as e:  # UsageError is a ValueError
        print(f"aupretrain-extract: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # reading the encoder, the head or the detector's files (unreadable, an I/O error)
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        print(f"aupretrain-extract: error: cannot read{where}: {e.strerror or e}", file=sys.stderr)
        return 1
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
        counts = write_csv(rows(), out, columns)  # OUT replaced only when rows came
    except OSError as e:  # changed since check_out (a full disk, a folder removed): nothing half-written is left
        print(f"aupretrain-extract: error: cannot write {a.out}: {e.strerror or e}; "
              f"{'the earlier ' + a.out + ' is kept' if out.is_file() else 'nothing written'}", file=sys.stderr)
        return 2 if isinstance(e, (IsADirectoryError, NotADirectoryError, PermissionError)) else 1
    print(json.dumps({"out": a.out, "inputs": len(inputs), "skipped": skipped, **counts}, indent=1))
    if not counts["frames"]:  # every input skipped: no CSV that looks like a result, and OUT as it was
        print(f"aupretrain-extract: error: no input gave a frame ({len(skipped)} of {len(inputs)} skipped, "
              f"reasons above); nothing written{' (the earlier ' + a.out + ' is kept)' if out.is_file() else ''}",
              file=sys.stderr)
        return 2
    return 0


def encoder_path(arg: str) -> Path:
    """What `load_encoder` reads for `--encoder ARG`: a run folder's encoder.pt, as aupretrain-eval takes it
    (`cli.evaluate.resolve_encoder`); an export folder, a model.safetensors or an encoder file as it is.
    Raises FileNotFoundError naming ARG for a folder that holds neither, saying how to export an unfinished run."""
    from .evaluate import resolve_encoder

    p = Path(arg)
    if not p.is_dir() or (p / "model.safetensors").is_file():
        return p  # load_encoder's own checks and messages
    if not (p / "encoder.pt").is_file() and (p / "checkpoints").is_dir():
        raise FileNotFoundError(f"{arg}: a run folder without encoder.pt (the run has not finished): export a "
                                f"checkpoint with aupretrain-export {arg} OUT and pass --encoder OUT")
    return resolve_encoder(arg)[0]


def finetuned_note(meta: dict, head: str, encoder_arg: str, enc) -> None:
    """For a fine-tuned head (its own encoder gives the probabilities): one warning that `--encoder` is not used,
    saying whether it is the encoder the head was fine-tuned from (head.json's `encoder`, where recorded)."""
    if meta.get("protocol") != "finetune":
        return
    rec = meta.get("encoder") if isinstance(meta.get("encoder"), dict) else {}
    if rec.get("fingerprint"):
        from ..eval.head import encoder_fingerprint

        same = rec["fingerprint"] == encoder_fingerprint(enc)
        whose = (f"; --encoder {encoder_arg} is the encoder it was fine-tuned from" if same else
                 f"; it was fine-tuned from {rec.get('source') or rec['fingerprint']}, not from --encoder {encoder_arg}")
    else:
        whose = " (head.json does not record which encoder it was fine-tuned from)"
    logging.warning("--head %s is a fine-tuned head: the AU probabilities come from the fine-tuned encoder saved in "
                    "it, and --encoder %s is not used%s", head, encoder_arg, whose)


if __name__ == "__main__":
    sys.exit(main())
