"""aupretrain-export RUN_OR_CHECKPOINT OUT: the encoder as safetensors + JSON config, fp32.

    aupretrain-export runs/exp1 exports/exp1                           # the run's final encoder, else its newest checkpoint
    aupretrain-export runs/exp1/checkpoints/step_4000 exports/exp1-4k  # any complete checkpoint, any ZeRO stage
    aupretrain-export runs/exp1/encoder.pt exports/exp1                # an encoder.pt file

OUT gets `model.safetensors` (fp32 encoder weights) and `config.json` (model config, input size, step, MLflow run
id, source). Load it with `aupretrain.load_encoder(OUT)`. Checkpoints are read by
`engine.checkpoint.full_weights` once every file passed `engine.checkpoint.vet` (no pickled code): DeepSpeed's
`get_fp32_state_dict_from_zero_checkpoint` gathers ZeRO partitions (stages 1–3) into full fp32 weights; a stage-0
checkpoint holds the full module and is read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aupretrain-export", description=__doc__.splitlines()[0])
    ap.add_argument("source", help="a run folder, a checkpoint folder (.../checkpoints/step_N) or an encoder.pt file")
    ap.add_argument("out", help="output folder (model.safetensors + config.json)")
    a = ap.parse_args(argv)
    from ..engine.checkpoint import COMPLETE
    from ..engine.choice import newest_whole, problems
    from ..engine.export import encoder_from_checkpoint
    from ..models.encoder import load_encoder, save_encoder_folder

    src = Path(a.source)
    try:
        pt = src if src.is_file() else src / "encoder.pt"
        if pt.is_file():  # a run folder's final encoder, or an encoder.pt file named directly
            import torch

            enc = load_encoder(pt)
            ck = torch.load(pt, weights_only=True)
            extra = {"step": ck.get("step"), "mlflow_run_id": ck.get("mlflow_run_id"), "source": str(pt)}
        else:
            if not src.exists():
                raise FileNotFoundError(f"{src}: no such file or folder")
            if (src / COMPLETE).exists():
                if wrong := problems(src):
                    raise FileNotFoundError(f"{src}: this checkpoint cannot be read: {'; '.join(wrong)}")
                ckpt = src
            elif (src / "mp_rank_00_model_states.pt").exists() or list(src.glob("*_model_states.pt")):
                raise FileNotFoundError(f"{src}: a half-written checkpoint (no {COMPLETE} marker: the job writing it "
                                        "stopped before it finished)")
            else:
                found, skipped = newest_whole(src)
                for s in skipped:
                    print(f"aupretrain-export: warning: skipping checkpoint {s}", file=sys.stderr)
                if found is None:
                    raise FileNotFoundError(f"{src}: no encoder.pt and no complete checkpoint that can be read (a "
                                            "run folder, .../checkpoints/step_N with a COMPLETE marker, or an "
                                            "encoder.pt file)")
                ckpt = found[1]
            enc, meta = encoder_from_checkpoint(ckpt)
            extra = {"step": meta["step"], "mlflow_run_id": meta.get("mlflow_run_id"), "source": str(ckpt)}
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as e:  # UsageError is a ValueError
        print(f"aupretrain-export: error: {' '.join(str(e).split())[:600]}", file=sys.stderr)
        return 2
    save_encoder_folder(enc, a.out, extra)
    print(json.dumps({"out": str(Path(a.out).resolve()), "au_dim": enc.au_dim, **extra}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
