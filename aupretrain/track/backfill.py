"""What a run's `metrics.jsonl` holds that its MLflow run does not: the metrics a resumed job sends (backfills)
after the store was away (`tracker.Tracker`)."""
from __future__ import annotations

import json
from pathlib import Path


def unsent(client, run_id: str, path: Path, nbytes: int, until: int) -> list:
    """The metric values among the first `nbytes` bytes of a `metrics.jsonl` (one JSON object per line: "step",
    "time_ms" and metric: value), at steps up to `until`, that MLflow run `run_id` does not hold — compared per
    metric and step (one `get_metric_history` call per metric name); where jobs logged one step twice (a job that
    crashed after a checkpoint, its successor resumed from it), the later line's value — as
    `mlflow.entities.Metric`s. A line cut by a crash is skipped."""
    from mlflow.entities import Metric

    with open(path, "rb") as f:
        lines = f.read(nbytes).decode("utf-8", "replace").splitlines()
    last: dict[tuple[str, int], tuple[float, int]] = {}
    for line in lines:
        try:
            r = json.loads(line)
            step = int(r["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if step <= until:
            for k, v in r.items():
                if k not in ("step", "time_ms") and isinstance(v, (int, float)):
                    last[(k, step)] = (float(v), int(r.get("time_ms", 0)))
    keys = sorted({k for k, _ in last})
    held = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}
    return [Metric(k, v, ts, step) for (k, step), (v, ts) in last.items() if step not in held[k]]
