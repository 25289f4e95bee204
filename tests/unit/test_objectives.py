import pytest
import torch
import torch.nn.functional as F

from aupretrain.objectives import ranking_loss, tcl_logits, tcl_loss


def embeddings(b=4, t=8, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, t, d, generator=g), dim=-1)


def test_perfectly_separated_embeddings_reach_the_minimum():
    z = F.normalize(torch.eye(64)[: 4 * 8].view(4, 8, 64), dim=-1)  # orthogonal frames, identical views
    loss, parts = tcl_loss(z, z, torch.stack([z, z], 1), 0, temperature=0.05, margin=0.0)
    assert parts["tcl_acc"] == 1.0
    assert loss < 1e-6
    noisy = F.normalize(z + 3.0 * embeddings(d=64), dim=-1)
    assert tcl_loss(noisy, z, torch.stack([noisy, z], 1), 0, temperature=0.05, margin=0.0)[0] > loss + 0.1


def test_margin_raises_the_loss_monotonically():
    z1, z2 = embeddings(seed=1), embeddings(seed=2)
    keys = torch.stack([z1, z2], 1)
    losses = [tcl_loss(z1, z2, keys, 0, margin=m)[0].item() for m in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert all(a < b for a, b in zip(losses, losses[1:])), losses


def test_positive_and_masks():
    z1, z2 = embeddings(b=3, t=4), embeddings(b=3, t=4, seed=5)
    keys = torch.stack([z1, z2], 1)  # [3, 2, 4, d]
    for view in (0, 1):
        for same_view in (True, False):
            logits, target = tcl_logits(z1 if view == 0 else z2, keys, 0, view, 0.1, 0.0, window=1,
                                        same_view_negatives=same_view)
            # anchor (clip 1, frame 2) -> positive is clip 1, other view, frame 2
            a = 1 * 4 + 2
            assert target[a] == (1 * 2 + (1 - view)) * 4 + 2
            row = logits[a].view(3, 2, 4)
            assert torch.isinf(row[1, :, 1]).all() and torch.isinf(row[1, :, 3]).all()  # |t-u| <= window excluded
            assert torch.isinf(row[1, view, 2]) and torch.isfinite(row[1, 1 - view, 2])  # self excluded, positive kept
            assert torch.isfinite(row[1, 1 - view, 0])  # other-view frame outside the window: a negative
            assert torch.isfinite(row[1, view, 0]) == same_view  # same-view frame: a negative only if asked
            assert torch.isfinite(row[[0, 2]]).all()  # other clips: all negatives


def test_offset_selects_this_ranks_clips():
    z1, z2 = embeddings(b=4), embeddings(b=4, seed=3)
    keys = torch.stack([z1, z2], 1)
    full, _ = tcl_loss(z1, z2, keys, 0)
    half_a, _ = tcl_loss(z1[:2], z2[:2], keys, 0)
    half_b, _ = tcl_loss(z1[2:], z2[2:], keys, 2)
    assert torch.allclose(full, (half_a + half_b) / 2, atol=1e-6)


def test_ranking_loss_zero_for_temporally_ordered_embeddings():
    t = torch.arange(8, dtype=torch.float32)
    ang = t * 0.15
    z = torch.stack([torch.cos(ang), torch.sin(ang)], -1)[None]  # similarity decays with time distance
    assert ranking_loss(z, margin=0.0) == 0
    shuffled = z[:, torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    assert ranking_loss(shuffled, margin=0.0) > 0


def test_loss_has_gradient_everywhere():
    z1 = embeddings().requires_grad_(True)
    z2 = embeddings(seed=9).requires_grad_(True)
    loss, _ = tcl_loss(z1, z2, torch.stack([z1, z2], 1), 0, rank_weight=0.5)
    loss.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_objectives_are_built_from_the_config_tree():
    from aupretrain.config import load_config
    from aupretrain.objectives import build_objective

    z1, z2 = embeddings(seed=4), embeddings(seed=6)
    outputs = {"z1": z1, "z2": z2}
    tcl = build_objective(load_config(["objective=tcl", "objective.rank_weight=0.5"]).objective)
    keys = tcl.keys(outputs)
    assert keys.shape == (4, 2, 8, 32)
    loss, parts = tcl(outputs, {})
    assert {"tcl", "tcl_acc", "tcl_clip_acc", "rank"} <= set(parts)
    assert torch.allclose(loss, tcl_loss(z1, z2, keys, 0, rank_weight=0.5)[0])  # global NCE + local ranking term
    simclr = build_objective(load_config(["objective=simclr"]).objective)
    s_loss, s_parts = simclr(outputs, {})
    assert torch.allclose(s_loss, tcl_loss(z1, z2, keys, 0, temperature=0.1, margin=0.0, same_view_negatives=True)[0])
    assert set(s_parts) == {"nt_xent", "acc", "clip_acc"}
    other_clips = build_objective(load_config(["objective=simclr", "objective.window=7"]).objective)
    o_loss, o_parts = other_clips(outputs, {})  # own-clip frames are not negatives: only the positive is left there
    assert torch.allclose(o_loss, tcl_loss(z1, z2, keys, 0, temperature=0.1, margin=0.0, window=7,
                                           same_view_negatives=True)[0])
    assert o_loss < s_loss and o_parts["clip_acc"] == 1.0
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective(type("C", (), {"name": "nope"})())


def brute_force_tcl(z1, z2, keys, offset, temperature, margin, window, weight, same_view=True):
    """The TCL formula written out anchor by anchor (both directions averaged)."""
    b, t, _ = z1.shape
    g = keys.shape[0]
    total = []
    for view, z in ((0, z1), (1, z2)):
        for c in range(b):
            for f in range(t):
                anchor = z[c, f]
                pos = (anchor @ keys[offset + c, 1 - view, f] - margin) / temperature
                terms = [pos.exp()]
                for kc in range(g):
                    for kv in range(2):
                        for kf in range(t):
                            if kc == offset + c and (abs(kf - f) <= window or (kv == view and not same_view)):
                                continue  # self, positive, the window (and the own view): not negatives
                            w = 1.0 if kc == offset + c else weight
                            if w > 0:
                                terms.append(w * (anchor @ keys[kc, kv, kf] / temperature).exp())
                total.append(-(pos.exp() / torch.stack(terms).sum()).log())
    return torch.stack(total).mean()


@pytest.mark.parametrize("same_view", [True, False])
@pytest.mark.parametrize("offset,window,weight", [(0, 0, 1.0), (2, 1, 1.0), (1, 2, 0.3), (3, 0, 0.0), (2, 1, 2.0)])
def test_tcl_matches_the_formula_written_out(offset, window, weight, same_view):
    g = torch.Generator().manual_seed(offset + window)
    keys = F.normalize(torch.randn(5, 2, 4, 8, generator=g, dtype=torch.float64), dim=-1)
    z1, z2 = keys[offset:offset + 2, 0], keys[offset:offset + 2, 1]  # this rank's clips inside the global keys
    loss, _ = tcl_loss(z1, z2, keys, offset, temperature=0.2, margin=0.1, window=window, cross_clip_weight=weight,
                       same_view_negatives=same_view)
    want = brute_force_tcl(z1, z2, keys, offset, 0.2, 0.1, window, weight, same_view)
    assert torch.allclose(loss.double(), want, atol=1e-5), (loss, want)


def test_clip_accuracy_counts_retrieval_inside_the_own_clip():
    """Views identical up to noise: every anchor finds its positive within its clip (clip_acc 1), while
    frames of one clip that all look alike make in-clip retrieval chance-level."""
    z = embeddings(b=3, t=6, d=64, seed=11)
    keys = torch.stack([z, z], 1)
    _, parts = tcl_loss(z, z, keys, 0, margin=0.0)
    assert parts["tcl_clip_acc"] == 1.0 and parts["tcl_acc"] == 1.0
    base = z[:, :1].expand(-1, 6, -1)  # one embedding for every frame of a clip, independent noise per view
    flat = F.normalize(base + 1e-3 * embeddings(b=3, t=6, d=64, seed=12), dim=-1)
    other = F.normalize(base + 1e-3 * embeddings(b=3, t=6, d=64, seed=13), dim=-1)
    _, parts = tcl_loss(flat, other, torch.stack([flat, other], 1), 0, margin=0.0)
    assert parts["tcl_clip_acc"] < 0.6


def test_own_clip_negatives_make_tcl_a_local_term_with_the_global_terms_loss_and_gradient():
    """cross_clip_weight=0: the objective has no global term (the engine gathers nothing, caches no features), and
    its local TCL on this rank's clips alone is the global term of the same anchors against every rank's keys
    (other clips' logits -inf): the same loss, parts and gradient."""
    from omegaconf import OmegaConf

    from aupretrain.objectives import build_objective

    cfg = dict(name="tcl", temperature=0.1, margin=0.2, window=0, symmetric=True, rank_weight=0.3, rank_margin=0.05,
               cross_clip_weight=0.0)
    own = build_objective(OmegaConf.create(cfg))
    assert not own.has_global and build_objective(OmegaConf.create({**cfg, "cross_clip_weight": 0.5})).has_global
    g = torch.Generator().manual_seed(3)
    every = F.normalize(torch.randn(5, 2, 4, 8, generator=g), dim=-1).requires_grad_()  # 5 clips of 2 ranks
    offset, b = 2, 3  # this rank's clips: 2..4
    z1, z2 = every[offset:offset + b, 0], every[offset:offset + b, 1]
    local, parts = own.local_loss({"z1": z1, "z2": z2}, {})
    (grad_local,) = torch.autograd.grad(local, every)
    want, want_parts = tcl_loss(z1, z2, every, offset, 0.1, 0.2, 0, True, 0.3, 0.05, cross_clip_weight=0.0)
    (grad_want,) = torch.autograd.grad(want, every)
    assert torch.allclose(local, want, atol=1e-6), (local, want)
    assert torch.allclose(grad_local, grad_want, atol=1e-6) and grad_local[:offset].abs().sum() == 0
    assert set(parts) == set(want_parts) and all(torch.allclose(parts[k], want_parts[k]) for k in parts)
    assert own({"z1": z1, "z2": z2}, {})[0].item() == pytest.approx(local.item())  # __call__: local only
