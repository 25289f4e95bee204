"""aupretrain-eval ENCODER [hydra overrides]: linear AU probe of an exported encoder (and the reference rows).

    aupretrain-eval runs/quickstart-.../encoder.pt eval.folds=3
    aupretrain-eval runs/x/encoder.pt --config runs/x/config.yaml --mlflow-run RUN_ID   # what training runs
Results print as a table and are written to <encoder folder>/eval.json; with --mlflow-run RUN_ID they are
also logged to that MLflow run (in the store the run folder recorded, unless tracking.uri is given).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aupretrain-eval", description=__doc__.splitlines()[0])
    ap.add_argument("encoder", help="encoder.pt written by training")
    ap.add_argument("--mlflow-run", help="log eval metrics into this MLflow run id")
    ap.add_argument("--config", help="a run's saved config (<run>/config.yaml) instead of configs/; overrides apply on top")
    ap.add_argument("--step", type=int, default=0, help="MLflow step of the eval metrics (training's last step)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of configs/ (eval.*)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from ..config import load_config
    from ..engine.tracking import Tracker
    from ..eval.run import evaluate
    from ..models.encoder import load_encoder

    if not Path(a.encoder).is_file():
        print(f"aupretrain-eval: error: {a.encoder}: no such file", file=sys.stderr)
        return 2
    torch.set_num_threads(os.cpu_count() or 1)
    if a.config:
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(OmegaConf.load(a.config), OmegaConf.from_dotlist(a.overrides))
    else:
        cfg = load_config(a.overrides)
    folder = Path(a.encoder).parent
    run_dir = folder if (folder / "tracking.json").exists() else None  # the store the training run recorded
    tracker = Tracker(cfg, True, "eval", run_id=a.mlflow_run, run_dir=run_dir) if a.mlflow_run else None
    evaluate(cfg, load_encoder(a.encoder), tracker, folder, step=a.step)
    if tracker:
        tracker.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
