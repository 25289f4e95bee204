"""The between-clip share term (`objective.cir.between_clip_weight`; `aupretrain.objectives.identity`): its values,
the code it reads (outside the HOG-basis head's rows) and that, trained, it takes a clip-constant offset (the
identity) out of the code while the code keeps what changes within clips (the AUs)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from aupretrain.methods.clp import outside_rows
from aupretrain.objectives.identity import between_clip_share


def test_share_is_the_between_clip_part_of_each_dimensions_variance():
    """1 for codes constant within each clip, 0 for clips of equal means, the ANOVA ratio per dimension averaged
    over dimensions otherwise; unchanged by scaling a dimension (it reads every dimension standardised); too few
    clips or frames refused."""
    torch.manual_seed(0)
    offsets = torch.randn(6, 1, 3)
    assert float(between_clip_share(offsets.expand(6, 5, 3))) == pytest.approx(1.0, abs=1e-5)
    change = torch.randn(6, 5, 3)
    centred = change - change.mean(1, keepdim=True)
    assert float(between_clip_share(centred)) == pytest.approx(0.0, abs=1e-6)
    x = torch.randn(6, 5, 3)
    total = x.flatten(0, 1).var(0, unbiased=False)
    between = x.mean(1).var(0, unbiased=False)
    assert float(between_clip_share(x)) == pytest.approx(float((between / total).mean()), rel=1e-4)
    scaled = x * torch.tensor([0.1, 1.0, 5.0])
    assert float(between_clip_share(scaled)) == pytest.approx(float(between_clip_share(x)), rel=1e-3)
    for bad in (torch.randn(6, 1, 3), torch.randn(1, 5, 3)):
        with pytest.raises(ValueError, match="clips of >= 2 frames"):
            between_clip_share(bad)


def test_outside_rows_removes_the_row_space_and_passes_no_gradient_to_the_rows():
    torch.manual_seed(0)
    rows = torch.randn(3, 8, requires_grad=True)
    a = torch.randn(4, 2, 8, requires_grad=True)
    out = outside_rows(a, rows)
    assert float((out.detach() @ rows.detach().T).abs().max()) < 1e-5
    inside = a.detach() - out.detach()  # what was taken out lies in the rows' span
    coef = torch.linalg.lstsq(rows.detach().T, inside.reshape(-1, 8).T).solution
    assert torch.allclose(rows.detach().T @ coef, inside.reshape(-1, 8).T, atol=1e-5)
    out.sum().backward()
    assert rows.grad is None and a.grad.abs().sum() > 0


def _train(weight: float) -> tuple[float, float]:
    """A linear encoder of inputs = each clip's face constant (8 values) + 2 'AUs' changing within the clip, trained
    to regress the AUs from 2 of its 6 code dimensions (a head) with `weight` x the share on the other 4 (what the
    head does not read, as the term reads the code outside the basis head's rows). Returns (the share of those 4
    dimensions at the end, the AU regression's error)."""
    g = torch.Generator().manual_seed(0)
    n, t = 32, 6
    face = 3 * torch.randn(n, 1, 8, generator=g)
    au = torch.randn(n, t, 2, generator=g)
    x = torch.cat([face.expand(-1, t, -1), au], -1) @ torch.randn(10, 10, generator=g)
    torch.manual_seed(0)
    encoder, head = nn.Linear(10, 6), nn.Linear(2, 2)
    opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=0.03)
    for _ in range(500):
        opt.zero_grad()
        a = encoder(x)
        share = between_clip_share(a[..., 2:])
        mse = nn.functional.mse_loss(head(a[..., :2]), au)
        (mse + weight * share).backward()
        opt.step()
    return float(share.detach()), float(mse.detach())


def test_trained_the_term_takes_the_clip_constant_out_of_the_unread_dimensions_and_keeps_the_aus():
    """Without the term the 4 dimensions no head reads hold mostly the clips' face constants (share 0.98); with it
    they hold mostly what changes within clips (share 0.14), and the AUs are regressed as well as before."""
    plain_share, plain_mse = _train(0.0)
    clean_share, clean_mse = _train(1.0)
    assert plain_share > 0.9 and plain_mse < 0.01
    assert clean_share < 0.25 and clean_mse < 0.01


def test_clp_method_and_objective_wire_the_term_from_the_config():
    """On in the headline preset, off in the others; at weight 0 no output and no part; with
    `objective.cir.between_clip_weight` > 0 the method hands both
    views' AU codes outside the basis head's rows to CLP's local loss, which adds the weighted share and logs it;
    a negative weight is refused up front."""
    from aupretrain.config import load_config
    from aupretrain.errors import UsageError
    from aupretrain.methods import build_method
    from aupretrain.objectives import build_objective, split_views
    from aupretrain.settings import validate

    b, t = 3, 4
    batch = {"partner": torch.tensor([1, 2, 0]), "identity": torch.tensor([0, 7, 51])}
    preset = load_config(["experiment=cpu", "objective=clp_hog_basis"])
    assert preset.objective.cir.between_clip_weight == 1.0  # on in the headline preset (session 49)
    assert load_config(["experiment=cpu", "objective=clp_hog"]).objective.cir.between_clip_weight == 0.0
    off = load_config(["experiment=cpu", "objective=clp_hog_basis", "objective.cir.between_clip_weight=0"])
    s = int(off.data.input_size)
    method = build_method(off.objective, off.model, s)
    out = split_views(method(torch.randn(2 * b, t, 3, s, s), **method.request(batch, t)), b)
    assert "between_clip" not in out
    cfg = load_config(["experiment=cpu", "objective=clp_hog_basis", "objective.cir.between_clip_weight=3"])
    validate(cfg)
    torch.manual_seed(0)
    method = build_method(cfg.objective, cfg.model, s)
    out = split_views(method(torch.randn(2 * b, t, 3, s, s), **method.request(batch, t)), b)
    code = out["between_clip"]
    assert code.shape == (2 * b, t, cfg.model.au_dim)
    assert float((code @ method.hog_basis_head.weight.detach().T).abs().max()) < 1e-4  # outside the head's rows
    objective = build_objective(cfg.objective)
    loss, parts = objective.local_loss(out, batch)
    assert torch.allclose(parts["between_clip_share"], between_clip_share(code).detach())
    del out["between_clip"]
    base, _ = objective.local_loss(out, batch)
    assert torch.allclose(loss - base, 3 * parts["between_clip_share"], atol=1e-5)
    with pytest.raises(UsageError, match="objective.cir.between_clip_weight"):
        validate(load_config(["experiment=cpu", "objective=clp_hog_basis", "objective.cir.between_clip_weight=-1"]))
