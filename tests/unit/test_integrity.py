"""A shard's index checked against its tar (data/integrity.py) and the manifest parsed strictly (data/shards.py):
real tars written with webdataset's TarWriter, as the packer writes them, and indexed by DALI's own wds2idx."""
import functools
import io
import json

import pytest

from aupretrain.data import integrity, shards, storage
from aupretrain.errors import UsageError


def _tar(path, keys, sizes=(700, 1300, 90)):
    import webdataset as wds

    with wds.TarWriter(str(path), mtime=0) as sink:
        for k in keys:
            sink.write({"__key__": k, **{f"m{i}.bin": bytes([65 + i]) * n for i, n in enumerate(sizes)}})
    return path


def _check(samples, tar, full=False):
    n = tar.stat().st_size
    integrity.verify_index(samples, functools.partial(storage.read_range, str(tar)), n, str(tar), full=full)


@pytest.fixture
def shard(tmp_path):
    tar = _tar(tmp_path / "a.tar", [f"a{i}" for i in range(4)])
    shards.write_index(tar, tmp_path / "a.idx")  # DALI's wds2idx
    return tar, integrity.parse_index((tmp_path / "a.idx").read_text())


def test_an_index_rebuilt_from_the_tar_is_what_wds2idx_writes(shard, tmp_path):
    tar, _ = shard
    with open(tar, "rb") as f:
        assert integrity.index_tar(f, str(tar)) == (tmp_path / "a.idx").read_text()


def test_the_right_index_passes_and_every_wrong_one_is_named(shard, tmp_path):
    tar, good = shard
    _check(good, tar)
    _check(good, tar, full=True)
    # another shard's index (same layout, other names)
    other = _tar(tmp_path / "b.tar", [f"b{i}" for i in range(4)])
    shards.write_index(other, tmp_path / "b.idx")
    with pytest.raises(integrity.IndexMismatch, match=r"the tar has the header of 'a0.m0.bin' there"):
        _check(integrity.parse_index((tmp_path / "b.idx").read_text()), tar)
    # a stale index: the tar written again with a longer first member
    _tar(other, [f"b{i}" for i in range(4)], sizes=(900, 1300, 90))
    with pytest.raises(integrity.IndexMismatch):
        _check(integrity.parse_index((tmp_path / "b.idx").read_text()), other)
    # an index listing fewer samples than the tar holds (the end-of-archive block is not after its last member)
    with pytest.raises(integrity.IndexMismatch, match="goes on after"):
        _check(good[:3], tar)
    _check(good[:3], tar, full=True)  # allowed with full: a quarantine copy
    # members out of order, overlapping, off a block boundary, past the end
    swapped = integrity.parse_index(integrity.index_text([good[1], good[0], *good[2:]]))
    with pytest.raises(integrity.IndexMismatch, match="not where a tar can hold it"):
        _check(swapped, tar)
    bad = integrity.parse_index(integrity.index_text(good).replace(" 90 a3.m2.bin", " 90000 a3.m2.bin"))
    with pytest.raises(integrity.IndexMismatch, match="past the end"):
        _check(bad, tar)
    # a wrong size in the middle: within its last block, the layout and the two headers read pass; full finds it
    mid = integrity.parse_index(integrity.index_text(good).replace(" 1300 a1.m1.bin", " 1290 a1.m1.bin"))
    _check(mid, tar)
    with pytest.raises(integrity.IndexMismatch, match=r"a1.m1.bin \(1290 bytes\) .* it with 1300 bytes there"):
        _check(mid, tar, full=True)


def test_a_truncated_tar_keeps_the_samples_before_the_cut(shard, tmp_path):
    tar, good = shard
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[:good[2].members["m1.bin"][0] + 10])
    read, n = functools.partial(storage.read_range, str(cut)), cut.stat().st_size
    with pytest.raises(integrity.IndexMismatch):
        integrity.verify_index(good, read, n, str(cut))
    assert [s.key for s in integrity.complete_prefix(good, read, n, str(cut))] == ["a0", "a1"]
    assert integrity.complete_prefix(good, read, 600, str(cut)) == []
    with pytest.raises(ValueError, match="not a readable tar"):
        integrity.index_tar(open(cut, "rb"), str(cut))
    for data in (b"", b"garbage" * 100):
        with pytest.raises(ValueError, match="not a readable tar"):
            integrity.index_tar(io.BytesIO(data), "x.tar")
    # cut exactly at a member's end: tarfile would see an archive ending there; no end-of-archive block
    end = good[3].members["m2.bin"]
    whole = tar.read_bytes()
    with pytest.raises(ValueError, match="no end-of-archive block"):
        integrity.index_tar(io.BytesIO(whole[:end[0] + 512]), "x.tar")


def test_a_manifest_that_cannot_be_used_is_a_usage_error_naming_the_file(tmp_path):
    good = {"format": shards.FORMAT, "clip_len": 8, "shards": [
        {"name": "shard-000000.tar", "index": "shard-000000.idx", "samples": 2, "bytes": 10240, "sha256": "x"}]}
    assert shards.Manifest.from_json(json.dumps(good), "m.json").shards[0].samples == 2
    for text, says in [("{oops", "not valid JSON"), ("[]", "format 'list'"),
                       (json.dumps({**good, "format": "other/1"}), "format 'other/1'"),
                       (json.dumps({**good, "shards": []}), "lists no shards"),
                       (json.dumps({k: v for k, v in good.items() if k != "shards"}), "lists no shards"),
                       (json.dumps({**good, "shards": [{"name": "a.tar"}]}), "shard entry 0 is not"),
                       (json.dumps({**good, "shards": [{**good["shards"][0], "samples": "2"}]}), "shard entry 0")]:
        with pytest.raises(UsageError, match=f"m.json: {says}"):
            shards.Manifest.from_json(text, "m.json")


def test_the_manifest_mlflow_records_is_what_the_run_reads():
    """The dataset input of a run: the shards read, the unusable ones listed apart, a digest of its own."""
    import json

    from aupretrain.data.dataset import manifest_as_read
    from aupretrain.data.shards import Manifest, ShardInfo

    m = Manifest(samples=6, shards=[ShardInfo(f"shard-{i:06d}.tar", f"shard-{i:06d}.idx", 2, 10, "0" * 64)
                                    for i in range(3)])
    bad = [{"shard": "s3://bucket/ds/shard-000001.tar", "name": "shard-000001.tar", "reason": "not a tar", "samples": 2}]
    read = json.loads(manifest_as_read(m, bad))
    assert [s["name"] for s in read["shards"]] == ["shard-000000.tar", "shard-000002.tar"]
    assert read["left_out"] == bad and read["samples"] == 6  # the manifest's own counts stay as packed
    whole = json.loads(manifest_as_read(m, []))
    assert len(whole["shards"]) == 3 and whole["left_out"] == []
