"""aupretrain-eval ENCODER_OR_RUN [hydra overrides]: AU detection protocol of an encoder (and reference rows).

    aupretrain-eval runs/quickstart-.../encoder.pt eval.folds=3                    # synthetic identities
    aupretrain-eval runs/x eval=bp4d eval.root=/data/BP4D --save-head heads/bp4d   # BP4D, standard 3 folds
    aupretrain-eval exports/x eval=disfa eval.root=/data/DISFA eval.protocol=finetune
    aupretrain-eval runs/x/encoder.pt --config runs/x/config.yaml --mlflow-run RUN_ID   # what training runs
ENCODER_OR_RUN: a run folder (its encoder.pt), an export folder (model.safetensors + config.json) or an
encoder file. Results print as a table and are written to eval.json (+ eval_f1.png, eval_pca.png) in that
folder (the encoder file's folder); with --mlflow-run RUN_ID they are also logged to that MLflow run (in the
store the run folder recorded, unless tracking.uri is given) and tagged with the pretraining run id.
Datasets, folds and protocol: docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path


def resolve_encoder(path: str) -> tuple[Path, Path, Path | None]:
    """(what load_encoder reads, the folder outputs go to, the run folder if it is one). Raises
    FileNotFoundError naming the path when it holds no encoder."""
    p = Path(path)
    if p.is_dir():
        if (p / "encoder.pt").is_file():
            return p / "encoder.pt", p, p
        if (p / "model.safetensors").is_file() and (p / "config.json").is_file():
            return p, p, p if (p / "tracking.json").exists() else None
        raise FileNotFoundError(f"{path}: neither a run folder (encoder.pt) nor an export folder "
                                "(model.safetensors + config.json)")
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    folder = p.parent
    return p, folder, folder if (folder / "tracking.json").exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aupretrain-eval", description=__doc__.splitlines()[0])
    ap.add_argument("encoder", help="run folder, export folder or encoder.pt")
    ap.add_argument("--mlflow-run", help="log eval metrics into this MLflow run id (the pretraining run)")
    ap.add_argument("--config", help="a run's saved config (<run>/config.yaml) instead of configs/; overrides apply on top")
    ap.add_argument("--step", type=int, default=0, help="MLflow step of the eval metrics (training's last step)")
    ap.add_argument("--save-head", metavar="PATH", help="keep a head trained on every frame: PATH/head.safetensors + head.json")
    ap.add_argument("--head", metavar="PATH", help="also score this saved linear AU head as it is, no fitting (a supervised "
                    "run's <run>/au_head, or a --save-head folder): row 'pretrained (saved head)'")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: every core)")
    ap.add_argument("--out", help="folder for eval.json and the plots (default: the encoder's folder)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of configs/ (eval=bp4d, eval.root=..., eval.*)")
    a = ap.parse_intermixed_args(argv)  # flags before or after the positionals, then `-- OVERRIDES`
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from ..config import load_config
    from ..settings import validate
    from ..engine.tracking import Tracker, read_record
    from ..errors import UsageError
    from ..eval.run import evaluate
    from ..models.encoder import load_encoder

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    try:
        if a.config:
            from omegaconf import OmegaConf

            try:
                cfg = OmegaConf.merge(OmegaConf.load(a.config), OmegaConf.from_dotlist(a.overrides))
            except Exception as e:  # noqa: BLE001 - omegaconf's errors: an override or the file does not parse
                raise UsageError(f"--config {a.config} with {' '.join(a.overrides) or 'no overrides'}: "
                                 f"{' '.join(str(e).split())}") from None
        else:
            cfg = load_config(a.overrides)
        validate(cfg, ["eval", "model"])
    except UsageError as e:
        print(f"aupretrain-eval: error: {e}", file=sys.stderr)
        return 2
    try:
        enc_path, folder, run_dir = resolve_encoder(a.encoder)
        encoder = load_encoder(enc_path)
        if a.head:  # refused before the frames are read
            from ..eval.head import open_linear_head

            open_linear_head(a.head, encoder.au_dim)
    except (FileNotFoundError, ValueError) as e:
        print(f"aupretrain-eval: error: {e}", file=sys.stderr)
        return 2
    record = read_record(run_dir) if run_dir is not None else None
    pretraining_run = a.mlflow_run or (record or {}).get("run_id")
    tracker = Tracker(cfg, True, "eval", run_id=a.mlflow_run, run_dir=run_dir) if a.mlflow_run else None
    out = Path(a.out) if a.out else folder
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = evaluate(cfg, encoder, tracker, out, step=a.step, save_head=a.save_head,
                           pretraining_run=pretraining_run, head=a.head)
    except UsageError as e:
        print(f"aupretrain-eval: error: {e}", file=sys.stderr)
        return 2
    if tracker:
        tracker.finish()
    print(json.dumps({"eval": str(out / "eval.json"), "dataset": summary["dataset"], "protocol": summary["protocol"],
                      "f1_mean": next(iter(summary["results"].values()))["f1_mean"],
                      **({"head": summary["head"]} if "head" in summary else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
