"""aupretrain-compare: compare pretraining runs tracked in MLflow by their AU probe results.

    aupretrain-compare                          # every evaluated run of experiment "aupretrain"
    aupretrain-compare --experiment ablations --json cmp.json --plot cmp.png
    aupretrain-compare --runs RUN_ID RUN_ID ...

Tracking store: --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (as training).
One row per run: objective, model, steps, clips per rank per step, mean F1 and its random-init floor, identity
accuracy (lower = more person-independent), and per-AU F1. Sorted by mean F1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def collect(client, runs) -> list[dict]:
    rows = []
    for run in runs:
        m, p = run.data.metrics, run.data.params
        if "eval/f1_mean" not in m:
            continue
        batch = int(p.get("data.batch_size", 0) or 0) * int(p.get("deepspeed.gradient_accumulation_steps", 1) or 1)
        rows.append({
            "run": run.info.run_name or run.info.run_id[:8], "run_id": run.info.run_id,
            "objective": p.get("objective.name", "?"), "model": p.get("model.name", "?"),
            "steps": int(float(p.get("train.steps", 0) or 0)),
            "clips/rank/step": batch,
            "f1_mean": m["eval/f1_mean"], "f1_random": m.get("eval_random/f1_mean"),
            "identity_acc": m.get("eval/identity_acc"),
            "f1": {k.split("/", 2)[2]: v for k, v in m.items() if k.startswith("eval/f1/")},
        })
    return sorted(rows, key=lambda r: -r["f1_mean"])


def show(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    aus = sorted({a for r in rows for a in r["f1"]}, key=lambda a: (len(a), a))
    t = Table(title="Runs by mean AU F1 (x100, linear probe, identity-held-out)")
    for c in ("run", "objective", "model", "steps", "clips/rank/step", "mean F1", "random-init", "identity acc", *aus):
        t.add_column(c, justify="left" if c in ("run", "objective", "model") else "right")
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for r in rows:
        t.add_row(r["run"], r["objective"], r["model"], str(r["steps"]), str(r["clips/rank/step"]),
                  f"[b]{pct(r['f1_mean'])}[/b]", pct(r["f1_random"]), pct(r["identity_acc"]),
                  *[pct(r["f1"].get(a)) for a in aus])
    Console(width=200).print(t)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3.5))
    names = [f"{r['run']}\n{r['objective']}" for r in rows]
    ax.bar(names, [r["f1_mean"] for r in rows], label="pretrained")
    ax.scatter(names, [r["f1_random"] or 0 for r in rows], color="k", marker="_", s=400, label="random-init")
    ax.set_ylabel("mean F1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aupretrain-compare", description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri")
    ap.add_argument("--experiment", default="aupretrain")
    ap.add_argument("--runs", nargs="+", help="run ids (default: every run of the experiment with eval results)")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--plot", help="write a bar chart (PNG) here")
    a = ap.parse_args(argv)
    import mlflow

    uri = a.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    if a.runs:
        runs = [client.get_run(r) for r in a.runs]
    else:
        exp = client.get_experiment_by_name(a.experiment)
        if exp is None:
            print(f"aupretrain-compare: error: no experiment {a.experiment!r} in {uri}", file=sys.stderr)
            return 2
        runs = client.search_runs([exp.experiment_id], max_results=5000)
    rows = collect(client, runs)
    if not rows:
        print(f"aupretrain-compare: error: no run with eval results in {uri}", file=sys.stderr)
        return 2
    show(rows)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    if a.plot:
        plot(rows, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
