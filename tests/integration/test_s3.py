"""Shards in S3 (a real moto_server): manifest via boto3, DALI reading s3:// directly."""
import pytest
import torch

from aupretrain.data import shards, storage
from aupretrain.data.dali_reader import ClipLoader, ReaderSettings


def test_dali_reads_shards_from_s3(packed, s3_server):
    storage.s3_client().create_bucket(Bucket="clips")
    for f in sorted(packed.iterdir()):
        storage.put_file(f, f"s3://clips/synthetic/{f.name}")
    m = shards.load_manifest("s3://clips/synthetic")
    assert m.samples == 16 and storage.exists(f"s3://clips/synthetic/{m.shards[0].index}")
    loader = ClipLoader(ReaderSettings(root="s3://clips/synthetic", batch_size=4, input_size=32, device="cpu",
                                       num_threads=1, shuffle_buffer=4))
    assert loader.skipped_samples == 0
    seen = set()
    it = iter(loader)
    for _ in range(loader.steps_per_epoch):
        b = next(it)
        assert b["view1"].shape == (4, 8, 3, 32, 32) and torch.isfinite(b["view1"]).all()
        seen.update((x["video"], x["frames"][0]) for x in b["meta"])
    assert len(seen) == 16


def test_missing_s3_manifest_is_a_clear_error(s3_server):
    storage.s3_client().create_bucket(Bucket="empty")
    with pytest.raises(Exception, match="s3://empty/none/manifest.json"):
        shards.load_manifest("s3://empty/none")


def test_pack_round_trip_through_s3(astronaut_mp4, s3_server, tmp_path):
    """Input and output on s3:// (a real moto_server): videos listed and downloaded with boto3, shards
    uploaded (multipart) before the manifest, unreadable objects rejected, then DALI reads the result."""
    import json

    from aupretrain.cli.pack import main as pack_main

    path, _ = astronaut_mp4
    s3 = storage.s3_client()
    for b in ("vox-in", "vox-out"):
        s3.create_bucket(Bucket=b)
    storage.put_file(path, "s3://vox-in/corpus/eileen/a000.mp4")
    storage.put_file(path, "s3://vox-in/corpus/eileen2/a001.mp4")
    storage.write_text("s3://vox-in/corpus/bad/broken.mp4", "not a video")
    work = tmp_path / "work"
    args = ["--workers", "1", "--samples-per-shard", "3", "--work-dir", str(work)]
    assert pack_main(["s3://vox-in/corpus", "s3://vox-out/ds", *args[2:], "--workers", "2"]) == 0  # forked workers
    m = shards.load_manifest("s3://vox-out/ds")
    assert m.samples == 8 and m.identities == ["eileen", "eileen2"] and len(m.shards) == 3
    assert [r["input"] for r in m.rejects] == ["s3://vox-in/corpus/bad/broken.mp4"]
    assert "s3://vox-in/corpus/bad/broken.mp4: cannot open video" in m.rejects[0]["reason"]
    assert not any(work.iterdir())  # the scratch folder is cleaned up after the manifest
    keys = sorted(k.rsplit("/", 1)[-1] for k, _ in storage.list_files("s3://vox-out/ds/"))
    assert keys == ["manifest.json"] + [f"shard-00000{i}.{e}" for i in range(3) for e in ("idx", "tar")]
    loader = ClipLoader(ReaderSettings(root="s3://vox-out/ds", batch_size=4, input_size=64, device="cpu",
                                       num_threads=1, shuffle_buffer=4))
    b = next(iter(loader))
    assert b["view1"].shape == (4, 8, 3, 64, 64) and {x["identity"] for x in b["meta"]} <= {"eileen", "eileen2"}
    # a list on S3 naming an object that does not exist: rejected with the reason, the rest is packed
    storage.write_text("s3://vox-in/list.jsonl", "\n".join(json.dumps(r) for r in [
        {"path": "corpus/eileen/a000.mp4", "identity": "eileen"},
        {"path": "s3://vox-in/nothing/here.mp4", "identity": "ghost"}]))
    assert pack_main(["s3://vox-in/list.jsonl", "s3://vox-out/list", *args]) == 0
    m = shards.load_manifest("s3://vox-out/list")
    assert m.samples == 4 and m.rejects[0]["input"] == "s3://vox-in/nothing/here.mp4"
    assert "cannot read from S3" in m.rejects[0]["reason"]


def test_packing_to_a_bucket_that_does_not_exist_is_one_line_before_any_work(astronaut_mp4, s3_server, tmp_path,
                                                                           capsys):
    """A typo in the output bucket is the user's argument, not a storage outage: exit 2 naming the bucket, before
    a video is read or a work folder written (it was an upload failure after the first shard, saying "run the same
    command again to resume")."""
    from aupretrain.cli.pack import main as pack_main

    path, _ = astronaut_mp4
    (tmp_path / "in" / "eileen").mkdir(parents=True)
    (tmp_path / "in" / "eileen" / "a000.mp4").write_bytes(path.read_bytes())
    work = tmp_path / "work"
    assert pack_main([str(tmp_path / "in"), "s3://no-such-bucket/ds", "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s3://no-such-bucket/ds: bucket 'no-such-bucket' does not exist" in err[0], err
    assert "resume" not in err[0] and not work.exists()


def test_s3_keys_with_url_characters_round_trip(astronaut_mp4, s3_server, tmp_path, monkeypatch):
    """Every legal key character stands for itself (no URL fragment/query parsing): inputs named with `#`, `?`,
    `=`, `%`, `+`, spaces and non-ASCII are fetched under their full key, shards are written under such a prefix,
    and DALI reads them back."""
    from aupretrain.cli.pack import main as pack_main

    path, _ = astronaut_mp4
    s3 = storage.s3_client()
    for b in ("odd-in", "odd-out"):
        s3.create_bucket(Bucket=b)
    names = ["ben/interview #2.mp4", "cara/why smile?.mp4", "dan/a=b+c 100% ü.mp4"]
    for n in names:
        storage.put_file(path, f"s3://odd-in/vids/{n}")
    assert storage.split_s3("s3://odd-in/vids/cara/why smile?.mp4") == ("odd-in", "vids/cara/why smile?.mp4")
    out = "s3://odd-out/exp #1?v=2/ds é"
    assert pack_main(["s3://odd-in/vids", out, "--workers", "1", "--samples-per-shard", "4",
                      "--work-dir", str(tmp_path / "work")]) == 0
    m = shards.load_manifest(out)
    assert m.rejects == [] and m.identities == ["ben", "cara", "dan"] and m.samples == 12
    listed = sorted(k for k, _ in storage.list_files("s3://odd-out/"))
    assert listed and all(k.startswith(out + "/") for k in listed)  # written under the full prefix, nowhere else
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # DALI cuts keys at `#`/`?`: read local copies
    loader = ClipLoader(ReaderSettings(root=out, batch_size=4, input_size=32, device="cpu", num_threads=1,
                                       shuffle_buffer=4))
    assert all(p.startswith(str(tmp_path / "cache")) for p in loader.shard_paths)
    it = iter(loader)
    seen = {x["video"] for _ in range(loader.steps_per_epoch) for x in next(it)["meta"]}
    assert seen == {"ben/interview #2", "cara/why smile?", "dan/a=b+c 100% ü"}


def test_label_names_read_from_the_first_listing_page(s3_server):
    """AU names of a labels prefix come from its first page of keys: a prefix of many videos is not listed whole."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from aupretrain.data.labels import FrameLabels

    s3 = storage.s3_client()
    s3.create_bucket(Bucket="labels")
    body = json.dumps({"aus": ["AU1", "AU12"], "au": [[0.0, 1.0]]}).encode()
    with ThreadPoolExecutor(8) as pool:  # 1,100 videos: two pages of ListObjectsV2 (1,000 keys each)
        list(pool.map(lambda i: s3.put_object(Bucket="labels", Key=f"corpus/id{i:05d}/v000.labels.json", Body=body),
                      range(1100)))
    s3.put_object(Bucket="labels", Key="corpus-other/x.labels.json", Body=b"{}")  # a sibling prefix, not read
    calls = []
    s3.meta.events.register("provide-client-params.s3.ListObjectsV2", lambda params, **kw: calls.append(dict(params)))
    assert FrameLabels("s3://labels/corpus").names() == ["AU1", "AU12"]
    assert len(calls) == 1 and calls[0]["Prefix"] == "corpus/"
    calls.clear()
    assert len(storage.list_files("s3://labels/corpus/")) == 1100 and len(calls) == 2
    assert len(storage.list_files("s3://labels/corpus")) == 1100  # a folder: corpus-other/ is not under it
    assert len(storage.list_files("s3://labels")) == 1101  # the whole bucket
    with pytest.raises(FileNotFoundError, match="s3://labels/none"):
        FrameLabels("s3://labels/none").names()


def test_training_from_an_s3_prefix_that_is_no_dataset_is_one_line(s3_server, tmp_path):
    """A wrong bucket or prefix in data.shards is a setting to fix: one line from rank 0, exit 2, no traceback
    (a field trial saw 50 lines of one)."""
    import subprocess
    import sys

    from tests.conftest import run_env
    from tests.launch import TRAIN

    storage.s3_client().create_bucket(Bucket="real-bucket")
    for shards_uri, why in (("s3://no-such-bucket/clips", "NoSuchBucket"), ("s3://real-bucket/nope", "NoSuchKey")):
        r = subprocess.run([sys.executable, TRAIN, "experiment=smoke", f"data.shards={shards_uri}",
                            f"run.dir={tmp_path / 'run'}", "tracking.enabled=false"], cwd=tmp_path,
                           env=run_env(**s3_server), capture_output=True, text=True, timeout=300)
        errors = [line for line in r.stderr.splitlines() if line.startswith("aupretrain-train: error:")]
        assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert f"{shards_uri}/manifest.json" in errors[0] and why in errors[0], errors[0]
