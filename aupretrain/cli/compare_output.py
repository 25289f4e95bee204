"""aupretrain-compare's output: the table on screen (`show`) and the files: the table (CSV), the bar chart (PNG or another format matplotlib writes) and
the rows as JSON. `check_outputs` refuses, before the store is read, a path that cannot be written; `write_outputs`
writes every file or none (each to a temporary file beside it, renamed into place once all are written)."""
from __future__ import annotations

import json
import os
from pathlib import Path

DASH = "–"  # what the table shows for a value a run did not log


def shown(v) -> str:
    """`v` as the table and chart show it: DASH for a value that is missing (None), else str(v)."""
    return DASH if v is None else str(v)


def chart_format(path: Path) -> str:
    """The image format of a chart written to `path`: its suffix (lower case, no dot), png where it has none."""
    return path.suffix[1:].lower() or "png"


def _writable(path: Path) -> str | None:
    """Why a file cannot be written at `path` (its missing folders created first), or None when it can. Tries it:
    opens an existing file for writing without changing it, or creates and removes a file (or folder) in the nearest
    folder that exists."""
    import tempfile

    if path.is_dir():
        return "is a folder; give a file path"
    if path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY))
        except OSError as e:
            return f"cannot be written ({e.strerror})"
        return None
    up = path.absolute().parent
    while not up.exists():
        up = up.parent
    if not up.is_dir():
        return f"{up} is a file, not a folder"
    try:
        if up == path.absolute().parent:
            with tempfile.NamedTemporaryFile(dir=up, prefix=".aupretrain-compare-"):
                pass
        else:
            os.rmdir(tempfile.mkdtemp(dir=up, prefix=".aupretrain-compare-"))
    except OSError as e:
        return f"cannot be created in {up} ({e.strerror})"
    return None


def check_outputs(outputs: list[tuple[str, str, Path]]) -> None:
    """Each (argument, kind: table | chart | JSON, path) of `outputs` can be written, and no two name the same file;
    a chart's suffix is a format matplotlib writes. Raises UsageError naming the argument and path."""
    from ..errors import UsageError

    seen: dict[Path, str] = {}
    for arg, kind, path in outputs:
        if not str(path).strip():
            raise UsageError(f"{arg}: an empty path")
        key = path.expanduser().absolute()
        if key in seen:
            raise UsageError(f"{arg} {path}: is also the {seen[key]}; give another path")
        seen[key] = f"{kind} file ({arg})"
        why = _writable(path)
        if why:
            raise UsageError(f"{arg} {path}: {why}")
        if kind == "chart":
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            kinds = FigureCanvasAgg.get_supported_filetypes()
            if chart_format(path) not in kinds:
                raise UsageError(f"{arg} {path}: matplotlib cannot write .{chart_format(path)} images (it writes "
                                 f"{', '.join('.' + k for k in sorted(kinds))})")


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
        longest = max([len(c), *(len(shown(r[c])) for r in rows if c in r)]) if c in text else None
        t.add_column(c, justify="left" if c in text else "right", overflow="fold",
                     min_width=None if longest is None else min(longest, 80))
    pct = lambda v: DASH if v is None else f"{100 * v:.1f}"  # noqa: E731
    for r in rows:
        fps = DASH if r["frames_per_s"] is None else f"{r['frames_per_s']:.0f}"
        t.add_row(r["run"], shown(r["objective"]), shown(r["model"]), shown(r["steps"]), shown(r["clips/rank/step"]), r["dataset"],
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
    evaluations were made with different settings), then `F1 <AU>` per AU (F1 and accuracies in [0, 1]). A value
    a run did not log is an empty field."""
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


def plot(rows: list[dict], path: str | Path, fmt: str | None = None) -> None:
    """Write a bar chart (120 dpi, format `fmt`, else `path`'s suffix) to `path`: mean F1 per run, with its
    random-init floor where the run logged one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3.5))
    names = [f"{r['run']}\n{shown(r['objective'])}" + (f" [{r['eval_group']}]" if "eval_group" in r else "")
             for r in rows]
    ax.bar(names, [r["f1_mean"] for r in rows], label="pretrained")
    floor = [(n, r["f1_random"]) for n, r in zip(names, rows) if r["f1_random"] is not None]
    if floor:
        ax.scatter([n for n, _ in floor], [v for _, v in floor], color="k", marker="_", s=400, label="random-init")
    ax.set_ylabel("mean F1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, format=fmt or chart_format(Path(path)))
    plt.close(fig)


def write_outputs(rows: list[dict], table: Path, chart: Path, json_path: Path | None) -> None:
    """Write the CSV `table`, the chart and the JSON rows (where `json_path`), creating missing folders: every file
    or none (on an error, the temporary files are removed and the error raised)."""
    made: list[tuple[Path, Path]] = []
    try:
        for path, write in ((table, lambda p: write_csv(rows, p)),
                            (chart, lambda p: plot(rows, p, chart_format(chart))),
                            *([(json_path, lambda p: p.write_text(json.dumps(rows, indent=1)))] if json_path else [])):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            made.append((tmp, path))
            write(tmp)
        for tmp, path in made:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in made:
            tmp.unlink(missing_ok=True)
        raise
