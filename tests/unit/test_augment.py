"""Per-frame jitter (`augment.jitter_frames` / `jitter_views`): neutral settings change nothing, each frame of a
clip moves on its own draw, within the configured bounds, and the draws follow the loader's generator."""
import torch

from aupretrain.data.augment import jitter_frames, jitter_views
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
