"""`pack.parallel.parallel_map` under every start method: workers watch the process that started them (review:
under `forkserver`, Python 3.14's default, they compared against the packer's pid and all exited at once)."""
import subprocess
import sys

import pytest

SCRIPT = """
import multiprocessing, sys
multiprocessing.set_start_method(sys.argv[1], force=True)
from aupretrain.pack.parallel import parallel_map
print(list(parallel_map(abs, [-3, -2, -1, 0, 1, 2], 2)))
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_parallel_map_works_under_every_start_method(method):
    r = subprocess.run([sys.executable, "-c", SCRIPT, method], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[3, 2, 1, 0, 1, 2]", r.stderr[-2000:]
