"""Damaged data never stops training: a shard set with an undecodable JPEG, a sample missing a frame, a sample
whose JSON does not parse and a truncated tar trains to the end, and each skip is reported by reason (log and
`data/skipped/<reason>` metrics)."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from tests.conftest import ROOT, run_env

pytestmark = pytest.mark.slow


def _index(path):
    from aupretrain.data import integrity

    return integrity.parse_index(path.read_text(), str(path))


def damage(src, dst):
    """Copy a 4-shard set and damage one thing in each shard."""
    import webdataset as wds

    from aupretrain.data import shards

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    names = [s["name"] for s in manifest["shards"]]
    assert len(names) == 4, names
    # shard 0: the payload of one frame overwritten (header kept): the JPEG does not decode
    s = _index(dst / names[0].replace(".tar", ".idx"))[1]
    off, size = s.members["f02.jpg"]
    with open(dst / names[0], "r+b") as f:
        f.seek(off + 20)
        f.write(b"\0" * (size - 40))
    # shard 1: one sample's JSON replaced by bytes of the same length that are not JSON
    s = _index(dst / names[1].replace(".tar", ".idx"))[2]
    off, size = s.members["json"]
    with open(dst / names[1], "r+b") as f:
        f.seek(off)
        f.write(b"{" + b"x" * (size - 1))
    # shard 2: written again with one sample missing frame 3 (index and manifest entry made anew)
    samples = shards.read_samples(str(dst / names[2]))
    tar = dst / names[2]
    with wds.TarWriter(str(tar), mtime=0) as sink:
        for i, smp in enumerate(samples):
            rec = {"__key__": smp.key, "json": json.dumps(smp.meta.__dict__).encode()}
            rec.update({shards.frame_ext(k): jpg for k, jpg in enumerate(smp.jpegs) if not (i == 0 and k == 3)})
            sink.write(rec)
    shards.write_index(tar, dst / names[2].replace(".tar", ".idx"))
    manifest["shards"][2]["bytes"] = tar.stat().st_size
    # shard 3: cut in half (an interrupted upload); the manifest still gives its full size
    t = dst / names[3]
    t.write_bytes(t.read_bytes()[: t.stat().st_size // 2])
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_damaged_samples_and_shards_are_skipped_counted_and_training_goes_on(corpus, tmp_path, loader):
    import subprocess

    from aupretrain.pack.packer import PackSettings, pack

    clean = tmp_path / "clean"
    pack(str(corpus), str(clean), PackSettings(clip_len=8, stride=2, size=64, samples_per_shard=4, workers=1,
                                               align="center"))
    damaged = tmp_path / "damaged"
    damage(clean, damaged)
    run_dir = tmp_path / "run"
    args = ["experiment=smoke", f"data.shards={damaged}", f"run.dir={run_dir}", "train.steps=10",
            "train.eval_at_end=false", "data.batch_size=2", "objective=tcl", f"data.loader={loader}"]
    r = subprocess.run([sys.executable, str(ROOT / "aupretrain" / "train.py"), *args], cwd=tmp_path, env=run_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    err = r.stderr
    assert "skipping shard" in err and "shard-000003.tar: truncated shard" in err, err[-3000:]
    assert "samples miss a member" in err
    assert "(bad_jpeg)" in err and "(bad_json)" in err, err[-3000:]
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 10
    assert {k: last[k] for k in last if k.startswith("data/skipped")} == {
        "data/skipped/unreadable_shard": 4, "data/skipped/missing_member": 1, "data/skipped/bad_jpeg": 1,
        "data/skipped/bad_json": 1, "data/skipped": 7}, last
    assert (run_dir / "encoder.pt").exists()
