"""Kill the packer mid-way (SIGKILL, then Ctrl-C), re-run it: the result is byte-identical to one
uninterrupted run (with another worker count), and no half-written shard is ever visible."""
import os
import signal
import subprocess
import sys
import time

import pytest

from aupretrain.data import shards
from aupretrain.pack.packer import PackSettings, pack
from aupretrain.synth import astronaut

from tests.conftest import run_env

SETTINGS = dict(samples_per_shard=2, shuffle_buffer=8)


def files(root):
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def run_until(cmd, out, shard: int, sig) -> int:
    """Start the CLI in its own process group; send sig to the group once shard-<shard>.tar is visible."""
    # as a foreground command gets it: a shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler (the suite may itself run in the background)
    proc = subprocess.Popen(cmd, env=run_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    target = out / f"{shards.shard_name(shard)}.tar"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before shard {shard} was seen:\n{proc.stdout.read().decode()[-3000:]}"
    os.killpg(proc.pid, sig)
    rc = proc.wait(60)
    if sig == signal.SIGKILL:  # workers of a killed run may linger for a moment
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return rc


@pytest.mark.slow
def test_killed_and_rerun_pack_equals_an_uninterrupted_run(tmp_path):
    src = tmp_path / "in"
    for k in range(12):  # 12 videos of the real face, 4 "identities", different camera paths
        astronaut.write(src / f"id{k % 4}" / f"v{k}.mp4", frames=64, width=320, height=240, phase=0.5 * k)
    ref = tmp_path / "ref"
    m_ref = pack(str(src), str(ref), PackSettings(workers=1, **SETTINGS))
    assert m_ref.samples == 48 and len(m_ref.shards) == 24 and m_ref.rejects == []

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "aupretrain.cli.pack", str(src), str(out), "--workers", "2",
           "--samples-per-shard", "2", "--shuffle-buffer", "8"]
    assert run_until(cmd, out, 2, signal.SIGKILL) == -signal.SIGKILL  # a crash
    want = files(ref)
    for _ in range(2):
        seen = files(out)
        assert "manifest.json" not in seen and (out / ".pack-work" / "journal.jsonl").exists()
        visible = [n for n in seen if n.endswith(".tar")]
        assert visible and all(seen[n] == want[n] for n in visible)  # every visible shard is complete and final
        if len(visible) < 10:
            assert run_until(cmd, out, 10, signal.SIGINT) == 130  # Ctrl-C: "run the same command again to resume"
    done = subprocess.run(cmd, env=run_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming:" in done.stderr  # it continued from the journal, it did not start over
    assert files(out) == want  # shards, indexes and manifest: byte-identical
    assert not (out / ".pack-work").exists()
