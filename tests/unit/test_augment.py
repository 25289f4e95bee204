"""Per-frame jitter (`augment.jitter_frames` / `jitter_views`): neutral settings change nothing, each frame of a
clip moves on its own draw, within the configured bounds, and the draws follow the loader's generator. The DALI
readers' batch colour, blur and normalisation step (`augment.finish_views`) is the float reference's colour map
and blur (`augment_view`, `blur_clips`), on either of its paths (OpenCV on CPU, torch elsewhere). With
`shared_geometry` the two views of a frame share its jitter. The per-view noise (`augment.noise_views`) has the configured sigma in grey levels, is drawn
apart for the two views of a frame, follows the generator, and keeps the views' memory layout. The horizontal flip
(`augment.flip_views`) mirrors whole clips at the configured rate, alike in both views with `shared_geometry`, and
draws nothing when off."""
import torch

from aupretrain.data.augment import augment_view, finish_views, flip_views, jitter_frames, jitter_views, noise_views
from aupretrain.data.dataset import ReaderSettings


def _dot_clip(b=2, t=6, s=32):
    """A clip of identical frames, each one bright 2 x 2 dot at the centre: [B, T, 1, S, S]."""
    x = torch.zeros(b, t, 1, s, s)
    x[..., s // 2 - 1:s // 2 + 1, s // 2 - 1:s // 2 + 1] = 1.0
    return x


def _centroid(x):
    """(row, col) of the mass of every frame [B, T, 1, S, S] -> [B, T, 2]."""
    s = x.shape[-1]
    w = x.clamp(min=0).sum((-1, -2))[..., 0]
    i = torch.arange(s, dtype=x.dtype)
    return torch.stack([(x[..., 0, :, :].sum(-1) * i).sum(-1) / w, (x[..., 0, :, :].sum(-2) * i).sum(-1) / w], -1)


def test_no_jitter_is_the_identity():
    x = torch.rand(2, 3, 3, 16, 16)
    y = jitter_frames(x, 0.0, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(x, y, atol=1e-5)
    batch = {"view1": x, "view2": x.clone()}
    jitter_views(batch, ReaderSettings(root="-", batch_size=2, input_size=16), torch.Generator())
    assert batch["view1"] is x  # neutral settings: the batch is left alone


def test_every_frame_moves_on_its_own_draw_within_the_bounds():
    s, shift = 32, 0.1
    x = _dot_clip(s=s)
    y = jitter_frames(x, shift, 0.0, 0.0, torch.Generator().manual_seed(1))
    c = _centroid(y)
    moved = (c - (s / 2 - 0.5)).abs()
    assert (moved <= shift * s + 0.6).all(), moved.max()  # at most shift x side, plus interpolation
    # the frames of one clip were identical; now they sit at different places
    assert (c[:, 1:] - c[:, :1]).abs().amax((1, 2)).min() > 0.5
    same = jitter_frames(x, shift, 0.0, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(y, same)  # the generator fixes the draws (exact resume)


def test_shared_geometry_jitters_both_views_of_a_frame_alike():
    """With `shared_geometry` the two views of each frame get one warp (frames still move apart); without it the
    views of a frame are warped independently."""
    x = _dot_clip()
    for shared in (True, False):
        batch = {"view1": x, "view2": x.clone()}
        s = ReaderSettings(root="-", batch_size=2, input_size=32, frame_shift=0.1, shared_geometry=shared)
        jitter_views(batch, s, torch.Generator().manual_seed(3))
        c1, c2 = _centroid(batch["view1"]), _centroid(batch["view2"])
        assert (c1[:, 1:] - c1[:, :1]).abs().amax((1, 2)).min() > 0.5  # frames of a clip still move apart
        if shared:
            assert torch.equal(batch["view1"], batch["view2"])
        else:
            assert (c1 - c2).abs().amax(-1).min() > 0.05


def test_zoom_and_rotation_keep_the_centre_and_change_the_size():
    s = 32
    x = torch.zeros(1, 8, 1, s, s)
    x[..., 12:20, 12:20] = 1.0  # an 8 x 8 square at the centre
    y = jitter_frames(x, 0.0, 0.3, 20.0, torch.Generator().manual_seed(2))
    c = _centroid(y)
    assert ((c - (s / 2 - 0.5)).abs() < 0.6).all()  # about the centre
    area = y.sum((-1, -2))[..., 0] / 64.0
    assert area.min() >= 1 / 1.3 ** 2 - 0.05 and area.max() <= 1 / 0.7 ** 2 + 0.05
    assert area.max() - area.min() > 0.1  # frames were zoomed differently


def _colour_settings(**kw):
    base = dict(root="-", batch_size=2, input_size=8, scale=(1.0, 1.0), brightness=(0.7, 1.3), contrast=(0.7, 1.3),
                saturation=(0.5, 1.5), hue=30.0, blur_sigma=(0.0, 0.0))
    return ReaderSettings(**{**base, **kw})


def test_finish_views_is_the_baseline_loaders_colour_map():
    """The loaders' batch colour step gives what `augment_view` (the float reference of one view's operators)
    gives for the same brightness, contrast and saturation (ranges of one value: both draw that value),
    channels-last uint8 in, normalised channels-first float out, clipped to [0, 255] before normalising."""
    x = torch.randint(0, 256, (3, 4, 8, 8, 3), dtype=torch.uint8)
    for b, c, sat in [(1.2, 0.8, 1.3), (0.7, 1.4, 0.4), (1.3, 1.3, 2.0)]:
        s = _colour_settings(brightness=(b, b), contrast=(c, c), hue=0.0, saturation=(sat, sat))
        y = finish_views(x, s, torch.Generator().manual_seed(0))
        assert y.shape == (3, 4, 3, 8, 8) and y.dtype == torch.float32
        for i in range(3):
            ref = augment_view(x[i], s, torch.Generator())
            # on CPU the mapped colours are rounded to uint8 (OpenCV, fixed point): within one grey level
            assert torch.allclose(ref, y[i], atol=1.0 / (255 * min(s.std))), (b, c, sat, (ref - y[i]).abs().max())
        if sat == 1.3:  # the formula itself, not only the shared code: grey stays grey under saturation, and
            grey = torch.full((1, 1, 2, 2, 3), 90, dtype=torch.uint8)  # y = b (128 + c (x - 128)) on each channel
            got = finish_views(grey, s, torch.Generator())[0, 0, :, 0, 0]
            want = (min(255.0, b * (128 + c * (90 - 128))) - torch.tensor(s.mean) * 255) / (torch.tensor(s.std) * 255)
            assert torch.allclose(got, want, atol=1.0 / (255 * min(s.std))), (got, want)


def test_finish_views_blurs_like_the_baseline_loader_on_both_paths():
    """With a blur (and a colour map), OpenCV's uint8 path and torch's path give the baseline loader's
    `blur_clips` of the colour-mapped, normalised clip, to within 2 grey levels: OpenCV rounds to uint8 after the
    colour map and after the blur (0.5 + 0.5) and blurs uint8 with fixed-point kernel weights (the worst of 60
    random inputs read 1.55 levels; 1.5 failed on one). The input is seeded: it must not depend on which tests
    ran before in the process (pytest-xdist's order)."""
    from aupretrain.data.augment import blur_clips

    x = torch.randint(0, 256, (3, 2, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    s = _colour_settings(brightness=(1.2, 1.2), contrast=(0.9, 0.9), hue=0.0, saturation=(1.1, 1.1),
                         blur_sigma=(0.5, 1.5), input_size=16)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):  # finish_views draws brightness, contrast, hue, saturation per clip, then the sigmas
        torch.rand(3, generator=g)
    sigma = 0.5 + torch.rand(3, generator=g)
    unblurred = torch.stack([augment_view(x[i], s, torch.Generator()) for i in range(3)])
    want = blur_clips(unblurred, sigma)
    tol = 2.0 / (255 * min(s.std))
    for opencv in (True, False):
        got = finish_views(x, s, torch.Generator().manual_seed(2), opencv=opencv)
        assert (got - want).abs().max() <= tol, (opencv, (got - want).abs().max())
    assert (want - unblurred).abs().max() > 10 * tol  # the blur did something


def test_the_colour_map_of_other_devices_is_opencvs():
    """`map_colours` (what runs on the GPU) and OpenCV's `transform` (CPU) map colours alike."""
    import cv2

    from aupretrain.data.augment import map_colours

    x = torch.randint(0, 256, (2, 3, 5, 5, 3), dtype=torch.uint8)
    m, off = torch.rand(2, 3, 3) * 1.2, torch.rand(2, 3) * 40 - 20
    y = map_colours(x.permute(0, 1, 4, 2, 3).float(), m, off)
    aff = torch.cat([m, off[..., None]], 2).numpy()
    for i in range(2):
        ref = cv2.transform(x[i].numpy().reshape(-1, 5, 3), aff[i]).reshape(3, 5, 5, 3)
        assert (y[i] - torch.from_numpy(ref).permute(0, 3, 1, 2).float()).abs().max() <= 1.0
    assert y.min() >= 0 and y.max() <= 255


def test_finish_views_turns_the_hue_by_the_drawn_angle():
    """Hue h turns the chroma (I, Q) of YIQ by h degrees and keeps the luma Y (DALI's `hsv`)."""
    import math

    from aupretrain.data.augment import _YIQ

    s = _colour_settings(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=40.0)
    x = torch.zeros(2, 1, 4, 4, 3, dtype=torch.uint8)
    x[..., 0], x[..., 1], x[..., 2] = 150, 110, 90  # skin-like, mid-range: no clipping
    y = finish_views(x, s, torch.Generator().manual_seed(1))
    drawn = (torch.rand(2, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 40.0  # finish_views's draw
    rgb = y.mean((1, 3, 4)) * (torch.tensor(s.std) * 255) + torch.tensor(s.mean) * 255  # back to 0..255
    before, after = _YIQ @ torch.tensor([150.0, 110.0, 90.0]), rgb @ _YIQ.T
    for k in range(2):
        assert abs(float(after[k, 0] - before[0])) < 0.6  # luma kept (to the uint8 rounding of the colours)
        turn = math.degrees(math.atan2(after[k, 2], after[k, 1]) - math.atan2(before[2], before[1]))
        assert abs(float(drawn[k])) > 5 and abs(turn - float(drawn[k])) < 1.5, (turn, float(drawn[k]))


def test_finish_views_draws_per_clip_from_the_generator():
    s = _colour_settings()
    x = torch.full((4, 2, 8, 8, 3), 100, dtype=torch.uint8)
    x[..., 0] = 180  # a reddish grey, so hue and saturation show
    y1 = finish_views(x, s, torch.Generator().manual_seed(3))
    y2 = finish_views(x, s, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)  # the loader's saved generator replays the same colours on resume
    means = y1.mean((1, 3, 4))  # [B, 3]
    assert all(not torch.allclose(means[0], means[k], atol=1e-3) for k in (1, 2, 3))  # one draw per clip
    assert torch.allclose(y1[:, 0], y1[:, 1])  # shared by every frame of the clip


def test_finish_views_without_jitter_only_normalises():
    s = _colour_settings(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0)
    x = torch.randint(0, 256, (2, 3, 8, 8, 3), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    y = finish_views(x, s, g)
    mean, std = torch.tensor(s.mean).view(3, 1, 1) * 255, torch.tensor(s.std).view(3, 1, 1) * 255
    assert torch.allclose(y, (x.permute(0, 1, 4, 2, 3).float() - mean) / std, atol=1e-5)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())  # no draws spent


def test_dali_views_reach_the_model_channels_last_without_a_relayout():
    """finish_views keeps DALI's NHWC memory (on both paths), the step joins the two views in it, and the
    model's channels-last trunk then reads the input as it is: same values as a contiguous NCHW join."""
    from aupretrain.engine.step import join_views

    s = _colour_settings()
    x = torch.randint(0, 256, (2, 3, 8, 8, 3), dtype=torch.uint8)
    for opencv in (True, False):
        v1, v2 = (finish_views(x, s, torch.Generator().manual_seed(k), opencv=opencv) for k in (0, 1))
        assert v1.shape == (2, 3, 3, 8, 8) and v1.stride(2) == 1
        joined = join_views({"view1": v1, "view2": v2}, "cpu")
        frames = joined.flatten(0, 1)
        assert frames.is_contiguous(memory_format=torch.channels_last)
        assert frames.contiguous(memory_format=torch.channels_last).data_ptr() == frames.data_ptr()  # no copy
        assert torch.equal(joined, torch.cat([v1.contiguous(), v2.contiguous()]))
    plain = {"view1": torch.rand(2, 3, 3, 8, 8), "view2": torch.rand(2, 3, 3, 8, 8)}  # the baseline loader's
    assert torch.equal(join_views(plain, "cpu"), torch.cat([plain["view1"], plain["view2"]]))


def test_noise_views_adds_independent_noise_of_the_configured_grey_levels():
    std = (0.229, 0.224, 0.225)
    s = ReaderSettings(root="-", batch_size=4, input_size=32, std=std, noise_sigma=(8.0, 8.0))
    # DALI's layout: a channels-last buffer seen as [B, T, 3, S, S]
    zero = torch.zeros(4, 2, 32, 32, 3).permute(0, 1, 4, 2, 3)
    batch = {"view1": zero.clone(memory_format=torch.preserve_format), "view2": zero.clone()}
    noise_views(batch, s, torch.Generator().manual_seed(0))
    v1, v2 = batch["view1"], batch["view2"]
    assert v1.stride() == zero.stride() and v1.shape == zero.shape  # the layout the model reads is kept
    for c in range(3):  # back in grey levels: sigma 8 on every channel
        assert abs(float(v1[:, :, c].std()) * std[c] * 255 - 8.0) < 0.3
    # the two views of a frame get their own draws (the frame's own noise is what this hides)
    assert abs(float(torch.corrcoef(torch.stack([v1.flatten(), v2.flatten()]))[0, 1])) < 0.05
    again = {"view1": zero.clone(memory_format=torch.preserve_format), "view2": zero.clone()}
    noise_views(again, s, torch.Generator().manual_seed(0))
    assert torch.equal(again["view1"], v1) and torch.equal(again["view2"], v2)  # a resume repeats the draws
    off = {"view1": zero, "view2": zero}
    noise_views(off, ReaderSettings(root="-", batch_size=4, input_size=32), torch.Generator())
    assert off["view1"] is zero  # the default (0, 0) leaves the batch alone


def test_flip_views_mirrors_whole_clips_at_the_configured_rate():
    b, t = 400, 3
    # DALI's layout: a channels-last buffer seen as [B, T, 3, S, S]; every frame a ramp left to right
    ramp = torch.arange(8.0).view(1, 1, 1, 8, 1).expand(b, t, 8, 8, 3).contiguous().permute(0, 1, 4, 2, 3)
    for shared in (True, False):
        batch = {"view1": ramp, "view2": ramp.clone()}
        s = ReaderSettings(root="-", batch_size=b, input_size=8, hflip=0.5, shared_geometry=shared)
        flip_views(batch, s, torch.Generator().manual_seed(0))
        v1, v2 = batch["view1"], batch["view2"]
        assert v1.stride() == ramp.stride() and v1.shape == ramp.shape  # the layout the model reads is kept
        assert torch.equal(ramp, torch.arange(8.0).expand_as(ramp))  # the loader's tensor is not written into
        flipped = []
        for v in (v1, v2):
            left = v[..., 0]  # [B, T, 3, S]: 0 where kept, 7 where mirrored
            per_clip = left.flatten(1)
            assert ((per_clip == 0).all(1) | (per_clip == 7).all(1)).all()  # every frame of a clip alike
            flipped.append(per_clip[:, 0] == 7)
        assert 0.4 < float(flipped[0].float().mean()) < 0.6 and 0.4 < float(flipped[1].float().mean()) < 0.6
        assert torch.equal(flipped[0], flipped[1]) == shared  # shared geometry: one draw for both views
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    off = {"view1": ramp, "view2": ramp}
    flip_views(off, ReaderSettings(root="-", batch_size=b, input_size=8), g)
    assert off["view1"] is ramp and torch.equal(g.get_state(), state)  # off: nothing changed, nothing drawn


def _ramp_clips(b=4, t=2, w=96):
    """Frames whose red and green are twice the pixel centre's x and y (continuous coordinates): [B, T, W, W, 3]."""
    import numpy as np

    y, x = np.mgrid[0:w, 0:w] + 0.5
    img = np.stack([2 * x, 2 * y, np.full_like(x, 128.0)], -1).round().astype(np.uint8)
    return torch.from_numpy(np.broadcast_to(img, (b, t, w, w, 3)).copy())


def test_host_views_cut_the_drawn_crop_and_warp_where_the_crop_path_resizes():
    """`host_views` on ramp frames: each view's pixel (i, j) reads the source point x0 + (j + 0.5) side W / S (the
    drawn crop, in continuous coordinates) for the crop-and-resize path (no rotation) and the warp path (a
    rotation of 1e-4 degrees), from the same draws; both frames of a clip alike; `shared_geometry` gives both
    views one crop; a wrong input is refused."""
    import numpy as np
    import pytest

    from aupretrain.data.augment import host_views, view_draws

    w, size = 96, 32
    clips = _ramp_clips(w=w)
    for rotate in (0.0, 1e-4):
        s = ReaderSettings(root="-", batch_size=4, input_size=size, scale=(0.36, 0.64), rotate=rotate)
        g = torch.Generator().manual_seed(3)
        draws = view_draws(s, 4, torch.Generator().manual_seed(3))  # what host_views draws first (view 1)
        v1, v2 = host_views(clips, s, g)
        assert v1.shape == (4, 2, size, size, 3) and v1.dtype == torch.uint8
        assert torch.equal(v1[:, 0], v1[:, 1])
        for i in range(4):
            side, ox, oy = (float(d) for d in draws[i, :3])
            c = (np.arange(size) + 0.5) * side * w / size
            want_x, want_y = 2 * (ox * w + c), 2 * (oy * w + c)
            got = v1[i, 0].double().numpy()
            inner = slice(2, -2)
            # the crop path rounds the crop's corner and side to the pixel grid (up to half a source pixel each:
            # one grey level of the ramp); the warp is exact to the ramp's own rounding
            tol = 2.5 if rotate == 0 else 0.6
            ex = np.abs(got[inner, inner, 0] - want_x[None, inner]).mean()
            ey = np.abs(got[inner, inner, 1] - want_y[inner, None]).mean()
            assert ex < tol and ey < tol, (rotate, i, ex, ey)
        assert (v1 - v2).abs().flatten(1).amax(1).min() > 0  # view 2 drawn apart
    same = host_views(clips, ReaderSettings(root="-", batch_size=4, input_size=size, scale=(0.36, 0.64),
                                            shared_geometry=True), torch.Generator().manual_seed(3))
    assert torch.equal(same[0], same[1])
    with pytest.raises(AssertionError, match="uint8"):
        host_views(clips.float(), s, g)
