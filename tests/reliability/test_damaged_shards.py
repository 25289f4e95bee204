"""Damaged data never stops training, and nothing intact is lost: one shard set holding every kind of damage
(an undecodable JPEG, a sample missing a frame, a JSON that does not parse, a truncated tar, a zero-byte tar,
an index for another shard, a stale index left from another version of its tar, a missing index, a manifest
entry whose size and sample count differ from its tar, a listed shard that does not exist, a tar the manifest
does not list) trains to the end with each loader; each skip is counted by reason (log and
`data/skipped/<reason>` metrics), and one epoch read back through the same loader serves every intact sample
with its own pixels."""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime

import numpy as np
import pytest

from tests.conftest import ROOT, run_env

pytestmark = pytest.mark.slow
NEUTRAL = dict(scale=(1.0, 1.0), brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0,
               blur_sigma=(0.0, 0.0))


def _index(path):
    from aupretrain.data import integrity

    return integrity.parse_index(path.read_text(), str(path))


def _rewrite(tar, samples, drop_frame=None):
    """Write `samples` as the tar `tar` (webdataset's TarWriter, as the packer); `drop_frame`: (sample, frame)
    left out."""
    import webdataset as wds

    from aupretrain.data import shards

    with wds.TarWriter(str(tar), mtime=0) as sink:
        for i, smp in enumerate(samples):
            rec = {"__key__": smp.key, "json": json.dumps(smp.meta.__dict__).encode()}
            rec.update({shards.frame_ext(k): jpg for k, jpg in enumerate(smp.jpegs) if (i, k) != drop_frame})
            sink.write(rec)


def damage(src, dst) -> dict[int, set[int]]:
    """Copy an 8-shard set (2 samples each) and damage it, one kind per shard and three in the manifest;
    returns {shard: positions of its samples that the damage destroyed}."""
    from aupretrain.data import shards

    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    entries = manifest["shards"]
    names = [s["name"] for s in entries]
    assert len(names) == 8 and all(s["samples"] == 2 for s in entries), entries
    tar = [dst / n for n in names]
    idx = [dst / n.replace(".tar", ".idx") for n in names]

    def restat(i):
        entries[i].update(bytes=tar[i].stat().st_size, sha256=shards.sha256_file(tar[i]))

    # 0: the payload of one frame overwritten (header kept): the JPEG does not decode
    off, size = _index(idx[0])[1].members["f02.jpg"]
    with open(tar[0], "r+b") as f:
        f.seek(off + 20)
        f.write(b"\0" * (size - 40))
    # 1: one sample's JSON replaced by bytes of the same length that are not JSON
    off, size = _index(idx[1])[1].members["json"]
    with open(tar[1], "r+b") as f:
        f.seek(off)
        f.write(b"{" + b"x" * (size - 1))
    # 2: written again with sample 0 missing frame 3 (manifest entry made anew), and its index file lost
    _rewrite(tar[2], shards.read_samples(str(tar[2])), drop_frame=(0, 3))
    restat(2)
    idx[2].unlink()
    # 3: cut inside its second sample (an interrupted upload); the manifest still gives its full size
    cut = _index(idx[3])[1].members["f04.jpg"][0] + 100
    tar[3].write_bytes(tar[3].read_bytes()[:cut])
    # 4: zero bytes
    tar[4].write_bytes(b"")
    # 5: the index of another shard (6) in its place
    shutil.copy(idx[6], idx[5])
    # 6: another version of the tar (its samples in the other order; manifest updated), the old index left
    _rewrite(tar[6], shards.read_samples(str(tar[6]))[::-1])
    restat(6)
    # 7: the manifest entry disagrees with the tar: 10 KiB more bytes (zero blocks after the end), 3 samples
    with open(tar[7], "ab") as f:
        f.write(bytes(10240))
    entries[7]["samples"] = 3
    # the manifest lists a shard that is not there; a tar (a copy of 7) is there that the manifest does not list
    entries.append({**entries[0], "name": "shard-000050.tar", "index": "shard-000050.idx"})
    shutil.copy(tar[7], dst / "shard-000099.tar")
    shutil.copy(idx[7], dst / "shard-000099.idx")
    manifest["samples"] = sum(s["samples"] for s in entries)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return {0: {1}, 1: {1}, 2: {0}, 3: {1}, 4: {0, 1}}


def _clip(meta) -> tuple:
    return meta["video"], meta["frames"][0]


def _served(root, loader: str) -> dict[tuple, np.ndarray]:
    """{(video, first frame): frame 0 as uint8 RGB} of every clip two epochs of `loader` serve."""
    from aupretrain.data.dataset import ReaderSettings

    s = ReaderSettings(root=str(root), batch_size=2, input_size=64, device="cpu", num_threads=1, shuffle_buffer=4,
                       **NEUTRAL)
    if loader == "dali":
        from aupretrain.data.dali_reader import ClipLoader
    else:
        from aupretrain.data.torch_reader import TorchClipLoader as ClipLoader
    ld = ClipLoader(s)
    mean, std = np.array(s.mean) * 255, np.array(s.std) * 255
    out = {}
    for batch in ld:
        if ld.epoch >= 2:
            break
        for k, meta in enumerate(batch["meta"]):
            frame = batch["view1"][k, 0].permute(1, 2, 0).numpy() * std + mean
            out[_clip(meta)] = frame.clip(0, 255)
    return out


def _first(err: str, pattern: str, t0: float) -> tuple[str, float | None]:
    """The first log line matching `pattern` and its seconds after `t0` (wall clock; the log's own timestamp)."""
    for line in err.splitlines():
        if re.search(pattern, line):
            m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
            when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0 if m else None
            return line, when
    return "", None


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_damaged_samples_and_shards_are_skipped_counted_and_training_goes_on(corpus, tmp_path, loader, fault):
    from PIL import Image

    from aupretrain.data import shards
    from aupretrain.pack.packer import PackSettings, pack

    clean = tmp_path / "clean"
    pack(str(corpus), str(clean), PackSettings(clip_len=8, stride=2, size=64, samples_per_shard=2, workers=1,
                                               align="center"))
    m = shards.load_manifest(str(clean))
    samples = {i: shards.read_samples(str(clean / s.name)) for i, s in enumerate(m.shards)}
    damaged = tmp_path / "damaged"
    destroyed = damage(clean, damaged)
    intact = {_clip(smp.meta.__dict__): (i, np.asarray(Image.open(io.BytesIO(smp.jpegs[0])).convert("RGB")))
              for i, ss in samples.items() for j, smp in enumerate(ss) if j not in destroyed.get(i, ())}
    run_dir = tmp_path / "run"
    args = ["experiment=smoke", f"data.shards={damaged}", f"run.dir={run_dir}", "train.steps=10",
            "train.eval_at_end=false", "data.batch_size=2", "objective=tcl", f"data.loader={loader}"]
    t0 = time.time()
    r = subprocess.run([sys.executable, str(ROOT / "aupretrain" / "train.py"), *args], cwd=tmp_path, env=run_env(),
                       capture_output=True, text=True, timeout=600)
    err = r.stderr
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1] \
        if (run_dir / "metrics.jsonl").exists() else {}
    skipped = {k.rsplit("/", 1)[-1]: int(v) for k, v in last.items() if k.startswith("data/skipped/")}
    served = _served(damaged, loader) if r.returncode == 0 else {}
    # every intact sample served, with its own pixels (JPEG decoders differ by a grey level or so)
    wrong = {k for k in served if k in intact and np.abs(served[k] - intact[k][1]).mean() > 3}
    lost = {k: intact[k][0] for k in intact if k not in served or k in wrong}

    def row(name, shard, pattern, count=None, what=""):
        line, when = _first(err, pattern, t0)
        said = line.split(": ", 1)[-1].strip().replace(f"{damaged}/", "").replace(str(damaged), "the dataset") \
            if line else "nothing logged"
        gone = sorted({k for k, i in lost.items() if i == shard}) if shard is not None else []
        fault(f"{name} ({loader})", f"logged '{said[:220]}'" + (f"; {count} counted as {what}" if count else "")
              + (f"; {len(gone)} intact samples of the shard lost" if shard is not None else "")
              + f"; training reached step {last.get('step')}", data_lost=bool(gone), detect_s=when)
        return line

    lines = [
        row("undecodable JPEG in a sample", 0, r"\(bad_jpeg\)", skipped.get("bad_jpeg"), "bad_jpeg"),
        row("sample JSON that does not parse", 1, r"\(bad_json\)", skipped.get("bad_json"), "bad_json"),
        row("sample missing a member (a frame)", 2, r"samples miss a member", skipped.get("missing_member"),
            "missing_member"),
        row("index file missing", 2, r"shard-000002\.tar: index rebuilt from the tar"),
        row("truncated tar (cut inside a sample)", 3, r"shard-000003\.tar: truncated shard",
            skipped.get("truncated"), "truncated"),
        row("zero-byte tar", 4, r"skipping shard .*shard-000004\.tar: empty file"),
        row("index of another shard", 5, r"shard-000005\.tar: index rebuilt from the tar"),
        row("stale index (another version of the tar)", 6, r"shard-000006\.tar: index rebuilt from the tar"),
        row("manifest size and sample count differ from the tar", 7, r"shard-000007\.tar: .*the manifest says"),
        row("manifest lists a shard that does not exist", None, r"skipping shard .*shard-000050\.tar: listed",
            skipped.get("unreadable_shard"), "unreadable_shard (with the zero-byte tar)"),
        row("tar in the folder the manifest does not list", None, r"not in the manifest and are not read"),
    ]
    assert r.returncode == 0, err[-4000:]
    assert all(lines), "\n".join(x for x in err.splitlines() if "WARNING" in x)
    assert "shard-000099.tar" in lines[-1]
    assert "reading its 1 samples before the cut, 1 cut off" in lines[4], lines[4]
    assert "the manifest says 3 samples, the tar holds 2" in err and "the tar and its index agree" in err
    assert last["step"] == 10
    assert {k: last[k] for k in last if k.startswith("data/skipped")} == {
        "data/skipped/unreadable_shard": 4, "data/skipped/missing_member": 1, "data/skipped/bad_jpeg": 1,
        "data/skipped/bad_json": 1, "data/skipped/frame_size": 0, "data/skipped/truncated": 1, "data/skipped": 8}, last
    assert (run_dir / "encoder.pt").exists()
    assert not lost, (lost, sorted(served), sorted(intact))
    assert set(served) == set(intact), (sorted(served), sorted(intact))
