"""The clip loader's state restores the exact stream of batches (DALI reader position + RNGs), across epochs,
whichever place cuts the views (`data.geometry`); a state from the other place starts a new epoch instead."""
import json

import pytest
import torch

from aupretrain.data.dali_reader import ClipLoader, ReaderSettings


def settings(packed, geometry="auto"):
    return ReaderSettings(root=str(packed), batch_size=4, input_size=32, num_threads=1, shuffle_buffer=8, seed=5,
                          geometry=geometry)


def take(it, n):
    return [next(it) for _ in range(n)]


def same(a, b):
    return (torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"])
            and torch.equal(a["partner"], b["partner"]) and a["meta"] == b["meta"])


@pytest.mark.parametrize("geometry", ["dali", "opencv"])
def test_loader_state_resumes_the_same_batches(packed, geometry):
    loader = ClipLoader(settings(packed, geometry))
    per_epoch = loader.steps_per_epoch
    it = iter(loader)
    take(it, per_epoch - 1)  # the next batches cross the epoch boundary
    state = json.loads(json.dumps(loader.state()))  # what a checkpoint stores
    expected = take(it, 3)
    assert loader.epoch == 1

    restored = ClipLoader(settings(packed, geometry), state=state)
    assert restored.restored and restored.epoch == 0
    got = take(iter(restored), 3)
    assert all(same(a, b) for a, b in zip(expected, got))
    assert restored.epoch == 1

    fresh = take(iter(ClipLoader(settings(packed, geometry))), 3)  # without the state: the stream starts over
    assert not all(same(a, b) for a, b in zip(expected, fresh))
    assert expected[0]["video"].dtype == torch.int64

    other = ClipLoader(settings(packed, "dali" if geometry == "opencv" else "opencv"), state=state)
    assert not other.restored and other.epoch == 0  # another pipeline: a new epoch, not a failed restore
    assert next(iter(other))["view1"].shape == expected[0]["view1"].shape
