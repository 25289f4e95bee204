"""CIR's HOG-change term: the torch HOG descriptor (`objectives/hog.py`) and the method's pass that feeds it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from aupretrain.objectives.hog import hog_change_terms, hog_descriptor

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]) * 255, torch.tensor([0.229, 0.224, 0.225]) * 255


def _normalised(grey: torch.Tensor) -> torch.Tensor:
    """Grey images [N, S, S] in 0..255 -> normalised RGB [N, 3, S, S], as the encoder's input."""
    return (grey.unsqueeze(1).expand(-1, 3, -1, -1) - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)


def test_hog_descriptor_layout_and_edge_orientation():
    """1,764 values at 64 px (7 x 7 blocks x 4 cells x 9 bins); a vertical edge votes in the bins of a horizontal
    gradient (0 deg: the first and last bins), a horizontal edge in the 90-deg bin; blocks are unit vectors."""
    vertical = torch.zeros(1, 64, 64)
    vertical[..., 32:] = 200.0
    horizontal = vertical.transpose(1, 2).clone()
    hv, hh = hog_descriptor(_normalised(vertical), MEAN, STD), hog_descriptor(_normalised(horizontal), MEAN, STD)
    assert hv.shape == (1, 1764) and hv.dtype == torch.float32
    bins_v, bins_h = hv.view(49, 4, 9).sum((0, 1)), hh.view(49, 4, 9).sum((0, 1))
    assert bins_v.argmax() in (0, 8) and bins_h.argmax() == 4
    assert (bins_v[[0, 8]].sum() / bins_v.sum()) > 0.99 and bins_h[4] / bins_h.sum() > 0.99
    norms = hv.view(49, 36).norm(dim=1)
    assert torch.allclose(norms[norms > 0], torch.ones_like(norms[norms > 0]), atol=0.01)


def test_hog_descriptor_ignores_contrast_and_follows_opencv():
    """Block normalisation: the same face at another contrast gives the same descriptor; and on a real face the
    descriptor is `cv2.HOGDescriptor`'s (layout, Gaussian block window, spatial and orientation vote interpolation,
    L2-Hys) up to float rounding, at 8-px and 4-px cells."""
    import cv2
    from aupretrain.synth.astronaut import photo

    face = cv2.resize(cv2.cvtColor(photo()[30:210, 150:330], cv2.COLOR_RGB2GRAY), (64, 64), interpolation=cv2.INTER_AREA)
    grey = torch.from_numpy(face).float()[None]
    h = hog_descriptor(_normalised(grey), MEAN, STD)
    dim = hog_descriptor(_normalised(0.5 * grey + 20), MEAN, STD)
    assert torch.allclose(h, dim, atol=0.02)
    for cell, ours in ((8, h[0].numpy()), (4, hog_descriptor(_normalised(grey), MEAN, STD, cell=4)[0].numpy())):
        ref = cv2.HOGDescriptor((64, 64), (2 * cell,) * 2, (cell, cell), (cell, cell), 9).compute(face).reshape(-1)
        assert ours.shape == ref.shape
        assert np.abs(ours - ref).max() < 2e-3, (cell, np.abs(ours - ref).max())
    # signed bins over 360 deg (OpenCV's signedGradient), and another bin count
    for bins, signed in ((18, True), (12, False)):
        ours = hog_descriptor(_normalised(grey), MEAN, STD, bins=bins, signed=signed)[0].numpy()
        ref = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), bins, 1, -1, 0, 0.2, False, 64,
                                signed).compute(face).reshape(-1)
        assert ours.shape == ref.shape == (49 * 4 * bins,)
        assert np.abs(ours - ref).max() < 2e-3, (bins, signed, np.abs(ours - ref).max())


def test_colour_hog_follows_opencv():
    """`colour=True` is `cv2.HOGDescriptor` on the RGB image (each pixel's gradient from its strongest channel) up to
    float rounding, and not the grey descriptor."""
    import cv2
    from aupretrain.synth.astronaut import photo

    face = cv2.resize(photo()[30:210, 150:330], (64, 64), interpolation=cv2.INTER_AREA)
    rgb = torch.from_numpy(face).float().permute(2, 0, 1)[None]
    x = (rgb - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    ours = hog_descriptor(x, MEAN, STD, colour=True)[0].numpy()
    ref = cv2.HOGDescriptor((64, 64), (16, 16), (8, 8), (8, 8), 9).compute(np.ascontiguousarray(face)).reshape(-1)
    assert np.abs(ours - ref).max() < 2e-3, np.abs(ours - ref).max()
    assert np.abs(hog_descriptor(x, MEAN, STD)[0].numpy() - ref).max() > 0.05  # the grey descriptor is another one


def test_signed_bins_tell_an_edge_from_its_reverse():
    """Unsigned bins give a dark-to-light edge and the light-to-dark one the same descriptor; signed bins (0-360 deg,
    20 deg each, centres at 10, 30, ...) put them half a turn apart: 0 deg shared by bins 17 and 0, 180 deg by bins 8
    and 9."""
    rising = torch.zeros(1, 64, 64)
    rising[..., 32:] = 200.0
    falling = 200.0 - rising
    u = [hog_descriptor(_normalised(g), MEAN, STD) for g in (rising, falling)]
    assert torch.allclose(u[0], u[1], atol=1e-5)
    s = [hog_descriptor(_normalised(g), MEAN, STD, bins=18, signed=True).view(49, 4, 18).sum((0, 1))
         for g in (rising, falling)]
    assert s[0][[17, 0]].sum() / s[0].sum() > 0.99 and s[1][[8, 9]].sum() / s[1].sum() > 0.99


def test_hog_descriptor_refuses_sizes_its_cells_do_not_tile():
    with pytest.raises(ValueError, match="multiple of 8"):
        hog_descriptor(torch.zeros(1, 3, 60, 60), MEAN, STD)


def test_hog_change_terms():
    """`hog_change` = mean over pairs of |pred - target|^2; `hog_copy` = mean |target|^2 (predicting no change)."""
    target = torch.randn(2, 3, 10)
    zero = hog_change_terms({"pred": torch.zeros_like(target), "target": target})
    assert torch.allclose(zero["hog_change"], target.pow(2).sum(-1).mean())
    assert torch.allclose(zero["hog_copy"], zero["hog_change"])
    exact = hog_change_terms({"pred": target.clone(), "target": target})
    assert exact["hog_change"] == 0 and exact["hog_copy"] > 0


def test_clp_hog_pass_trains_the_codes_and_refuses_untiled_inputs():
    """objective=clp with `cir.hog_weight`: the method's pass gives M (â_t - â_s) and HOG(x_t) - HOG(x_s) on CIR's
    frame pairs; the term reaches the loss with its weight, the encoder's codes get its gradient, and `hog_change`
    and `hog_copy` are reported. An input size its HOG cells cannot tile is refused naming the knobs."""
    from aupretrain.config import load_config
    from aupretrain.methods import build_method
    from aupretrain.objectives import build_objective, split_views

    def setup(*overrides):
        cfg = load_config(["experiment=cpu", "objective=clp", *overrides])
        return cfg, build_method(cfg.objective, cfg.model, int(cfg.data.input_size))

    cfg, method = setup("objective.cir.hog_weight=2", "objective.cir.self_weight=0", "objective.cir.cycle_weight=0",
                        "objective.cir.au_weight=0", "objective.cir.id_weight=0")
    assert method.hog_change.out_features == 1764 and method.hog_change.in_features == cfg.model.au_dim
    b, t, s = 2, 4, int(cfg.data.input_size)
    clips = torch.randn(2 * b, t, 3, s, s)
    out = split_views(method(clips, **method.request({"partner": torch.tensor([1, 0])}, t)), b)
    pred, target = out["hog"]["pred"], out["hog"]["target"]
    assert pred.shape == target.shape == (b, 2, 1764)
    f = (0, 3)  # cir.frames=2 of 4 frames; s = t + 1 mod 4
    mean, std = method.encoder.mean.view(3), method.encoder.std.view(3)
    expected = hog_descriptor(clips[:b, [0, 3]].flatten(0, 1), mean, std) - hog_descriptor(
        clips[:b, [1, 0]].flatten(0, 1), mean, std)
    assert torch.allclose(target, expected.view(b, 2, -1), atol=1e-5), f
    unit = torch.nn.functional.normalize(out["a1"], dim=-1)  # view 1's codes
    with torch.no_grad():
        assert torch.allclose(pred, method.hog_change(unit[:, [0, 3]] - unit[:, [1, 0]]), atol=1e-5)  # t minus s
    objective = build_objective(cfg.objective)
    loss, parts = objective.local_loss(out, {})
    assert torch.allclose(parts["hog_change"], hog_change_terms(out["hog"])["hog_change"].detach())
    assert "hog_copy" in parts
    method.zero_grad()
    loss.backward()
    assert method.encoder.au_head[-1].weight.grad.abs().sum() > 0 and method.hog_change.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="hog_cell"):
        setup("objective.cir.hog_weight=1", "objective.cir.hog_cell=7")
    assert setup()[1].hog_change is None  # off by default


def test_clp_hog_preset_is_clp_flow_led_by_the_hog_change_term():
    """`objective=clp_hog` is flow-led CLP (every clp_flow knob as it is) with the HOG-change term on at weight 2."""
    from aupretrain.config import load_config
    from aupretrain.methods import build_method
    from aupretrain.objectives import build_objective

    cfg = load_config(["experiment=cpu", "objective=clp_hog"])
    flow = load_config(["experiment=cpu", "objective=clp_flow"]).objective
    obj = build_objective(cfg.objective)
    assert obj.name == "clp" and obj.hog_weight == 2.0 and build_objective(flow).hog_weight == 0.0
    assert {k: v for k, v in cfg.objective.cir.items() if k != "hog_weight"} == \
        {k: v for k, v in flow.cir.items() if k != "hog_weight"}
    assert cfg.objective.tcl_weight == flow.tcl_weight
    method = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    assert method.hog_change is not None and method.hog_change.out_features == 1764
    signed = load_config(["experiment=cpu", "objective=clp_hog_basis", "objective.cir.hog_bins=18",
                          "objective.cir.hog_signed=true"])
    method = build_method(signed.objective, signed.model, int(signed.data.input_size))  # both HOG terms read 3,528
    assert method.hog_change.out_features == method.hog_basis.dim == 3528 and method.hog_signed


@pytest.mark.parametrize("override", ["objective.cir.hog_cell=0", "objective.cir.hog_weight=-1",
                                      "objective.cir.hog_bins=1", "objective.cir.hog_signed=maybe"])
def test_hog_knobs_are_checked_before_anything_starts(override):
    """A HOG cell under 2 px or a negative weight is refused by the settings check with the knob's name."""
    from aupretrain.config import load_config
    from aupretrain.errors import UsageError
    from aupretrain.settings import validate

    validate(load_config(["experiment=cpu", "objective=clp_hog"]))
    with pytest.raises(UsageError, match=override.split("=")[0]):
        validate(load_config(["experiment=cpu", "objective=clp_hog", override]))
