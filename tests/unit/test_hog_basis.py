"""The within-clip HOG basis (`aupretrain.methods.hog_basis`, `objective.cir.hog_basis_weight`): what it fits from
the gathered clips, the targets it gives, and how CLP's method and objective use it."""
from __future__ import annotations

import pytest
import torch

from aupretrain.methods.hog_basis import WithinClipHOGBasis
from aupretrain.objectives.hog import hog_basis_terms, hog_descriptor


def _clips(n: int, t: int, dim: int, seed: int = 0):
    """Clips whose frames differ from their clip's mean only along e_3 (std 2) and e_7 (std 1), while the clips'
    means (the 'identities') vary along e_0 with std 10: the within-clip directions are e_3 then e_7."""
    g = torch.Generator().manual_seed(seed)
    identity = torch.zeros(n, 1, dim)
    identity[..., 0] = 10 * torch.randn(n, 1, generator=g)
    change = torch.zeros(n, t, dim)
    change[..., 3] = 2 * torch.randn(n, t, generator=g)
    change[..., 7] = torch.randn(n, t, generator=g)
    return identity + change + 0.01 * torch.randn(n, t, dim, generator=g) + 5.0


def test_the_basis_is_what_changes_within_clips_not_between_them():
    """Fitted after `fit_steps` accumulations: the directions are the within-clip ones (e_3, e_7, not the far
    larger between-clip e_0), largest first, each with its largest entry positive; the targets of the fitted
    frames have zero mean and unit variance; nothing changes after the fit; targets before it are refused."""
    basis = WithinClipHOGBasis(dim=16, k=2, fit_steps=3)
    with pytest.raises(RuntimeError, match="before the basis was fitted"):
        basis.targets(torch.zeros(1, 16))
    steps = [_clips(200, 4, 16, seed) for seed in range(3)]
    for i, hog in enumerate(steps):
        assert not basis.is_fitted
        basis.accumulate(hog)
    assert basis.is_fitted
    assert basis.basis[0].abs().argmax() == 3 and basis.basis[1].abs().argmax() == 7
    assert torch.all(basis.basis[torch.arange(2), basis.basis.abs().argmax(1)] > 0)
    assert abs(float(basis.basis[0, 3])) > 0.999 and abs(float(basis.basis[1, 7])) > 0.999
    z = basis.targets(torch.cat(steps).flatten(0, 1))
    assert z.shape == (2400, 2)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-3) and torch.allclose(z.std(0), torch.ones(2), atol=1e-2)
    before = basis.basis.clone()
    basis.accumulate(_clips(50, 4, 16, seed=9))  # fitted: a no-op
    assert torch.equal(before, basis.basis)
    fresh = WithinClipHOGBasis(dim=16, k=2, fit_steps=3)
    fresh.load_state_dict(basis.state_dict())  # the fitted basis travels with the model's state
    assert fresh.is_fitted and torch.equal(fresh.basis, basis.basis)


def test_whitened_basis_keeps_the_directions_where_faces_differ_least():
    """`whiten` = r (`objective.cir.hog_basis_whiten`): the k directions with the largest within-clip share of their
    variance in the pooled top-r subspace. e_0 changes most within clips (std 3) but differs far more between them
    (std 10: share 0.08), e_3 changes only within (std 2: share 1), e_7 within (std 1) and between (std 1: share
    0.5). Plain principal directions keep e_0 then e_3; the whitened fit keeps e_3 then e_7, its targets have zero
    mean and unit variance, and it refuses an r outside k..Dh and too few frames for r."""
    g = torch.Generator().manual_seed(0)

    def clips(n: int) -> torch.Tensor:
        x = 0.01 * torch.randn(n, 4, 16, generator=g)
        x[..., 0] += 10 * torch.randn(n, 1, generator=g) + 3 * torch.randn(n, 4, generator=g)
        x[..., 3] += 2 * torch.randn(n, 4, generator=g)
        x[..., 7] += torch.randn(n, 1, generator=g) + torch.randn(n, 4, generator=g)
        return x

    data = [clips(400) for _ in range(2)]
    plain, whitened = WithinClipHOGBasis(16, 2, 2), WithinClipHOGBasis(16, 2, 2, whiten=3)
    for hog in data:
        plain.accumulate(hog)
        whitened.accumulate(hog)
    assert plain.basis.abs().argmax(1).tolist() == [0, 3]
    assert whitened.basis.abs().argmax(1).tolist() == [3, 7]
    assert torch.all(whitened.basis.abs().max(1).values > 0.99)
    z = whitened.targets(torch.cat(data).flatten(0, 1))
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-3) and torch.allclose(z.std(0), torch.ones(2), atol=1e-2)
    for r in (1, 17):
        with pytest.raises(ValueError, match="hog_basis_whiten"):
            WithinClipHOGBasis(16, 2, 1, whiten=r)
    few = WithinClipHOGBasis(16, 2, 1, whiten=12)
    with pytest.raises(RuntimeError, match="hog_basis_whiten"):
        few.accumulate(clips(2))  # 8 frames cannot whiten 12 dimensions


def test_the_basis_refuses_bad_settings_and_shapes():
    with pytest.raises(ValueError, match="hog_basis_k"):
        WithinClipHOGBasis(dim=16, k=16, fit_steps=1)
    with pytest.raises(ValueError, match="hog_basis_fit_steps"):
        WithinClipHOGBasis(dim=16, k=2, fit_steps=0)
    basis = WithinClipHOGBasis(dim=16, k=2, fit_steps=1)
    with pytest.raises(ValueError, match="T >= 2"):
        basis.accumulate(torch.zeros(4, 1, 16))
    with pytest.raises(RuntimeError, match="degrees of freedom"):
        basis.accumulate(torch.zeros(1, 2, 16))  # one clip of two frames: one degree of freedom for two directions


def test_clp_method_gathers_fits_then_regresses_the_whitened_projections():
    """objective=clp_hog_basis: before the fit the method hands view 1's HOG to the engine (after_step_inputs) and
    the term is 0 but on the graph; `after_step` with the gathered HOG fits the basis; then both views' frames get
    targets = the basis' projections of their HOG, the term (weight 2) reaches the loss and the encoder's codes get
    its gradient."""
    from aupretrain.config import load_config
    from aupretrain.methods import build_method
    from aupretrain.objectives import build_objective, split_views

    cfg = load_config(["experiment=cpu", "objective=clp_hog_basis", "objective.cir.hog_basis_fit_steps=1",
                       "objective.cir.hog_basis_k=4", "objective.cir.hog_basis_fit=stream", "objective.cir.hog_basis_whiten=0",
                       # the preset's own-clip TCL negatives and between-clip share term back to clp_hog's settings:
                       # the loss then differs from clp_hog's by the basis term alone (checked at the end)
                       "objective.cross_clip_weight=1", "objective.cir.between_clip_weight=0"])
    method = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    objective = build_objective(cfg.objective)
    b, t, s = 2, 4, int(cfg.data.input_size)
    clips = torch.randn(2 * b, t, 3, s, s)
    request = method.request({"partner": torch.tensor([1, 0])}, t)
    out = split_views(method(clips, **request), b)
    stats = objective.after_step_inputs(out)
    mean, std = method.encoder.mean.view(3), method.encoder.std.view(3)
    hog = hog_descriptor(clips.flatten(0, 1), mean, std).view(2 * b, t, -1)
    assert stats.shape == (b, t, 1764) and torch.allclose(stats, hog[:b], atol=1e-5)
    # the HOG-change term reads the same HOG (computed once): HOG(x_t) - HOG(x_s), t = (0, 3), s = t + 1 mod 4
    assert torch.allclose(out["hog"]["target"], hog[:b, [0, 3]] - hog[:b, [1, 0]], atol=1e-5)
    _, parts = objective.local_loss(out, {})
    assert "hog_basis" not in parts and out["hog_basis"]["pred"].shape == (2 * b, t, 4)
    method.after_step(torch.cat([stats, stats + 0.1 * torch.randn_like(stats)]))  # "every rank's" clips
    assert method.hog_basis.is_fitted
    out = split_views(method(clips, **request), b)
    assert objective.after_step_inputs(out) is None  # nothing more to gather
    assert torch.allclose(out["hog"]["target"], hog[:b, [0, 3]] - hog[:b, [1, 0]], atol=1e-5)  # fitted: same
    target = out["hog_basis"]["target"]
    assert torch.allclose(target, method.hog_basis.targets(hog), atol=1e-4)
    with torch.no_grad():
        expected = method.hog_basis_head(torch.cat([out["a1"], out["a2"]]))
    assert torch.allclose(out["hog_basis"]["pred"], expected, atol=1e-5)
    loss, parts = objective.local_loss(out, {})
    assert torch.allclose(parts["hog_basis"], hog_basis_terms(out["hog_basis"])["hog_basis"])
    clip_form = build_objective(load_config(["experiment=cpu", "objective=clp_hog_basis",
                                             "objective.cir.hog_basis_centre=clip"]).objective)
    _, clip_parts = clip_form.local_loss(out, {})  # `objective.cir.hog_basis_centre=clip` reaches the term
    assert torch.allclose(clip_parts["hog_basis"], hog_basis_terms(out["hog_basis"], "clip")["hog_basis"])
    assert not torch.allclose(clip_parts["hog_basis"], parts["hog_basis"])
    without = build_objective(load_config(["experiment=cpu", "objective=clp_hog"]).objective)
    base, _ = without.local_loss({k: v for k, v in out.items() if k != "hog_basis"}, {})
    assert torch.allclose(loss, base + 2.0 * parts["hog_basis"], atol=1e-5)
    method.zero_grad()
    loss.backward()
    assert method.encoder.au_head[-1].weight.grad.abs().sum() > 0
    assert method.hog_basis_head.weight.grad.abs().sum() > 0
    assert build_method(load_config(["experiment=cpu", "objective=clp_hog"]).objective,
                        cfg.model, s).hog_basis is None  # off unless its weight is set


def test_prefit_asks_for_un_augmented_clips_and_never_fits_from_the_views():
    """`objective.cir.hog_basis_fit=prefit`: the method asks the engine for `hog_basis_fit_steps` steps of
    un-augmented clips (`clean_fit_steps`) and hands the views' HOG to no one (no `stats`); `clean_fit_inputs` is
    the clips' HOG; once fitted — from `after_step` or loaded from a checkpoint — it asks for nothing. The default
    (`stream`) and a method without the basis never ask."""
    from aupretrain.config import load_config
    from aupretrain.methods import build_method
    from aupretrain.objectives import build_objective, split_views

    over = ["experiment=cpu", "objective=clp_hog_basis", "objective.cir.hog_basis_fit_steps=3",
            "objective.cir.hog_basis_whiten=0"]
    cfg = load_config(over)  # the preset fits before step 1
    method = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    assert method.clean_fit_steps() == 3
    b, t, s = 2, 4, int(cfg.data.input_size)
    clips = torch.randn(2 * b, t, 3, s, s)
    out = split_views(method(clips, **method.request({"partner": torch.tensor([1, 0])}, t)), b)
    assert build_objective(cfg.objective).after_step_inputs(out) is None  # the views are not the fit's input
    hog = method.clean_fit_inputs(clips[:b])
    mean, std = method.encoder.mean.view(3), method.encoder.std.view(3)
    assert torch.allclose(hog, hog_descriptor(clips[:b].flatten(0, 1), mean, std).view(b, t, -1), atol=1e-5)
    for _ in range(3):
        assert method.clean_fit_steps() == 3
        method.after_step(torch.cat([hog, hog + 0.1 * torch.randn_like(hog)]))
    assert method.hog_basis.is_fitted and method.clean_fit_steps() == 0
    resumed = build_method(cfg.objective, cfg.model, s)
    resumed.load_state_dict(method.state_dict())
    assert resumed.clean_fit_steps() == 0
    for plain in ([*over, "objective.cir.hog_basis_fit=stream"], ["experiment=cpu", "objective=clp_hog"]):
        c = load_config(plain)
        assert build_method(c.objective, c.model, s).clean_fit_steps() == 0


def test_clean_frames_give_both_views_their_clean_frame_target():
    """`objective.cir.hog_basis_frames=clean`: the basis is fitted from (streamed `stats`) and the targets are read
    off each clip's clean view — both views' frame t get the projection of clean frame t's HOG, whatever their own
    rotation and colour; the HOG-change term still reads view 1. The method refuses a batch without a clean view,
    and `check` refuses the setting without `data.clean_view` before anything is built."""
    from aupretrain.config import load_config
    from aupretrain.errors import UsageError
    from aupretrain.methods import build_method, method_class
    from aupretrain.objectives import split_views

    over = ["experiment=cpu", "objective=clp_hog_basis", "objective.cir.hog_basis_fit_steps=1",
            "objective.cir.hog_basis_frames=clean", "objective.cir.hog_basis_fit=stream", "objective.cir.hog_basis_whiten=0"]
    with pytest.raises(UsageError, match="data.clean_view=true"):
        method_class("clp").check(load_config(over))
    cfg = load_config([*over, "data.clean_view=true"])
    method_class("clp").check(cfg)
    method = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    b, t, s = 2, 4, int(cfg.data.input_size)
    clips, clean = torch.randn(2 * b, t, 3, s, s), torch.randn(b, t, 3, s, s)
    with pytest.raises(ValueError, match="clean view"):
        method.request({"partner": torch.tensor([1, 0])}, t)
    request = method.request({"partner": torch.tensor([1, 0]), "clean": clean}, t)
    out = split_views(method(clips, **request), b)
    mean, std = method.encoder.mean.view(3), method.encoder.std.view(3)
    hog = lambda x: hog_descriptor(x.flatten(0, 1), mean, std).view(*x.shape[:2], -1)  # noqa: E731
    assert torch.allclose(out["hog_basis"]["stats"], hog(clean), atol=1e-5)
    method.after_step(torch.cat([hog(clean), hog(clean) + 0.1 * torch.randn(b, t, 1764)]))
    out = split_views(method(clips, **request), b)
    target = method.hog_basis.targets(hog(clean))
    assert torch.allclose(out["hog_basis"]["target"], torch.cat([target, target]), atol=1e-4)
    assert torch.allclose(out["hog"]["target"], hog(clips[:b])[:, [0, 3]] - hog(clips[:b])[:, [1, 0]], atol=1e-5)


def test_colour_basis_is_fitted_on_colour_hog_beside_the_grey_one():
    """`objective.cir.hog_basis_colour=true`: the method fits a second basis on the clips' colour HOG (each pixel's
    gradient from its strongest channel) from the same gathered steps, and each frame's target is the grey basis' k
    projections followed by the colour basis' k; the head regresses all 2k; the HOG-change term still reads grey HOG."""
    from aupretrain.config import load_config
    from aupretrain.methods import build_method
    from aupretrain.objectives import build_objective, split_views

    cfg = load_config(["experiment=cpu", "objective=clp_hog_basis", "objective.cir.hog_basis_fit_steps=2",
                       "objective.cir.hog_basis_k=3", "objective.cir.hog_basis_whiten=8",
                       "objective.cir.hog_basis_colour=true"])
    method = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    assert method.hog_basis_head.out_features == 6 and method.clean_fit_steps() == 2
    b, t, s = 2, 4, int(cfg.data.input_size)
    mean, std = method.encoder.mean.view(3), method.encoder.std.view(3)
    hog = lambda x, c=False: hog_descriptor(x.flatten(0, 1), mean, std, colour=c).view(*x.shape[:2], -1)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    fit_clips = [torch.randn(3 * b, t, 3, s, s, generator=g) for _ in range(2)]
    for c in fit_clips:
        inputs = method.clean_fit_inputs(c)
        assert inputs.shape == (3 * b, t, 2 * 1764)
        assert torch.allclose(inputs, torch.cat([hog(c), hog(c, True)], -1), atol=1e-5)
        method.after_step(inputs)
    assert method.hog_basis.is_fitted and method.hog_basis_colour.is_fitted and method.clean_fit_steps() == 0
    reference = WithinClipHOGBasis(1764, 3, 2, whiten=8)  # the colour basis is the plain fit of colour HOG
    for c in fit_clips:
        reference.accumulate(hog(c, True))
    assert torch.allclose(method.hog_basis_colour.basis, reference.basis, atol=1e-4)
    assert not torch.allclose(method.hog_basis.basis, reference.basis, atol=1e-2)
    clips = torch.randn(2 * b, t, 3, s, s)
    out = split_views(method(clips, **method.request({"partner": torch.tensor([1, 0])}, t)), b)
    want = torch.cat([method.hog_basis.targets(hog(clips)), method.hog_basis_colour.targets(hog(clips, True))], -1)
    assert out["hog_basis"]["pred"].shape == (2 * b, t, 6)
    assert torch.allclose(out["hog_basis"]["target"], want, atol=1e-4)
    assert torch.allclose(out["hog"]["target"], hog(clips[:b])[:, [0, 3]] - hog(clips[:b])[:, [1, 0]], atol=1e-5)
    loss, parts = build_objective(cfg.objective).local_loss(out, {})
    assert torch.allclose(parts["hog_basis"], hog_basis_terms(out["hog_basis"])["hog_basis"])
    resumed = build_method(cfg.objective, cfg.model, s)
    resumed.load_state_dict(method.state_dict())
    assert resumed.hog_basis_colour.is_fitted and torch.equal(resumed.hog_basis_colour.basis,
                                                                method.hog_basis_colour.basis)
    plain = load_config(["experiment=cpu", "objective=clp_hog_basis"])
    assert build_method(plain.objective, plain.model, s).hog_basis_colour is None  # off in the preset


@pytest.mark.parametrize("override", ["objective.cir.hog_basis_k=0", "objective.cir.hog_basis_weight=-1",
                                      "objective.cir.hog_basis_fit_steps=0",
                                      "objective.cir.hog_basis_centre=video", "objective.cir.hog_basis_whiten=-1",
                                      "objective.cir.hog_basis_fit=early", "objective.cir.hog_basis_frames=raw",
                                      "objective.cir.hog_basis_colour=maybe", "objective.cir.hog_basis_second_cell=-8"])
def test_hog_basis_knobs_are_checked_before_anything_starts(override):
    from aupretrain.config import load_config
    from aupretrain.errors import UsageError
    from aupretrain.settings import validate

    validate(load_config(["experiment=cpu", "objective=clp_hog_basis"]))
    with pytest.raises(UsageError, match=override.split("=")[0]):
        validate(load_config(["experiment=cpu", "objective=clp_hog_basis", override]))


def test_clip_centred_basis_term_ignores_each_face_offset_and_keeps_its_change():
    """`objective.cir.hog_basis_centre=clip`: a per-clip offset in the head's output or in the target (who the face
    is) costs nothing, a wrong within-clip change costs what it costs in the frame form; the frame form charges the
    offset. The objective reads the knob."""
    from aupretrain.config import load_config
    from aupretrain.objectives import build_objective

    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 4, 3, generator=g)
    offset = 5 * torch.randn(6, 1, 3, generator=g)
    shifted = {"pred": target + offset, "target": target}
    assert float(hog_basis_terms(shifted, "clip")["hog_basis"]) < 1e-10
    assert float(hog_basis_terms(shifted, "frame")["hog_basis"]) == pytest.approx(float(offset.pow(2).mean()), rel=1e-5)
    wrong = torch.zeros_like(target)
    wrong[:, 0] = 1.0  # one frame off by 1 in every direction: centred, (1 - 1/4)² + 3 (1/4)² over 4 frames = 3/16
    assert float(hog_basis_terms({"pred": target + offset + wrong, "target": target}, "clip")["hog_basis"]) \
        == pytest.approx(3 / 16, rel=1e-5)
    assert hog_basis_terms({"pred": target}, "clip") == {}  # before the fit: nothing
    with pytest.raises(ValueError, match="hog_basis_centre"):
        hog_basis_terms(shifted, "video")
    with pytest.raises(ValueError, match=">= 2 frames"):
        hog_basis_terms({"pred": target[:, :1], "target": target[:, :1]}, "clip")
    objective = build_objective(load_config(["experiment=cpu", "objective=clp_hog_basis",
                                             "objective.cir.hog_basis_centre=clip"]).objective)
    assert objective.hog_basis_centre == "clip"


def test_second_cell_basis_is_fitted_on_coarser_hog_beside_the_grey_one():
    """`objective.cir.hog_basis_second_cell=16`: the method fits one more basis on the clips' grey HOG of 16-px
    cells from the same gathered steps; each frame's target is the 8-px basis' k projections followed by the 16-px
    basis' k, the head regresses all 2k, a resumed method loads both fits, and a cell size that does not tile the
    input is refused naming the setting."""
    from aupretrain.config import load_config
    from aupretrain.methods import build_method
    from aupretrain.objectives import split_views

    cfg = load_config(["experiment=cpu", "objective=clp_hog_basis", "objective.cir.hog_basis_fit_steps=2",
                       "objective.cir.hog_basis_k=3", "objective.cir.hog_basis_whiten=8",
                       "objective.cir.hog_basis_second_cell=16"])
    method = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    b, t, s = 2, 4, int(cfg.data.input_size)
    coarse_dim = (s // 16 - 1) ** 2 * 36
    assert method.hog_basis_head.out_features == 6 and method.hog_basis_scale.dim == coarse_dim
    mean, std = method.encoder.mean.view(3), method.encoder.std.view(3)
    hog = lambda x, cell=8: hog_descriptor(x.flatten(0, 1), mean, std, cell).view(*x.shape[:2], -1)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    fit_clips = [torch.randn(3 * b, t, 3, s, s, generator=g) for _ in range(2)]
    for c in fit_clips:
        inputs = method.clean_fit_inputs(c)
        assert inputs.shape == (3 * b, t, 1764 + coarse_dim)
        assert torch.allclose(inputs, torch.cat([hog(c), hog(c, 16)], -1), atol=1e-5)
        method.after_step(inputs)
    assert method.hog_basis.is_fitted and method.hog_basis_scale.is_fitted
    reference = WithinClipHOGBasis(coarse_dim, 3, 2, whiten=8)  # the second basis is the plain fit of 16-px HOG
    for c in fit_clips:
        reference.accumulate(hog(c, 16))
    assert torch.allclose(method.hog_basis_scale.basis, reference.basis, atol=1e-4)
    clips = torch.randn(2 * b, t, 3, s, s)
    out = split_views(method(clips, **method.request({"partner": torch.tensor([1, 0])}, t)), b)
    want = torch.cat([method.hog_basis.targets(hog(clips)), method.hog_basis_scale.targets(hog(clips, 16))], -1)
    assert out["hog_basis"]["pred"].shape == (2 * b, t, 6)
    assert torch.allclose(out["hog_basis"]["target"], want, atol=1e-4)
    resumed = build_method(cfg.objective, cfg.model, s)
    resumed.load_state_dict(method.state_dict())
    assert resumed.hog_basis_scale.is_fitted
    assert torch.equal(resumed.hog_basis_scale.basis, method.hog_basis_scale.basis)
    with pytest.raises(ValueError, match="hog_basis_second_cell"):
        bad = load_config(["experiment=cpu", "objective=clp_hog_basis", "objective.cir.hog_basis_second_cell=24"])
        build_method(bad.objective, bad.model, s)
    from aupretrain.errors import UsageError
    from aupretrain.methods import method_class

    unused = load_config(["experiment=cpu", "objective=clp", "objective.cir.hog_basis_second_cell=16"])
    with pytest.raises(UsageError, match="hog_basis_second_cell=16: .*hog_basis_weight > 0"):
        method_class("clp").check(unused)  # the basis term is off in objective=clp: refused, not silently unused
    method_class("clp").check(cfg)
