"""aupretrain-export RUN_OR_CHECKPOINT OUT: the encoder as safetensors + JSON config, fp32.

    aupretrain-export runs/exp1 exports/exp1                           # the run's newest state (see below)
    aupretrain-export runs/exp1/checkpoints/step_4000 exports/exp1-4k  # any complete checkpoint, any ZeRO stage
    aupretrain-export runs/exp1/encoder.pt exports/exp1                # an encoder.pt file

OUT gets `model.safetensors` (fp32 encoder weights) and `config.json` (model config, input size, step, MLflow run
id, source). Load it with `aupretrain.load_encoder(OUT)`. Checkpoints are read by
`engine.checkpoint.full_weights` once every file passed `engine.checkpoint.vet` (no pickled code): DeepSpeed's
`get_fp32_state_dict_from_zero_checkpoint` gathers ZeRO partitions (stages 1–3) into full fp32 weights; a stage-0
checkpoint holds the full module and is read with `torch.load(weights_only=True)`.

A run folder exports its newest state: `encoder.pt`, unless a whole checkpoint of a later step is there (a run
continued past its end, `train.stop_at`): that checkpoint is exported, and the printed JSON's "note" (and a line on
stderr) says so. With no `encoder.pt`, the newest whole checkpoint; when a running job prunes it while it is read
(`train.keep_checkpoints`), the newest whole one is chosen again (a few tries; then exit 1, one line). OUT's files
get the mode any file this process writes gets (0666 & ~umask). A user error is one line, exit 2.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Export SOURCE to the folder OUT; returns the exit status (0; 2: a user error; 1: the environment failed —
    a full disk, or a running job pruned every checkpoint chosen — each reported as one line)."""
    ap = argparse.ArgumentParser(prog="aupretrain-export", description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a run folder, a checkpoint folder (.../checkpoints/step_N) or an encoder.pt file")
    ap.add_argument("out", help="output folder (model.safetensors + config.json)")
    a = ap.parse_args(argv)
    from ..data.storage import EnvironmentFault
    from ..engine.export import check_out, read_source, write_export_folder

    def say(kind: str, text) -> None:
        print(f"aupretrain-export: {kind}: {' '.join(str(text).split())[:600]}", file=sys.stderr)

    out = Path(a.out)
    try:
        check_out(out)  # before the (maybe long) read of a checkpoint
        enc, extra, note = read_source(Path(a.source), lambda text: say("warning", text))
        if note:
            say("note", note)
        write_export_folder(enc, out, extra)
    except EnvironmentFault as e:  # a full disk; CheckpointsPruned: running it again may succeed
        say("error", e)
        return 1
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as e:  # UsageError is a ValueError
        say("error", e)
        return 2
    print(json.dumps({"out": str(out.resolve()), "au_dim": enc.au_dim, **extra, **({"note": note} if note else {})},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
