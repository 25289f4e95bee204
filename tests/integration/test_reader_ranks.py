"""The dataset as the ranks see it: rank 0 checks the shards once and every rank uses its list (even when a
rank's own view of storage differs); an error on rank 0 reaches every rank instead of a hang. (Two ranks over
uneven shards: tests/reliability/test_data_faults.py.)"""
from __future__ import annotations

from tests.conftest import on_two_ranks


def _view(rank, root, broken_on):
    from aupretrain.data import dataset, storage

    if rank == broken_on:  # this rank's view of storage differs: the first shard looks truncated
        real = storage.size
        storage.size = lambda uri: 1 if uri.endswith("shard-000000.tar") else real(uri)
    try:
        manifest, paths, idx, bad, skipped, counts = dataset.shared_dataset_view(root)
        return ([p.rsplit("/", 1)[-1] for p in paths], [b["shard"].rsplit("/", 1)[-1] for b in bad], manifest.samples)
    except Exception as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"


def views(root, broken_on):
    return on_two_ranks(_view, str(root), broken_on)


def test_every_rank_uses_rank0s_shard_list(packed):
    every = sorted(p.name for p in packed.glob("shard-*.tar"))
    assert len(every) >= 3
    # rank 1 sees a bad shard, rank 0 does not: both read every shard (rank 0's list)
    v = views(packed, broken_on=1)
    assert v[0] == v[1] and v[0][0] == every and v[0][1] == [], v
    # rank 0 sees it: both leave it out and both report it
    v = views(packed, broken_on=0)
    assert v[0] == v[1] and v[0][0] == every[1:] and v[0][1] == ["shard-000000.tar"], v


def test_an_error_on_rank0_reaches_every_rank(tmp_path):
    v = views(tmp_path, broken_on=-1)  # no manifest there
    assert all(isinstance(x, str) and x.startswith("UsageError") and "no manifest" in x for x in v.values()), v
