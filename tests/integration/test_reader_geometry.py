"""The views' geometry, measured on frames whose pixel values are their own coordinates: red = 2 x, green = 2 y.

Whatever the drawn angle and crop position, a view of such a frame is a plane whose red and green gradients
have the length 2 * side * W / S per output pixel (side = sqrt of the crop's area fraction, W the frame side,
S the model input) and are perpendicular — for the DALI reader with its own operators (`data.geometry=dali`: one
warp per view after a shared resize) or with the views cut on the host (`opencv`: `augment.host_views`) and for the
baseline loader (rotation, crop, resize) alike."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest

W = 96  # packed frame side (pixels)


@pytest.fixture(scope="module")
def ramps(tmp_path_factory):
    from PIL import Image

    from aupretrain.data import shards

    root = tmp_path_factory.mktemp("ramps")
    y, x = np.mgrid[0:W, 0:W].astype(np.float64) + 0.5
    img = np.stack([2 * x, 2 * y, np.full_like(x, 128)], -1).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=100, subsampling=0)
    samples = [shards.Sample(shards.make_key("id0", i), [buf.getvalue()] * 4,
                             shards.ClipMeta(f"id{i % 2}/v{i}", f"id{i % 2}", [0, 1, 2, 3], 25.0, W)) for i in range(8)]
    info = shards.write_shard(samples, str(root), 0, root)
    shards.write_manifest(str(root), shards.Manifest(samples=8, frames=32, clip_len=4, stride=1, size=W,
                                                     identities=["id0", "id1"], videos=8, shards=[info]))
    return root


def settings(root, **kw):
    from aupretrain.data.dataset import ReaderSettings

    plain = dict(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0, blur_sigma=(0.0, 0.0),
                 mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)  # views in pixel values
    return ReaderSettings(**{"root": str(root), "batch_size": 4, "input_size": 32, "device": "cpu", "num_threads": 1,
                             "shuffle_buffer": 4, **plain, **kw})


def make_loader(kind: str, s):
    """dali / opencv: the DALI reader with `data.geometry` = kind; torch: the baseline loader."""
    import dataclasses

    from aupretrain.data.dali_reader import ClipLoader
    from aupretrain.data.torch_reader import TorchClipLoader

    return TorchClipLoader(s) if kind == "torch" else ClipLoader(dataclasses.replace(s, geometry=kind))


LOADERS = ["dali", "opencv", "torch"]


def gradients(view) -> tuple[np.ndarray, np.ndarray]:
    """Median red and green gradient vectors (d/dx, d/dy per output pixel) of a view [T, 3, S, S], inner pixels."""
    v = view[0].double().numpy()
    out = []
    for c in (0, 1):
        gy, gx = np.gradient(v[c])
        inner = (slice(6, -6), slice(6, -6))  # away from borders clamped by the rotation
        out.append(np.array([np.median(gx[inner]), np.median(gy[inner])]))
    return out[0], out[1]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("area,rotate", [((1.0, 1.0), 0.0), ((0.36, 0.36), 0.0), ((0.36, 0.36), 20.0)])
def test_views_scale_and_rotate_as_drawn(ramps, loader, area, rotate):
    s = settings(ramps, scale=area, rotate=rotate)
    batch = next(iter(make_loader(loader, s)))
    want = 2 * math.sqrt(area[0]) * W / s.input_size  # red/green change per output pixel
    angles = []
    for view in list(batch["view1"]) + list(batch["view2"]):
        r, g = gradients(view)
        assert np.linalg.norm(r) == pytest.approx(want, rel=0.08) and np.linalg.norm(g) == pytest.approx(want, rel=0.08)
        assert abs(r @ g) < 0.08 * want ** 2  # still perpendicular: a rotation, not a shear
        assert (view[:, :2] - view[:1, :2]).abs().max() < 1.0  # one draw per clip: every frame warped alike
        angles.append(math.degrees(math.atan2(r[1], r[0])))
    assert max(abs(a) for a in angles) <= rotate + 1.5
    if rotate:
        assert max(angles) - min(angles) > 2.0  # angles are drawn (8 views), not fixed


@pytest.mark.parametrize("loader", LOADERS)
def test_shared_geometry_gives_both_views_one_rotation_and_crop(ramps, loader):
    """`augment.shared_geometry`: the two views of a clip are the same warp of it (colour off here, so the same
    pixels); without it they are drawn apart; `augment.noise_sigma` then sets them apart by fresh noise alone.
    Both loaders, both places of the DALI reader's geometry."""
    make = lambda s: make_loader(loader, s)  # noqa: E731
    shared = next(iter(make(settings(ramps, scale=(0.36, 0.8), rotate=20.0, shared_geometry=True))))
    assert (shared["view1"] - shared["view2"]).abs().max() < 1.0
    apart = next(iter(make(settings(ramps, scale=(0.36, 0.8), rotate=20.0))))
    assert (apart["view1"] - apart["view2"]).flatten(1).abs().amax(1).min() > 10.0  # every clip's views differ
    # colour and blur are still drawn per view
    coloured = next(iter(make(settings(ramps, scale=(0.36, 0.8), rotate=20.0, shared_geometry=True,
                                       brightness=(0.5, 1.5)))))
    # (two uniform brightness draws in [0.5, 1.5] fall within one grey level of 128 of each other ~1.5 % of the time)
    assert ((coloured["view1"] - coloured["view2"]).flatten(1).abs().amax(1) > 1.0).sum() >= 3
    # per-view noise of 6 grey levels: the shared warp's views now differ by two independent draws (sd 6 * sqrt 2)
    noisy = next(iter(make(settings(ramps, scale=(0.36, 0.8), rotate=20.0, shared_geometry=True,
                                    noise_sigma=(6.0, 6.0)))))
    assert float((noisy["view1"] - noisy["view2"]).std()) == pytest.approx(6.0 * math.sqrt(2), rel=0.1)


@pytest.mark.parametrize("loader", LOADERS)
def test_the_whole_frame_lands_on_the_pixel_grid(ramps, loader):
    """With no crop and no rotation, output pixel (i, j) of a view is the frame around the continuous point
    ((j + 0.5) W / S, (i + 0.5) W / S): red and green read twice those coordinates (no half-pixel shift between
    the DALI reader's two geometries and the baseline loader)."""
    s = settings(ramps, scale=(1.0, 1.0), rotate=0.0)
    view = next(iter(make_loader(loader, s)))["view1"][0, 0].double().numpy()
    c = (np.arange(s.input_size) + 0.5) * W / s.input_size
    inner = slice(2, -2)  # the outermost pixels average across the border
    assert np.abs(view[0][inner, inner] - 2 * c[None, inner]).mean() < 1.0
    assert np.abs(view[1][inner, inner] - 2 * c[inner, None]).mean() < 1.0


@pytest.mark.parametrize("loader", LOADERS)
def test_the_clean_view_and_the_plain_loader_read_the_packed_frames_as_the_probe_does(ramps, loader):
    """`data.clean_view` (targets read off un-augmented frames) and `augment.without_augmentation` (the loader the
    engine's clean fits read): with every draw of the config on — crop, rotation, colour, blur, sensor noise,
    per-frame warp — each clip's clean frames, and both views of the plain settings, are the whole frame on the
    pixel grid, alike in every frame; the augmented views beside the clean view are drawn as before (the same
    pixels as without it: the clean view takes nothing from the loader's RNG)."""
    import dataclasses

    import torch

    from aupretrain.config import load_config
    from aupretrain.data.augment import without_augmentation
    from aupretrain.data.dataset import ReaderSettings

    cfg = load_config([f"data.shards={ramps}", "data.input_size=32", "data.augment.rotate=20",
                       "data.augment.noise_sigma=[2.0,4.0]", "data.augment.frame_jitter.shift=0.1",
                       "data.augment.frame_jitter.rotate=5", "data.clean_view=true"])
    drawn = ReaderSettings.from_config(cfg, 0, 1)
    own = ("mean", "std", "root", "device", "num_threads", "batch_size", "shuffle_buffer")
    s = dataclasses.replace(settings(ramps), **{f.name: getattr(drawn, f.name) for f in dataclasses.fields(drawn)
                                                if f.name not in own})
    c = (np.arange(s.input_size) + 0.5) * W / s.input_size
    inner = slice(2, -2)

    def on_the_grid(clips):
        for clip in clips:
            assert (clip - clip[:1]).abs().max() < 1.0  # no per-frame warp
            v = clip[0].double().numpy()
            assert np.abs(v[0][inner, inner] - 2 * c[None, inner]).mean() < 1.0
            assert np.abs(v[1][inner, inner] - 2 * c[inner, None]).mean() < 1.0

    batch = next(iter(make_loader(loader, s)))
    assert batch["clean"].shape == batch["view1"].shape
    on_the_grid(batch["clean"])
    assert (batch["view1"] - batch["clean"]).flatten(1).abs().amax(1).min() > 10.0  # the views are drawn
    without = next(iter(make_loader(loader, dataclasses.replace(s, clean_view=False))))
    assert "clean" not in without and torch.equal(without["view1"], batch["view1"])
    plain = without_augmentation(s)
    assert not plain.clean_view and s.rotate == 20  # a copy
    batch = next(iter(make_loader(loader, plain)))
    assert (batch["view1"] - batch["view2"]).abs().max() < 1.0
    on_the_grid(batch["view1"])
