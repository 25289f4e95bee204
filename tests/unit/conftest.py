"""Unit tests run their tensors on one intra-op thread (the suite's `one_thread` fixture, made automatic here).

Their tensors are small (toy trainings of a few hundred steps, one batch through a method): there PyTorch's OpenMP
pool costs more than it gives, and on a shared 2-core box its threads spin against the other processes. Measured
on the 2-core CI-sized box beside a 2-rank training: `tests/unit` in 286 s with the default 2 threads, 154 s with one
(docs/benchmarks.md, "The test suite's time after session 48"). Per test, restored after it: integration tests that
train in the pytest process keep the default, and processes the tests start read their own settings.
"""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _unit_tests_on_one_thread(one_thread):
    yield
