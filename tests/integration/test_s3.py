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
