"""aupretrain-compare: compare pretraining runs tracked in MLflow by their AU probe results.

    aupretrain-compare                          # every evaluated run of experiment "aupretrain"
    aupretrain-compare ablations --out results/ablations   # -> results/ablations.csv + .png
    aupretrain-compare --runs RUN_ID RUN_ID ... --json cmp.json

Tracking store: --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db (as training).
One row per evaluation: objective, model, steps, clips per rank per step, evaluation dataset and protocol, mean
F1 and its random-init floor, identity accuracy (lower = more person-independent), training frames/s (median), per-AU
F1. Evaluations made with different settings (their `eval.*` params: split, identities, folds, probe, data root)
get a letter each, are ranked within their letter, and what differs is printed under the table (only settings the
row's dataset reads: no eval.corpus / eval.identities for BP4D, no eval.root for the synthetic set). Training's end-of-run evaluation lives in the pretraining run; every later `aupretrain-eval` of a run is its
own run nested under it, and reads its pretraining run's objective, model, steps and speed from there.
Sorted by mean F1; printed, and saved as `<out>.csv` and `<out>.png` (default out: compare-<experiment>). A value a
run did not log is "–" (null in JSON, empty in CSV). `--runs`: a named run without evaluation results of its own or
nested under it is left out with a warning naming it. The store is only read: one that does not exist is refused,
never created; every output is checked writable (missing folders are created) before the store is read.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..track.store import (StoreError, check_tracking_uri, quick_http, redact, store_error, store_missing,
                           unreachable)
from .compare_output import check_outputs, show, write_outputs

PROG = "aupretrain-compare"
def get_runs(client, ids: list[str], uri: str) -> list:
    """The MLflow runs of `ids`, in order. Raises StoreError (status 2) naming every id the store does not have."""
    from mlflow.exceptions import MlflowException

    runs, missing = [], []
    for r in ids:
        try:
            runs.append(client.get_run(r))
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE") or unreachable(e):
                raise
            missing.append(r)
    if missing:
        raise StoreError(f"--runs: no run with id {', '.join(missing)} in {redact(uri)}", 2)
    return runs


def pretraining_of(client, run, cache: dict) -> tuple[str | None, object | None]:
    """(id, run) of the pretraining run an evaluation run was logged under (`mlflow.parentRunId`, else the
    `eval.pretraining_run` tag when it names another run): (None, None) for a run that is its own pretraining run,
    (id, None) where the store does not have that run. `cache`: run id -> run, filled as it reads."""
    tags = run.data.tags
    parent = tags.get("mlflow.parentRunId") or tags.get("eval.pretraining_run")
    if not parent or parent == run.info.run_id:
        return None, None
    if parent not in cache:
        from mlflow.exceptions import MlflowException

        try:
            cache[parent] = client.get_run(parent)
        except MlflowException as e:
            if unreachable(e):  # the server went away: not a missing parent
                raise
            cache[parent] = None
    return parent, cache[parent]


def median_frames_per_s(client, run) -> float | None:
    """The median of `perf/frames_per_s` over every step `run` logged it (the run's typical training speed; the
    last value alone is one logging window, slow or fast by chance); None when it never did."""
    if "perf/frames_per_s" not in run.data.metrics:
        return None
    import statistics

    values = [m.value for m in client.get_metric_history(run.info.run_id, "perf/frames_per_s")]
    return statistics.median(values) if values else run.data.metrics["perf/frames_per_s"]


# eval.* settings that change no figure of a row (extra reference rows, batching, a cache folder)
NOT_SETTINGS = ("eval.baselines", "eval.random_baseline", "eval.batch_size", "eval.cache")
# eval.* settings only the synthetic evaluation set reads (configs/eval/synthetic.yaml: which identities, corpus and
# frames are generated); BP4D / DISFA / GFT evaluations log them too (their presets inherit synthetic.yaml) but
# ignore them. And the settings only those read (the licensed copy and which of its subjects).
SYNTHETIC_ONLY = ("eval.split", "eval.splits", "eval.corpus", "eval.identities", "eval.videos_per_identity",
                  "eval.frames", "eval.first_identity", "eval.seed")
REAL_ONLY = ("eval.root", "eval.subjects")
INTENSITY_CODED = ("synthetic", "disfa")  # eval.au_threshold is read there; BP4D / GFT code occurrence


def applies(key: str, dataset: str) -> bool:
    """Whether the eval setting `key` (a param name, e.g. `eval.splits.test.seed`) is read when evaluating on
    `dataset`: `SYNTHETIC_ONLY` keys on the synthetic set only, `REAL_ONLY` keys on the others only,
    `eval.au_threshold` on the intensity-coded sets only (`INTENSITY_CODED`)."""
    if key == "eval.au_threshold":
        return dataset in INTENSITY_CODED
    only = REAL_ONLY if dataset == "synthetic" else SYNTHETIC_ONLY
    return not any(key == k or key.startswith(k + ".") for k in only)


def eval_settings(run, protocol: str) -> dict[str, str]:
    """The evaluation settings an evaluation run was made with: its `eval.*` params (an `aupretrain-eval` run logs
    them as its own; a training run's end-of-run evaluation used the run's), less `NOT_SETTINGS` and, for the
    linear protocol, `eval.finetune.*`."""
    return {k: v for k, v in run.data.params.items() if k.startswith("eval.") and not k.startswith(NOT_SETTINGS)
            and not (protocol == "linear" and k.startswith("eval.finetune."))}


def _letters(n: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, ... (spreadsheet column names)."""
    out = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        out = chr(ord("A") + r) + out
    return out


def as_read(key: str, value: str, dataset: str) -> str:
    """The value of an eval setting as the evaluation used it: DISFA evaluations made before `eval.au_threshold`
    was read there logged synthetic.yaml's 0.5 while thresholding at intensity 2, so a logged value below 1 of a
    DISFA row reads as 2; everything else as logged."""
    if key == "eval.au_threshold" and dataset == "disfa":
        try:
            return "2" if float(value) < 1 else value
        except ValueError:
            return value
    return value


def label_settings(rows: list[dict]) -> list[str]:
    """Where rows were evaluated with different settings (`eval_settings`, kept in each row's "eval_params"): each
    row gets "eval_settings" {key: value} of the keys that differ between rows ("–" where a run did not log one),
    less those its evaluation dataset does not read (`applies`: no eval.corpus for a BP4D row, no eval.root for a
    synthetic one), and a letter "eval_group" (A, B, ... one per distinct set, in order of the best row); rows are
    re-sorted by group, then mean F1. Returns one line per group ("A: eval.split=test, eval.identities=6"); [] and
    nothing added when every row was evaluated alike. Rows of different letters do not compare (other identities,
    split, probe or folds)."""
    read = [{k: as_read(k, v, r["dataset"]) for k, v in r["eval_params"].items() if applies(k, r["dataset"])}
            for r in rows]
    keys = sorted({k for p in read for k in p})
    differ = [k for k in keys if len({p.get(k, "–") for r, p in zip(rows, read) if applies(k, r["dataset"])}) > 1]
    if not differ:
        return []
    groups: dict[tuple, str] = {}
    for r, p in zip(rows, read):  # rows come best first: group A holds the best row
        r["eval_settings"] = {k: p.get(k, "–") for k in differ if applies(k, r["dataset"])}
        r["eval_group"] = groups.setdefault(tuple(r["eval_settings"].items()), _letters(len(groups)))
    rows.sort(key=lambda r: (r["eval_group"], -r["f1_mean"]))
    return [f"{g}: " + (", ".join(f"{k}={v}" for k, v in items) or "none of these settings is read by its dataset")
            for items, g in groups.items()]


def _number(params: dict, key: str) -> int | None:
    """The whole number param `key` holds ("150", "150.0"), None where it is not logged or no number."""
    try:
        return int(float(params[key]))
    except (KeyError, TypeError, ValueError):
        return None


def collect(client, runs, notes: list[str] | None = None) -> list[dict]:
    """One row per MLflow run of `runs` that logged `eval/f1_mean` (others are skipped), best mean F1 first: run
    name, id, the pretraining run's id, objective, model, steps, clips/rank/step (data.batch_size x gradient
    accumulation), eval dataset and protocol (tags, else params; runs from before they were logged: synthetic,
    linear), frames_per_s (`median_frames_per_s`), f1_mean, f1_random, identity_acc, `f1` {AU: F1} and
    `eval_params` (`eval_settings`). A value the run did not log is None (never a stand-in such as 0). An
    evaluation logged as its own run (`aupretrain-eval` of a run folder: nested under the pretraining run) takes the
    objective, model, steps, batch and frames/s from that pretraining run, read with `client`, and is named
    `<pretraining run> / <evaluation run>`; where the store does not have that run, they are None and a line saying
    so is added to `notes`."""
    rows, cache = [], {r.info.run_id: r for r in runs}
    for run in runs:
        m, tags = run.data.metrics, run.data.tags
        if "eval/f1_mean" not in m:
            continue
        parent_id, parent = pretraining_of(client, run, cache)
        name = run.info.run_name or run.info.run_id[:8]
        if parent is not None:
            name = f"{parent.info.run_name or parent.info.run_id[:8]} / {name}"
        elif parent_id is not None and notes is not None:
            notes.append(f"{name} ({run.info.run_id}) was logged as an evaluation of run {parent_id}, which is not "
                         "in the store: its objective, model, steps, clips/rank/step and frames/s are unknown (–)")
        source = parent if parent is not None else None if parent_id else run  # where the pretraining's params live
        p = source.data.params if source is not None else {}
        batch, accumulation = _number(p, "data.batch_size"), _number(p, "deepspeed.gradient_accumulation_steps")
        protocol = tags.get("eval.protocol") or run.data.params.get("eval.protocol") or "linear"
        rows.append({
            "run": name, "run_id": run.info.run_id, "pretraining_run": source.info.run_id if source else None,
            "objective": p.get("objective.name"), "model": p.get("model.name"), "steps": _number(p, "train.steps"),
            "clips/rank/step": None if batch is None else batch * (accumulation or 1),
            "dataset": tags.get("eval.dataset") or run.data.params.get("eval.dataset") or "synthetic",
            "protocol": protocol,
            "frames_per_s": median_frames_per_s(client, source) if source is not None else None,
            "f1_mean": m["eval/f1_mean"], "f1_random": m.get("eval_random/f1_mean"),
            "identity_acc": m.get("eval/identity_acc"),
            "f1": {k.split("/", 2)[2]: v for k, v in m.items() if k.startswith("eval/f1/")},
            "eval_params": eval_settings(run, protocol),
        })
    return sorted(rows, key=lambda r: -r["f1_mean"])


def main(argv: list[str] | None = None) -> int:
    """Run aupretrain-compare with `argv` (default: sys.argv[1:]); returns the exit status: 0, 2 for a wrong
    argument (unknown experiment or run id, conflicting experiment names, bad URI), 1 when the store does not
    answer."""
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("experiment_name", nargs="?", metavar="EXPERIMENT", help="MLflow experiment (default: aupretrain)")
    ap.add_argument("--tracking-uri")
    ap.add_argument("--experiment", help="the same as EXPERIMENT")
    ap.add_argument("--runs", nargs="+", help="run ids (default: every run of the experiment with eval results)")
    ap.add_argument("--out", help="write <out>.csv and <out>.png (default: compare-<experiment>)")
    ap.add_argument("--json", help="also write the rows as JSON here")
    ap.add_argument("--plot", help="write the bar chart (PNG) here instead of <out>.png")
    a = ap.parse_args(argv)
    from ..errors import UsageError

    if a.experiment_name and a.experiment and a.experiment_name != a.experiment:
        print(f"{PROG}: error: EXPERIMENT {a.experiment_name!r} and --experiment {a.experiment!r} differ; "
              "give one of them", file=sys.stderr)
        return 2
    a.experiment = a.experiment_name or a.experiment or "aupretrain"
    a.runs = list(dict.fromkeys(a.runs)) if a.runs else a.runs  # each run once
    out = Path(a.out or f"compare-{a.experiment if not a.runs else 'runs'}")
    table, chart = out.with_name(out.name + ".csv"), Path(a.plot) if a.plot else out.with_name(out.name + ".png")
    json_path = Path(a.json) if a.json is not None else None
    given = "--tracking-uri" if a.tracking_uri else "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else ""
    uri = a.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    try:  # every output writable, the store one MLflow can open and there: before the store is read
        check_outputs([("--out", "table", table), ("--plot" if a.plot else "--out", "chart", chart),
                       *([("--json", "JSON", json_path)] if json_path is not None else [])])
        if given:  # a store MLflow cannot open: one line, not a hang
            check_tracking_uri(uri, given)
        missing = store_missing(uri)
        if missing:
            raise UsageError(f"{given or 'the default store'} {redact(uri)}: {missing}; compare reads an existing "
                             "store (give --tracking-uri or set $MLFLOW_TRACKING_URI to the one training used)"
                             + (f"; cannot look up --runs {', '.join(a.runs)}" if a.runs else ""))
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    try:
        with quick_http():
            rows, left_out, notes = read_rows(a, uri)
    except StoreError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.status
    if not rows:
        if left_out:
            print(f"{PROG}: error: --runs: no evaluation results to compare: {'; '.join(left_out)}", file=sys.stderr)
        else:
            print(f"{PROG}: error: no run of experiment {a.experiment!r} in {redact(uri)} has evaluation results "
                  "(eval/f1_mean); evaluate a run with aupretrain-eval", file=sys.stderr)
        return 2
    for line in [*(f"--runs: left out {r}" for r in left_out), *notes]:
        print(f"{PROG}: warning: {line}", file=sys.stderr)
    groups = label_settings(rows)
    for r in rows:
        r.pop("eval_params")
    show(rows, groups)
    try:
        write_outputs(rows, table, chart, json_path)
    except OSError as e:
        print(f"{PROG}: error: could not write {e.filename or table}: {e.strerror or e}; nothing was written",
              file=sys.stderr)
        return 1
    print(f"saved {table} and {chart}" + (f" and {json_path}" if json_path is not None else ""))
    return 0


def nested_evaluations(client, run) -> list:
    """The evaluation runs (`eval/f1_mean` logged) nested under `run` (`aupretrain-eval` of its run folder or
    export, logged with `mlflow.parentRunId`), in its experiment."""
    found = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'",
                               max_results=5000)
    return [r for r in found if "eval/f1_mean" in r.data.metrics]


def read_rows(a: argparse.Namespace, uri: str) -> tuple[list[dict], list[str], list[str]]:
    """(rows (`collect`), runs left out, notes) of the runs `a.runs` (with the evaluations nested under each named
    run), else of experiment `a.experiment`, in the store at `uri`. "Left out": a named run with no evaluation
    results of its own or nested under it, as "ID (name): why". Notes: `collect`'s. Raises StoreError: an unknown
    experiment or run id, a URI MLflow cannot use, a server that does not answer."""
    import mlflow
    from mlflow.exceptions import MlflowException

    left_out, notes = [], []
    try:
        client = mlflow.tracking.MlflowClient(uri)
        if a.runs:
            runs, have = [], set()
            for run in get_runs(client, a.runs, uri):
                found = [run] if "eval/f1_mean" in run.data.metrics else []
                found += nested_evaluations(client, run)
                if not found:
                    left_out.append(f"{run.info.run_id} ({run.info.run_name or 'no name'}): no evaluation results "
                                    "(no eval/f1_mean, and no evaluation run nested under it); evaluate it with "
                                    "aupretrain-eval")
                runs += [r for r in found if r.info.run_id not in have]
                have |= {r.info.run_id for r in found}
        else:
            exp = client.get_experiment_by_name(a.experiment)
            if exp is None:
                raise StoreError(f"no experiment {a.experiment!r} in {redact(uri)}", 2)
            runs = client.search_runs([exp.experiment_id], max_results=5000)
        return collect(client, runs, notes), left_out, notes
    except StoreError:
        raise
    except MlflowException as e:
        raise store_error(e, uri) from None
    except Exception as e:  # noqa: BLE001 - requests' own errors where MLflow lets them through
        if not unreachable(e):
            raise
        raise store_error(e, uri) from None


if __name__ == "__main__":
    sys.exit(main())
