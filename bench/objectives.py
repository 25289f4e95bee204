"""The paper's comparison on our data: pretrain with each objective under the same preset, probe, compare.

    python bench/objectives.py --json bench/results/objectives.json
    python bench/objectives.py --objectives clp tcl --ranks 2 -- train.steps=300

Each objective runs `deepspeed --num_gpus RANKS aupretrain/train.py experiment=quickstart objective=NAME`
(shards and eval corpus from the quickstart; `data.labels` is set for the supervised bound), logged to
the MLflow experiment `--experiment`; then the runs are ranked by mean AU F1 (`aupretrain-compare`).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objectives", nargs="+", default=["clp", "tcl", "simclr", "moco", "supervised"])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--experiment", default=f"objectives-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--shards", default="shards/synthetic")
    ap.add_argument("--labels", default="data/synthetic", help="labels folder for the supervised bound")
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    a = ap.parse_args()
    import mlflow

    from aupretrain.cli.compare import collect, show
    from bench.common import report

    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    ids, wall = [], {}
    for name in a.objectives:
        extra = [f"data.labels={a.labels}"] if name == "supervised" else []
        cmd = ["deepspeed", "--num_gpus", str(a.ranks), str(ROOT / "aupretrain" / "train.py"), "experiment=quickstart",
               f"objective={name}", f"run.name=cmp-{name}", f"tracking.experiment={a.experiment}",
               f"data.shards={a.shards}", *extra, *a.overrides]
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        wall[name] = time.time() - t0
    client = mlflow.tracking.MlflowClient(uri)
    exp = client.get_experiment_by_name(a.experiment)
    rows = collect(client, client.search_runs([exp.experiment_id], max_results=1000))
    show(rows)
    flat = [{"objective": r["objective"], "run": r["run"], "steps": r["steps"], "wall_s": wall.get(r["objective"], float("nan")),
             "f1_mean": r["f1_mean"], "f1_random": r["f1_random"] or float("nan"),
             "identity_acc": r["identity_acc"] if r["identity_acc"] is not None else float("nan")} for r in rows]
    ids = [r["run_id"] for r in rows]
    report(f"Objectives under experiment=quickstart ({a.ranks} ranks)", flat, a.json,
           {"per_au": {r["objective"]: r["f1"] for r in rows}, "run_ids": ids, "overrides": a.overrides})


if __name__ == "__main__":
    main()
