"""Helpers shared by the benchmarks: a rich table on stdout and a JSON file."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path


def machine() -> dict:
    import os

    import torch

    return {"cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def report(title: str, rows: list[dict], path: str | None, extra: dict | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    cols = list(rows[0]) if rows else []
    for c in cols:
        t.add_column(c, justify="right" if isinstance(rows[0][c], (int, float)) else "left")
    for r in rows:
        t.add_row(*[f"{v:,.3f}" if isinstance(v, float) else str(v) for v in r.values()])
    Console(width=140).print(t)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"title": title, "machine": machine(), "rows": rows, **(extra or {})}, indent=1))
        print(f"wrote {path}")
