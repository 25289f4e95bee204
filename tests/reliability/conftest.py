"""The reliability suite: every test in this folder injects a fault and says what happened through the `fault`
fixture. The tests assert the right behaviour (recovered, or refused with a clear error; nothing lost);
`bench/reliability.py` runs this folder and turns the records into its table and JSON.

    def test_x(fault, ...):
        t0 = time.monotonic()
        ...inject...
        fault("kill -9 one rank mid-step", "torchrun ended the job naming rank 1; relaunch resumed at step 4",
              data_lost=False, detect_s=time.monotonic() - t0)
        assert ...

With `$AUPRETRAIN_FAULT_LOG` set, each record is appended to that JSON-lines file at the end of the test with
`recovered` = whether the test passed (every assertion about the recovery held).
"""
from __future__ import annotations

import json
import os

import pytest

_PASSED = pytest.StashKey[bool]()


class FaultLog:
    """Callable: `fault(name, happened, data_lost=False, detect_s=None)` records one injected fault."""

    def __init__(self, test: str):
        self.test = test
        self.records: list[dict] = []

    def __call__(self, name: str, happened: str, data_lost: bool = False, detect_s: float | None = None) -> None:
        self.records.append({"fault": name, "detail": happened, "data_lost": bool(data_lost),
                             "detect_s": None if detect_s is None else round(float(detect_s), 2), "test": self.test})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.stash[_PASSED] = rep.passed


@pytest.fixture
def fault(request):
    log = FaultLog(request.node.nodeid)
    yield log
    path = os.environ.get("AUPRETRAIN_FAULT_LOG")
    if path:
        passed = request.node.stash.get(_PASSED, False)
        with open(path, "a", encoding="utf-8") as f:
            for rec in log.records:
                f.write(json.dumps({**rec, "recovered": passed}, ensure_ascii=False) + "\n")
