"""aupretrain-eval ENCODER [hydra overrides]: linear AU probe of an exported encoder (and the random floor).

    aupretrain-eval runs/quickstart-.../encoder.pt eval.folds=3
Results print as a table and are written to <encoder folder>/eval.json; with --mlflow-run RUN_ID they are
also logged to that MLflow run.
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
    cfg = load_config(a.overrides)
    tracker = Tracker(cfg, True, "eval", run_id=a.mlflow_run) if a.mlflow_run else None
    evaluate(cfg, load_encoder(a.encoder), tracker, Path(a.encoder).parent)
    if tracker:
        tracker.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
