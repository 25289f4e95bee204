"""TCL's label-free near-duplicate mask: `frame_change` measures how much a clip's frames differ where they
differ most, and same-clip negatives below `negative_min_change` leave the denominator."""
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from aupretrain.methods import build_method
from aupretrain.methods.base import frame_change
from aupretrain.objectives import build_objective, split_views, tcl_logits, tcl_loss

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def still_clip(t: int = 4, s: int = 64, seed: int = 0) -> torch.Tensor:
    """[t, 3, s, s] pixel values in [0, 1]: one image repeated."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, s, s, generator=g).mul(0.5).add(0.25).expand(t, 3, s, s).clone()


def test_frame_change_is_the_largest_patch_difference_in_pixel_units():
    x = still_clip()
    x[2, :, 8:16, 24:32] += 0.2  # one 8 x 8 patch of frame 2 changes by 0.2 (a local, AU-like change)
    x[3] += 0.01  # frame 3: a global change of 0.01 everywhere
    c = frame_change(normalise(x)[None], STD)[0]
    assert c.shape == (4, 4) and torch.equal(c, c.T) and torch.all(c.diagonal() == 0)
    assert c[0, 1] == pytest.approx(0.0, abs=1e-6)  # identical frames
    assert c[0, 2] == pytest.approx(0.2, abs=1e-4)  # the patch, not the frame's mean (0.2 / 64)
    assert c[0, 3] == pytest.approx(0.01, abs=1e-4)
    assert c[2, 3] == pytest.approx(0.19, abs=1e-4)
    with pytest.raises(ValueError, match="4 px"):
        frame_change(torch.zeros(1, 2, 3, 4, 4), STD)


def test_near_duplicates_leave_the_anchors_denominator_only():
    g = torch.Generator().manual_seed(3)
    z1, z2 = (F.normalize(torch.randn(3, 4, 16, generator=g), dim=-1) for _ in range(2))
    keys = torch.stack([z1, z2], 1)
    change = torch.full((3, 4, 4), 0.5)
    change[1, 2, 0] = change[1, 0, 2] = 0.001  # clip 1: frames 0 and 2 are near-duplicates
    for view in (0, 1):
        logits, target = tcl_logits(z1 if view == 0 else z2, keys, 0, view, 0.1, 0.0, window=0, change=change,
                                    min_change=0.01)
        row = logits[1 * 4 + 2].view(3, 2, 4)  # anchor: clip 1, frame 2
        assert torch.isinf(row[1, 1 - view, 0])  # its near-duplicate is not a negative
        assert torch.isfinite(row[1, 1 - view, 1]) and torch.isfinite(row[1, 1 - view, 3])  # changed frames are
        assert torch.isfinite(row[1, 1 - view, 2])  # the positive
        assert torch.isfinite(row[[0, 2]]).all()  # other clips untouched
        unmasked, _ = tcl_logits(z1 if view == 0 else z2, keys, 0, view, 0.1, 0.0, window=0)
        differ = (logits != unmasked).nonzero().tolist()
        assert sorted(differ) == sorted([[1 * 4 + 2, (1 * 2 + 1 - view) * 4 + 0], [1 * 4 + 0, (1 * 2 + 1 - view) * 4 + 2]])


def test_mask_lowers_the_loss_of_a_still_face_and_is_logged():
    """Frames 0 and 1 of every clip are the same image: unmasked, TCL must push their codes apart."""
    g = torch.Generator().manual_seed(4)
    z = F.normalize(torch.randn(4, 4, 16, generator=g), dim=-1)
    z[:, 1] = z[:, 0]
    keys = torch.stack([z, z], 1)
    change = torch.full((4, 4, 4), 0.3)
    change[:, 0, 1] = change[:, 1, 0] = 0.0
    change[:, range(4), range(4)] = 0.0
    plain, parts = tcl_loss(z, z, keys, 0, margin=0.0, cross_clip_weight=0.0)
    masked, mparts = tcl_loss(z, z, keys, 0, margin=0.0, cross_clip_weight=0.0, change=change, min_change=0.01)
    assert masked < plain
    assert "tcl_near_duplicates" not in parts
    assert mparts["tcl_near_duplicates"] == pytest.approx(2 / 12)
    assert mparts["tcl_clip_acc"] > parts["tcl_clip_acc"]  # frame 0 and 1 can no longer be confused


def test_method_measures_the_change_the_objective_reads():
    model_cfg = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 1, "stem_pool": False,
                 "norm": "group", "norm_groups": 4, "au_grid": 2, "au_dim": 16, "id_dim": 8, "proj_hidden": 16,
                 "proj_dim": 8, "mean": list(MEAN), "std": list(STD)}
    ocfg = dict(name="tcl", temperature=0.1, margin=0.2, window=0, symmetric=True, rank_weight=0.0, rank_margin=0.05,
                cross_clip_weight=1.0, negative_min_change=0.01)
    model, objective = build_method(ocfg, model_cfg, 32), build_objective(OmegaConf.create(ocfg))
    v1 = torch.stack([normalise(still_clip(s=32, seed=i)) for i in range(2)])
    v1[:, 3] = normalise(still_clip(s=32, seed=9)[0])  # frame 3 of each clip: another image
    v2 = v1.flip(-1)  # the other view: mirrored (the same differences)
    out = split_views(model(torch.cat([v1, v2])), 2)
    assert out["change"].shape == (2, 4, 4)
    assert torch.all(out["change"][:, :3, :3] < 1e-5) and torch.all(out["change"][:, :3, 3] > 0.05)
    loss, parts = objective(out, {})
    assert torch.isfinite(loss) and parts["tcl_near_duplicates"] == pytest.approx(6 / 12)
    with pytest.raises(ValueError, match="negative_min_change"):
        objective.features({"z1": out["z1"], "z2": out["z2"]})
    plain = build_method({**ocfg, "negative_min_change": 0.0}, model_cfg, 32)
    assert "change" not in plain(torch.cat([v1, v2]))  # off: nothing measured
