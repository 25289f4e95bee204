"""The dataset as the ranks see it: rank 0 checks the shards once and every rank uses its list (even when a
rank's own view of storage differs); an error on rank 0 reaches every rank instead of a hang; two ranks over
uneven shards take equal steps and together read every clip of an epoch once."""
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
    assert all(isinstance(x, str) and x.startswith("FileNotFoundError") and "no manifest" in x for x in v.values()), v


def test_two_ranks_over_uneven_shards_take_equal_steps_and_read_every_clip_once(packed):
    from aupretrain.data.dali_reader import ClipLoader, ReaderSettings

    neutral = dict(scale=(1.0, 1.0), brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0,
                   blur_sigma=(0.0, 0.0), num_threads=1, shuffle_buffer=4)
    loaders = [ClipLoader(ReaderSettings(root=str(packed), batch_size=2, input_size=32, rank=r, world=2, device="cpu",
                                         **neutral)) for r in range(2)]
    sizes = [s.samples for s in loaders[0].manifest.shards]
    assert len(set(sizes)) > 1, sizes  # uneven shards
    steps = [ld.steps_per_epoch for ld in loaders]
    assert steps[0] == steps[1], steps
    seen = []
    for ld in loaders:
        it = iter(ld)
        for _ in range(ld.steps_per_epoch):
            seen += [(m["video"], m["frames"][0]) for m in next(it)["meta"]]
    total = loaders[0].manifest.samples
    # every clip once; DALI pads a rank's share to whole batches by repeating its last clip, and the last
    # partial batch is dropped (documented in docs/architecture.md): at most world x (batch - 1) clips differ
    assert len(set(seen)) >= total - 2 * (2 - 1), (len(set(seen)), total)
    assert len(seen) - len(set(seen)) <= 2 * (2 - 1), seen
