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
Sorted by mean F1; printed, and saved as `<out>.csv` and `<out>.png` (default out: compare-<experiment>).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

PROG = "aupretrain-compare"
# MLflow's HTTP defaults (7 retries with backoff, 120 s timeout) keep a read-only look at a server that is down
# silent for minutes; this command fails within about a minute instead, unless the user set these variables.
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


class StoreError(Exception):
    """The tracking store cannot be read: `status` is the exit status (1: the server does not answer or fails,
    2: the URI or a request is wrong), the message is the one line to print."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def quick_http():
    """Within: MLflow's HTTP retries and timeout lowered to QUICK_HTTP where the environment does not set them
    (MLflow reads them at each request); the environment as it was afterwards."""
    added = [k for k in QUICK_HTTP if k not in os.environ]
    os.environ.update({k: QUICK_HTTP[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def unreachable(e: BaseException) -> BaseException | None:
    """The failure to reach an HTTP server (connection refused or reset, unknown host, timeout, retries used up)
    that `e` is, or was raised from or during; None when it is none."""
    import requests

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.RetryError)):
            return e
        e = e.__cause__ or e.__context__
    return None


def why_unreachable(e: BaseException) -> str:
    """A few words on why the server did not answer: the OS's reason (`Connection refused`, `Name or service not
    known`), `timed out`, else the requests exception's name."""
    import re

    import requests

    cause = unreachable(e) or e
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", f"{e} {cause}")
    if found:
        return found[1].strip()
    if isinstance(cause, requests.exceptions.Timeout):
        return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s"
    return type(cause).__name__


def store_error(e: Exception, uri: str) -> StoreError:
    """The one-line StoreError for an exception raised while reading the store at `uri` (password redacted)."""
    from ..engine.tracking import redact

    shown = redact(uri)
    if unreachable(e):
        return StoreError(f"the tracking server at {shown} does not answer ({why_unreachable(e)}); check "
                          "--tracking-uri / $MLFLOW_TRACKING_URI and that the server is running", 1)
    code = getattr(e, "error_code", "")
    what = " ".join(redact(getattr(e, "message", None) or str(e)).split())[:600]
    usage = code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "ENDPOINT_NOT_FOUND")
    if type(e).__name__.startswith("Unsupported"):  # an unknown URI scheme
        usage = True
    return StoreError(f"tracking store {shown}: {what}", 2 if usage else 1)


def get_runs(client, ids: list[str], uri: str) -> list:
    """The MLflow runs of `ids`, in order. Raises StoreError (status 2) naming every id the store does not have."""
    from mlflow.exceptions import MlflowException

    from ..engine.tracking import redact

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


def pretraining_of(client, run, cache: dict) -> object | None:
    """The pretraining run an evaluation run was logged under (`mlflow.parentRunId`, else the
    `eval.pretraining_run` tag when it names another run), or None for a run that is its own pretraining run (or
    whose parent the store no longer has). `cache`: run id -> run, filled as it reads."""
    tags = run.data.tags
    parent = tags.get("mlflow.parentRunId") or tags.get("eval.pretraining_run")
    if not parent or parent == run.info.run_id:
        return None
    if parent not in cache:
        from mlflow.exceptions import MlflowException

        try:
            cache[parent] = client.get_run(parent)
        except MlflowException as e:
            if unreachable(e):  # the server went away: not a missing parent
                raise
            cache[parent] = None
    return cache[parent]


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


def collect(client, runs) -> list[dict]:
    """One row per MLflow run of `runs` that logged `eval/f1_mean` (others are skipped), best mean F1 first: run
    name, id, the pretraining run's id, objective, model, steps, clips/rank/step (data.batch_size x gradient
    accumulation), eval dataset and protocol, frames_per_s (`median_frames_per_s`), f1_mean, f1_random,
    identity_acc (None where not logged), `f1` {AU: F1} and `eval_params` (`eval_settings`). An evaluation logged as its own run (`aupretrain-eval` of a run folder: nested under the
    pretraining run) takes the objective, model, steps, batch and frames/s from that pretraining run, read with
    `client`, and is named `<pretraining run> / <evaluation run>`."""
    rows, cache = [], {r.info.run_id: r for r in runs}
    for run in runs:
        m, tags = run.data.metrics, run.data.tags
        if "eval/f1_mean" not in m:
            continue
        parent = pretraining_of(client, run, cache)
        source = parent or run  # where the pretraining's params and speed live
        p, name = source.data.params, run.info.run_name or run.info.run_id[:8]
        if parent is not None:
            name = f"{parent.info.run_name or parent.info.run_id[:8]} / {name}"
        batch = int(p.get("data.batch_size", 0) or 0) * int(p.get("deepspeed.gradient_accumulation_steps", 1) or 1)
        rows.append({
            "run": name, "run_id": run.info.run_id, "pretraining_run": source.info.run_id,
            "objective": p.get("objective.name", "?"), "model": p.get("model.name", "?"),
            "steps": int(float(p.get("train.steps", 0) or 0)),
            "clips/rank/step": batch,
            "dataset": tags.get("eval.dataset", "synthetic"), "protocol": tags.get("eval.protocol", "linear"),
            "frames_per_s": median_frames_per_s(client, source),
            "f1_mean": m["eval/f1_mean"], "f1_random": m.get("eval_random/f1_mean"),
            "identity_acc": m.get("eval/identity_acc"),
            "f1": {k.split("/", 2)[2]: v for k, v in m.items() if k.startswith("eval/f1/")},
            "eval_params": eval_settings(run, tags.get("eval.protocol", "linear")),
        })
    return sorted(rows, key=lambda r: -r["f1_mean"])


def show(rows: list[dict], groups: list[str]) -> None:
    """Print `rows` (from `collect`) as a rich table to stdout, F1 and accuracies x100, one column per AU; with
    `groups` (`label_settings`), an "eval" column of letters and, under the table, what each letter stands for.
    The table is 200 columns wide, or as wide as it needs to be: no run name, header or value is cut short."""
    from rich.console import Console
    from rich.table import Table

    aus = sorted({a for r in rows for a in r["f1"]}, key=lambda a: (len(a), a))
    t = Table(title="Runs by mean AU F1 (x100, linear probe, identity-held-out)")
    text = ("run", "objective", "model", "dataset", "protocol", "eval")
    for c in ("run", "objective", "model", "steps", "clips/rank/step", "dataset", "protocol", *(["eval"] if groups else []),
              "mean F1", "random-init", "identity acc", "frames/s", *aus):  # names fold, never cut to `smoke…`
        longest = max([len(c), *(len(str(r[c])) for r in rows if c in r)]) if c in text else None
        t.add_column(c, justify="left" if c in text else "right", overflow="fold",
                     min_width=None if longest is None else min(longest, 80))
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for r in rows:
        fps = "–" if r["frames_per_s"] is None else f"{r['frames_per_s']:.0f}"
        t.add_row(r["run"], r["objective"], r["model"], str(r["steps"]), str(r["clips/rank/step"]), r["dataset"],
                  r["protocol"], *([r["eval_group"]] if groups else []), f"[b]{pct(r['f1_mean'])}[/b]",
                  pct(r["f1_random"]), pct(r["identity_acc"]), fps, *[pct(r["f1"].get(a)) for a in aus])
    from rich.measure import Measurement

    wide = Console(width=10_000)  # at least 200 columns, more where the table needs them (many AUs, long names)
    console = Console(width=max(200, Measurement.get(wide, wide.options, t).maximum))
    console.print(t)
    if groups:
        console.print("These evaluations were made with different settings; rows of different letters do not "
                      "compare (ranked within each letter):", markup=False)
        for g in groups:
            console.print(f"  {g}", markup=False, soft_wrap=True)


def write_csv(rows: list[dict], path: str | Path) -> None:
    """One line per run: the table's columns (with `eval_group` and `eval_settings` "key=value; ..." where the
    evaluations were made with different settings), then `F1 <AU>` per AU (F1 and accuracies in [0, 1])."""
    import csv

    aus = sorted({a for r in rows for a in r["f1"]}, key=lambda a: (len(a), a))
    cols = ["run", "run_id", "pretraining_run", "objective", "model", "steps", "clips/rank/step", "dataset", "protocol", "f1_mean",
            "f1_random", "identity_acc", "frames_per_s"]
    settings = "eval_settings" in rows[0]  # label_settings found evaluations made differently
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*cols, *(["eval_group", "eval_settings"] if settings else []), *[f"F1 {a}" for a in aus]])
        for r in rows:
            extra = ([r["eval_group"], "; ".join(f"{k}={v}" for k, v in r["eval_settings"].items())] if settings
                     else [])
            w.writerow([("" if r[c] is None else r[c]) for c in cols] + extra + [r["f1"].get(a, "") for a in aus])


def plot(rows: list[dict], path: str) -> None:
    """Write a PNG bar chart (120 dpi) to `path`: mean F1 per run, with its random-init floor (0 when missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3.5))
    names = [f"{r['run']}\n{r['objective']}" + (f" [{r['eval_group']}]" if "eval_group" in r else "") for r in rows]
    ax.bar(names, [r["f1_mean"] for r in rows], label="pretrained")
    ax.scatter(names, [r["f1_random"] or 0 for r in rows], color="k", marker="_", s=400, label="random-init")
    ax.set_ylabel("mean F1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    if a.experiment_name and a.experiment and a.experiment_name != a.experiment:
        print(f"{PROG}: error: EXPERIMENT {a.experiment_name!r} and --experiment {a.experiment!r} differ; "
              "give one of them", file=sys.stderr)
        return 2
    a.experiment = a.experiment_name or a.experiment or "aupretrain"
    uri = a.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if a.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):  # a store MLflow cannot open: one line, not a hang
        from ..errors import UsageError
        from ..settings import check_tracking_uri

        try:
            check_tracking_uri(uri, "--tracking-uri" if a.tracking_uri else "MLFLOW_TRACKING_URI")
        except UsageError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
    try:
        with quick_http():
            rows = read_rows(a, uri)
    except StoreError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.status
    if not rows:
        from ..engine.tracking import redact

        print(f"{PROG}: error: no run with eval results in {redact(uri)}", file=sys.stderr)
        return 2
    groups = label_settings(rows)
    for r in rows:
        r.pop("eval_params")
    show(rows, groups)
    out = Path(a.out or f"compare-{a.experiment if not a.runs else 'runs'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    table, chart = out.with_name(out.name + ".csv"), Path(a.plot) if a.plot else out.with_name(out.name + ".png")
    write_csv(rows, table)
    plot(rows, str(chart))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    print(f"saved {table} and {chart}")
    return 0


def read_rows(a: argparse.Namespace, uri: str) -> list[dict]:
    """The rows (`collect`) of the runs `a.runs`, else of experiment `a.experiment`, in the store at `uri`.
    Raises StoreError: an unknown experiment or run id, a URI MLflow cannot use, a server that does not answer."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ..engine.tracking import redact

    try:
        client = mlflow.tracking.MlflowClient(uri)
        if a.runs:
            runs = get_runs(client, a.runs, uri)
        else:
            exp = client.get_experiment_by_name(a.experiment)
            if exp is None:
                raise StoreError(f"no experiment {a.experiment!r} in {redact(uri)}", 2)
            runs = client.search_runs([exp.experiment_id], max_results=5000)
        return collect(client, runs)
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
