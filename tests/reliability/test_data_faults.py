"""Faults of the dataset as a whole and of its indexes beyond what rank 0's start-up check reads: an index wrong
in the middle (read back whole by each loader: nothing lost), a manifest that cannot be used (one clear error at
start naming the file), uneven shards across ranks (equal steps, every clip read once), a dataset smaller than
one global batch (one clear error at start, not DALI's "no data")."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, run_env

TRAIN = str(ROOT / "aupretrain" / "train.py")
NEUTRAL = dict(scale=(1.0, 1.0), brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0,
               blur_sigma=(0.0, 0.0), num_threads=1, shuffle_buffer=4)


def _train(args, cwd, timeout=600) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, TRAIN, *args], cwd=cwd, env=run_env(), capture_output=True, text=True,
                          timeout=timeout)


def _loader(kind, root, **kw):
    from aupretrain.data.dataset import ReaderSettings

    s = ReaderSettings(root=str(root), batch_size=2, input_size=32, device="cpu", **{**NEUTRAL, **kw})
    if kind == "dali":
        from aupretrain.data.dali_reader import ClipLoader

        return ClipLoader(s)
    from aupretrain.data.torch_reader import TorchClipLoader

    return TorchClipLoader(s)


@pytest.mark.parametrize("loader", ["dali", "torch"])
def test_an_index_wrong_in_the_middle_is_rebuilt_when_read_and_nothing_is_lost(packed, tmp_path, loader, fault,
                                                                              caplog):
    """A sample's JSON size in the middle of an index made 7 bytes short (bit rot in the .idx; the tar is fine):
    rank 0's start-up check reads the first and the last member's headers only and lets it pass; reading it,
    the DALI reader (its pipeline fails on the cut JSON, it checks every header of the shard before
    quarantining anything) and the torch reader (it checks each member's tar header as it reads it) rebuild the
    shard's index from the tar, and two epochs serve every clip."""
    from aupretrain.data import dataset, integrity, shards

    root = tmp_path / "ds"
    shutil.copytree(packed, root)
    m = shards.load_manifest(str(root))
    ix = root / m.shards[0].index
    lines = ix.read_text().splitlines()
    smp = integrity.parse_index("\n".join(lines), str(ix))[1]
    off, size = smp.members["json"]
    lines[2] = lines[2].replace(f"json {off} {size} ", f"json {off} {size - 7} ")
    ix.write_text("\n".join(lines) + "\n")
    paths, idx, bad, skipped, counts = dataset.check_shards(str(root), m)
    assert idx[0] == str(ix) and not bad, idx  # the start-up check does not see it (by design: two reads)
    total = m.samples
    caplog.set_level(logging.WARNING)
    t0 = time.monotonic()
    ld = _loader(loader, root)
    seen, detect = set(), None
    for batch in ld:
        if detect is None and "rebuilt the index" in caplog.text:
            detect = time.monotonic() - t0
        if ld.epoch >= 2:
            break
        seen |= {(x["video"], x["frames"][0]) for x in batch["meta"]}
    rebuilt = [r.getMessage() for r in caplog.records if "rebuilt the index" in r.getMessage()]
    damaged = dict(ld.found_damaged)
    said = rebuilt[0].replace(str(root) + "/", "") if rebuilt else "no rebuild logged"
    fault(f"index wrong in the middle (a member's size; {loader})",
          f"passed the start-up check; while reading: '{said}'; {len(seen)} of {total} clips served in 2 epochs, "
          f"{sum(damaged.values())} left out as damaged",
          data_lost=len(seen) < total, detect_s=detect)
    assert len(rebuilt) == 1 and m.shards[0].name in rebuilt[0], rebuilt
    assert not damaged and len(seen) == total, (damaged, len(seen), total)


@pytest.mark.slow
def test_a_manifest_that_cannot_be_used_is_one_clear_error_at_start(packed, tmp_path, fault):
    """A manifest that is not JSON stops `aupretrain-train` at start with one line naming the file (exit 2, no
    traceback); one that lists no shards, or a shard entry without its fields, is the same UsageError."""
    from aupretrain.data import dataset
    from aupretrain.errors import UsageError

    root = tmp_path / "ds"
    shutil.copytree(packed, root)
    good = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(good)[:-40])  # cut short: not JSON
    t0 = time.monotonic()
    r = _train(["experiment=smoke", f"data.shards={root}", f"run.dir={tmp_path / 'run'}", "tracking.enabled=false",
                "train.eval_at_end=false"], tmp_path)
    took = time.monotonic() - t0
    err = [x for x in r.stderr.splitlines() if x.startswith("aupretrain-train: error:")]
    fault("manifest is not JSON", f"exit {r.returncode} after {took:.1f} s: '{err[0] if err else r.stderr[-200:]}'"
          .replace(str(root) + "/", ""), detect_s=took)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert len(err) == 1 and f"{root / 'manifest.json'}: not valid JSON" in err[0], err
    assert not (tmp_path / "run" / "checkpoints").exists()
    for name, change, says in [("manifest lists no shards", {"shards": []}, "lists no shards"),
                               ("manifest shard entry without its fields",
                                {"shards": [{"name": "shard-000000.tar"}]}, "shard entry 0 is not")]:
        (root / "manifest.json").write_text(json.dumps({**good, **change}))
        t0 = time.monotonic()
        with pytest.raises(UsageError) as e:
            dataset.shared_dataset_view(str(root))
        took = time.monotonic() - t0
        fault(name, f"UsageError at start: '{str(e.value).replace(str(root) + '/', '')}'", detect_s=took)
        assert str(root / "manifest.json") in str(e.value) and says in str(e.value), e.value
    (root / "manifest.json").write_text(json.dumps(good))  # a good manifest, every shard it lists unreadable
    for tar in root.glob("*.tar"):
        tar.write_bytes(b"")
    t0 = time.monotonic()
    with pytest.raises(UsageError) as e:  # train.py prints a UsageError as one line, exit 2 (above)
        dataset.shared_dataset_view(str(root))
    fault("every shard unreadable", f"UsageError at start: '{str(e.value).replace(str(root) + '/', '')}'",
          detect_s=time.monotonic() - t0)
    n = len(good["shards"])
    assert f"{root}: no usable shard: all {n} listed in the manifest are unreadable" in str(e.value), e.value
    assert "first: " + str(root / good["shards"][0]["name"]) in str(e.value), e.value


def test_two_ranks_over_uneven_shards_take_equal_steps_and_read_every_clip_once(packed, fault):
    from aupretrain.data.dali_reader import ClipLoader, ReaderSettings

    loaders = [ClipLoader(ReaderSettings(root=str(packed), batch_size=2, input_size=32, rank=r, world=2, device="cpu",
                                         **NEUTRAL)) for r in range(2)]
    sizes = [s.samples for s in loaders[0].manifest.shards]
    assert len(set(sizes)) > 1, sizes  # uneven shards
    steps = [ld.steps_per_epoch for ld in loaders]
    seen = []
    for ld in loaders:
        it = iter(ld)
        for _ in range(ld.steps_per_epoch):
            seen += [(m["video"], m["frames"][0]) for m in next(it)["meta"]]
    total = loaders[0].manifest.samples
    fault("uneven shards across 2 ranks", f"shards of {sizes} clips: {steps} steps per epoch on the ranks; "
          f"{len(set(seen))} of {total} clips read, {len(seen) - len(set(seen))} twice",
          data_lost=len(set(seen)) < total)
    assert steps[0] == steps[1], steps
    # every clip once; DALI pads a rank's share to whole batches by repeating its last clip, and the last
    # partial batch is dropped (documented in docs/architecture.md): at most world x (batch - 1) clips differ
    assert len(set(seen)) >= total - 2 * (2 - 1), (len(set(seen)), total)
    assert len(seen) - len(set(seen)) <= 2 * (2 - 1), seen


@pytest.mark.slow
def test_too_few_clips_for_one_batch_is_a_clear_error_at_start(corpus, tmp_path, fault):
    """One 40-frame video gives 2 clips; batch 4 needs 4: exit 2 with what to change, not DALI's 'no data'."""
    from aupretrain.cli.pack import main as pack_main

    video = next(corpus.glob("*/*.mp4"))
    (tmp_path / "one" / "solo").mkdir(parents=True)
    shutil.copy(video, tmp_path / "one" / "solo" / "v.mp4")
    assert pack_main([str(tmp_path / "one"), str(tmp_path / "shards"), "--align", "center", "--clip-len", "8",
                      "--stride", "2", "--size", "64", "--workers", "1"]) == 0
    t0 = time.monotonic()
    r = _train(["experiment=smoke", f"data.shards={tmp_path / 'shards'}", f"run.dir={tmp_path / 'run'}",
                "train.eval_at_end=false", "tracking.enabled=false"], tmp_path)
    took = time.monotonic() - t0
    err = [x for x in r.stderr.splitlines() if x.startswith("aupretrain-train: error:")]
    fault("dataset smaller than one global batch", f"exit {r.returncode} after {took:.1f} s: "
          f"'{err[0][:160] if err else r.stderr[-200:]}...'".replace(str(tmp_path) + "/", ""), detect_s=took)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "2 usable clips" in r.stderr and "data.batch_size=4" in r.stderr


def _resized(jpeg: bytes, side: int) -> bytes:
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA))[1].tobytes()


@pytest.mark.parametrize("loader", ["dali", "opencv", "torch"])
def test_frames_of_another_size_are_served_or_skipped_and_counted(packed, tmp_path, loader, fault):
    """One clip holding a frame of another size (not one sequence: every loader skips it and counts it as
    `frame_size`), one clip whose frames are all at another size than the manifest's 64 px (the DALI reader's own
    geometry and the baseline loader resize it like any other; the host geometry needs one size per batch and
    skips it, counted); every other clip is read. dali / opencv: the DALI reader with `data.geometry` = that."""
    import webdataset as wds

    from aupretrain.data import integrity, shards

    root = tmp_path / "ds"
    shutil.copytree(packed, root)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["shards"][0]
    tar = root / entry["name"]
    samples = shards.read_samples(str(tar))
    clip = lambda meta: (meta["video"], meta["frames"][0])  # noqa: E731
    odd_frame, odd_clip = clip(samples[0].meta.__dict__), clip(samples[1].meta.__dict__)
    with wds.TarWriter(str(tar), mtime=0) as sink:
        for i, smp in enumerate(samples):
            jpegs = list(smp.jpegs)
            if i == 0:
                jpegs[3] = _resized(jpegs[3], 48)
            if i == 1:
                jpegs = [_resized(j, 80) for j in jpegs]
            sink.write({"__key__": smp.key, "json": json.dumps(smp.meta.__dict__).encode(),
                        **{shards.frame_ext(k): j for k, j in enumerate(jpegs)}})
    with open(tar, "rb") as f:
        (root / entry["index"]).write_text(integrity.index_tar(f, str(tar)))
    entry.update(bytes=tar.stat().st_size, sha256=shards.sha256_file(tar))
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))

    ld = _loader("torch" if loader == "torch" else "dali", root,
                 **({} if loader == "torch" else {"geometry": loader}))
    keys, it = set(), iter(ld)
    for _ in range(2 * ld.steps_per_epoch):  # two epochs: after a skip the DALI reader restarts its epoch
        batch = next(it)
        assert batch["view1"].shape[-3:] == (3, 32, 32)
        keys |= {clip(m) for m in batch["meta"]}
    all_keys = {clip(smp.meta.__dict__) for t in sorted(root.glob("*.tar")) for smp in shards.read_samples(str(t))}
    skipped = {odd_frame} | ({odd_clip} if loader == "opencv" else set())
    fault(f"frames of another size ({loader})", f"{len(all_keys - keys)} of {len(all_keys)} clips not read; "
          f"counted {ld.found_damaged}", data_lost=bool(all_keys - keys - skipped))
    assert ld.found_damaged == {integrity.FRAME_SIZE: len(skipped)}, ld.found_damaged
    from aupretrain.engine.metrics import RUNTIME_DAMAGE

    assert set(ld.found_damaged) <= set(RUNTIME_DAMAGE)  # what a rank finds reaches data/skipped/<reason>
    assert keys == all_keys - skipped, (sorted(all_keys - keys), sorted(keys - all_keys))
