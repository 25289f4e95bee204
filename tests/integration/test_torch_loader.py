"""The baseline loader (`data.loader=torch`): the same clips as the DALI reader before augmentation, the same
sample split between ranks, exact resume, and the same batch contract under augmentation."""
from __future__ import annotations

import torch

NEUTRAL = dict(scale=(1.0, 1.0), brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0,
               blur_sigma=(0.0, 0.0), num_threads=1, shuffle_buffer=4)


def settings(packed, **kw):
    from aupretrain.data.dali_reader import ReaderSettings

    return ReaderSettings(**{"root": str(packed), "batch_size": 2, "input_size": 48, "device": "cpu", **NEUTRAL, **kw})


def epoch_clips(loader) -> dict:
    it, out = iter(loader), {}
    for _ in range(loader.steps_per_epoch):
        b = next(it)
        for i, m in enumerate(b["meta"]):
            out[(m["video"], m["frames"][0])] = (b["view1"][i], b["view2"][i])
    return out


def test_same_clips_as_dali_before_augmentation(packed):
    from aupretrain.data.dali_reader import ClipLoader
    from aupretrain.data.torch_reader import TorchClipLoader

    dali, base = epoch_clips(ClipLoader(settings(packed))), epoch_clips(TorchClipLoader(settings(packed)))
    assert dali.keys() == base.keys() and len(base) == 16
    for k in base:  # two JPEG decoders and two antialiased resizes: equal up to rounding (normalised units)
        assert (dali[k][0] - base[k][0]).abs().mean() < 0.03, k
        assert torch.equal(base[k][0], base[k][1])  # neutral augmentation: both views are the clip itself


def test_ranks_split_like_dali_resume_is_exact_and_augmented_views_differ(packed):
    from aupretrain.data.torch_reader import TorchClipLoader

    shares = [set(epoch_clips(TorchClipLoader(settings(packed, rank=r, world=2)))) for r in range(2)]
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == 16
    aug = dict(scale=(0.6, 1.0), brightness=(0.5, 1.5), contrast=(0.5, 1.5), saturation=(0.0, 2.0), hue=90.0,
               blur_sigma=(0.1, 1.2), rotate=10.0)
    ld = TorchClipLoader(settings(packed, **aug))
    it = iter(ld)
    first = [next(it) for _ in range(3)]
    state = ld.state()
    later = [next(it) for _ in range(5)]  # across the epoch end
    b = first[0]
    assert b["view1"].shape == (2, 8, 3, 48, 48) and b["view1"].dtype == torch.float32
    assert not torch.allclose(b["view1"], b["view2"])  # two independent draws per clip
    resumed = iter(TorchClipLoader(settings(packed, **aug), state=state))
    for want in later:
        got = next(resumed)
        assert [m["video"] for m in got["meta"]] == [m["video"] for m in want["meta"]]
        assert torch.equal(got["view1"], want["view1"]) and torch.equal(got["partner"], want["partner"])
