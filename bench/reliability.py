"""The reliability report: run the fault-injection suite (`tests/reliability/`) and tabulate what each fault did.

    python bench/reliability.py --json bench/results/reliability.json
    python bench/reliability.py -k "checkpoint or s3" --json bench/results/rel_part.json   # a subset (pytest -k)

Every test in `tests/reliability/` injects one or more faults for real (kill -9 of a rank, a real MLflow or S3
server killed and restarted, a full tmpfs, damaged shard files, hostile configs and checkpoint files) and records
through its `fault` fixture what happened, whether data was lost (measured by the test) and the seconds to detect;
`recovered` is whether the test passed, i.e. whether every assertion about the recovery or the clear refusal held.
A test that fails before recording anything is reported as one unrecovered row with pytest's message.

Prints the table (fault, what happened, recovered?, data lost?, seconds to detect) and writes
`{"faults": [{"fault", "recovered", "data_lost", "detail", "detect_s", "test"}], "summary": {...}}`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_suite(select: str | None, timeout: int) -> tuple[list[dict], float, int]:
    """Run pytest over tests/reliability; returns (records, seconds, pytest's exit code)."""
    with tempfile.TemporaryDirectory(prefix="aupretrain-reliability-") as tmp:
        log, junit = Path(tmp) / "faults.jsonl", Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--timeout", str(timeout),
               f"--junitxml={junit}", str(ROOT / "tests" / "reliability")] + (["-k", select] if select else [])
        t0 = time.monotonic()
        rc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "AUPRETRAIN_FAULT_LOG": str(log)}).returncode
        seconds = time.monotonic() - t0
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        recorded = {r["test"].split("::", 1)[1] for r in records}
        if junit.exists():  # failed tests that recorded nothing still get a row
            for case in ET.parse(junit).getroot().iter("testcase"):
                name = case.get("name")
                failure = case.find("failure") if case.find("failure") is not None else case.find("error")
                if failure is not None and name not in recorded:
                    records.append({"fault": name, "detail": f"test failed: {failure.get('message', '')[:300]}",
                                    "data_lost": None, "detect_s": None, "recovered": False,
                                    "test": f"{case.get('classname')}::{name}"})
    return records, seconds, rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("-k", dest="select", help="only the tests pytest -k selects")
    ap.add_argument("--timeout", type=int, default=900, help="per-test timeout, s")
    a = ap.parse_args()
    from bench.common import report

    records, seconds, rc = run_suite(a.select, a.timeout)
    rows = [{"fault": r["fault"], "what happened": r["detail"], "recovered": "yes" if r["recovered"] else "NO",
             "data lost": "NO" if r["data_lost"] is False else "yes" if r["data_lost"] else "?",
             "detect s": "-" if r["detect_s"] is None else f"{r['detect_s']:.1f}"} for r in records]
    summary = {"faults": len(records), "recovered": sum(bool(r["recovered"]) for r in records),
               "data_lost": sum(bool(r["data_lost"]) for r in records), "suite_s": round(seconds, 1), "pytest_rc": rc}
    report("Injected faults (tests/reliability)", rows, None)
    print(json.dumps(summary))
    if a.json:
        from bench.common import machine

        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"machine": machine(), "faults": records, "summary": summary}, indent=1,
                                           ensure_ascii=False))
        print(f"wrote {a.json}")
    return 0 if rc == 0 and summary["recovered"] == summary["faults"] and not summary["data_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
