"""CIR's decoders (`aupretrain.methods.decoders`): the conv decoder D(a, p) and its source-frame and flow forms,
the linear flow basis and its texture basis, and how CLP builds them from `objective.cir`'s knobs."""
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from aupretrain.methods import Decoder


@pytest.mark.parametrize("size", [48, 64, 112])
def test_decoder_output_matches_input_size(size):
    dec = Decoder(16, 8, size, widths=(16, 8), start=7 if size == 112 else 4, norm_groups=4)
    out = dec(torch.randn(2, 16), torch.randn(2, 8))
    assert out.shape == (2, 3, size, size)
    out.abs().mean().backward()
    assert dec.fc.weight.grad.abs().sum() > 0


def test_source_decoder_adds_a_change_to_its_source():
    dec = Decoder(8, 4, 16, widths=(16, 8), start=4, norm_groups=4, source=True)
    a, p, src = torch.randn(2, 8), torch.randn(2, 4), torch.randn(2, 3, 16, 16)
    assert dec(a, p, src).shape == (2, 3, 16, 16)
    torch.nn.init.zeros_(dec.to_rgb.weight)
    torch.nn.init.zeros_(dec.to_rgb.bias)
    assert torch.equal(dec(a, p, src), src)  # no predicted change: the source itself
    with pytest.raises(ValueError, match="source=True"):
        dec(a, p)
    with pytest.raises(ValueError, match="source=False"):
        Decoder(8, 4, 16, widths=(16, 8), start=4, norm_groups=4)(a, p, src)


def test_flow_decoder_warps_its_source():
    """Zero-initialised it copies the source; a constant field moves the image by that many pixels; the AU codes
    reach the field (a gradient flows to a and a_source)."""
    from aupretrain.methods.decoders import warp

    dec = Decoder(8, 4, 16, widths=(16, 8), start=4, norm_groups=4, source=True, flow=True, flow_max=0.2)
    a, a_s, p = torch.randn(2, 8, requires_grad=True), torch.randn(2, 8, requires_grad=True), torch.randn(2, 4)
    src = torch.randn(2, 3, 16, 16)
    assert torch.allclose(dec(a, p, src, a_s), src, atol=1e-5)  # identity warp at initialisation
    # a constant field of 2/16 (x) in normalised units = one pixel of a 16-px image: out(x) = src(x + 1)
    shifted = warp(src, torch.tensor([2 / 16, 0.0]).view(1, 2, 1, 1).expand(2, 2, 16, 16))
    assert torch.allclose(shifted[..., :-1], src[..., 1:], atol=1e-5)
    torch.nn.init.normal_(dec.to_rgb.weight, std=0.1)
    target = torch.roll(src, 1, dims=-1)
    loss = (dec(a, p, src, a_s) - target).abs().mean()
    loss.backward()
    assert a.grad.abs().sum() > 0 and a_s.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="flow=True"):
        dec(a, p, src)
    with pytest.raises(ValueError, match="needs source=True"):
        Decoder(8, 4, 16, widths=(16, 8), start=4, norm_groups=4, flow=True)


def _smooth_faces(n: int, size: int, seed: int) -> torch.Tensor:
    """n random smooth images [n, 3, size, size] (a few Gaussian blobs each): stand-ins for different faces."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    out = torch.zeros(n, 3, size, size)
    for _ in range(4):
        cy, cx = torch.rand(2, n, 1, 1, generator=g) * size
        colour = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
        out += colour * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 8) ** 2)).unsqueeze(1)
    return out


def _fit_flow_decoder(dec, pairs, steps):
    """Train a linear flow decoder with L1 on `pairs(n, seed)` -> (x_s, x_t, a_s, a_t) for `steps` steps of 32; returns
    (its L1 / the copy's L1 on 64 faces and codes never trained on, those x_s, a_s, a_t)."""
    opt = torch.optim.Adam(dec.parameters(), lr=0.02)
    for step in range(steps):
        x, y, a0, a1 = pairs(32, step + 1)
        loss = (dec(a1, None, x, a0) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y, a0, a1 = pairs(64, 10_000)
    with torch.no_grad():
        return float((dec(a1, None, x, a0) - y).abs().mean() / (x - y).abs().mean()), x, a0, a1


def test_linear_flow_decoder_learns_one_displacement_for_every_face():
    """`cir.flow_grid`: trained on faces whose change is a horizontal shift of 2 (a_t - a_s)[0] pixels (unit
    codes), the decoder rebuilds frame t of faces it never saw far below the copy error — one linear map of the code
    change serves every face; equal codes still copy the source exactly (no bias), and the code's norm is not read."""
    from aupretrain.methods.decoders import LinearFlowDecoder, warp

    size, dim = 24, 4
    dec = LinearFlowDecoder(dim, size, grid=4, flow_max=0.3)

    def pairs(n, seed):
        g = torch.Generator().manual_seed(seed)
        x = _smooth_faces(n, size, seed)
        a0, a1 = (F.normalize(torch.randn(n, dim, generator=g), dim=-1) for _ in range(2))  # unit codes
        shift = 2 * (a1[:, 0] - a0[:, 0])  # pixels, in [-4, 4]
        field = torch.stack([2 * shift / size, torch.zeros(n)], 1).view(n, 2, 1, 1).expand(n, 2, size, size)
        return x, warp(x, field), a0, a1

    ratio, x, a0, a1 = _fit_flow_decoder(dec, pairs, 150)
    assert ratio < 0.3
    assert dec.basis.weight.abs().max() > 0.1  # trained: W reads the code change
    with torch.no_grad():
        assert torch.allclose(dec(3 * a0, None, x, a0), x, atol=1e-5)  # the same code (any norm): a copy
        assert torch.allclose(dec(10 * a1, None, x, a0), dec(a1, None, x, a0), atol=1e-5)  # the norm is not read
    with pytest.raises(ValueError, match="source and a_source"):
        dec(a1, None)


def test_texture_basis_draws_what_a_warp_cannot():
    """`cir.texture_grid`: trained on faces whose change is a dark patch drawn with strength (a_t - a_s)[0] (a furrow
    that appears: nothing moves), the flow basis alone stays near the copy error and the flow + texture decoder
    rebuilds frame t of faces it never saw far below it; equal codes still copy the source exactly, and a texture
    grid without a flow basis is refused with the knob's name."""
    from aupretrain.config import load_config
    from aupretrain.methods import build_method
    from aupretrain.methods.decoders import LinearFlowDecoder, build_decoder

    size, dim = 24, 4
    coarse = torch.zeros(1, 3, 8, 8)  # a furrow drawn on an 8 x 8 lattice, seen through bilinear upsampling
    coarse[..., 5, 2:6] = -1.5
    patch = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def pairs(n, seed):
        g = torch.Generator().manual_seed(seed)
        x = _smooth_faces(n, size, seed)
        a0, a1 = (F.normalize(torch.randn(n, dim, generator=g), dim=-1) for _ in range(2))
        return x, x + (a1[:, 0] - a0[:, 0]).view(n, 1, 1, 1) * patch, a0, a1

    def trained(texture_grid):
        torch.manual_seed(0)
        dec = LinearFlowDecoder(dim, size, grid=4, flow_max=0.3, texture_grid=texture_grid)
        ratio, x, a0, _ = _fit_flow_decoder(dec, pairs, 200)
        return dec, ratio, x, a0

    _, flow_only, _, _ = trained(0)
    dec, both, x, a0 = trained(8)  # an 8 x 8 basis, upsampled to the 24-px image
    assert flow_only > 0.6 and both < 0.3, (flow_only, both)
    with torch.no_grad():
        assert torch.allclose(dec(3 * a0, None, x, a0), x, atol=1e-5)  # the same code: a copy, no bias
        # under DeepSpeed's bf16 the weights are cast and the codes are not: it still runs, and returns float32
        out = dec.to(torch.bfloat16)(a0.flip(0), None, x, a0)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    cfg = load_config(["experiment=cpu", "objective=clp_flow", "objective.cir.flow_grid=0",
                       "objective.cir.texture_grid=8"])
    with pytest.raises(ValueError, match="texture_grid"):
        build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    with pytest.raises(ValueError, match="texture_grid"):  # the bench's decoder is built the same way
        build_decoder(OmegaConf.to_container(cfg.model, resolve=True), 24, source=True, flow=True, texture_grid=8)


def test_clp_builds_its_decoder_from_the_flow_knobs():
    """objective=clp with `cir.flow_grid` builds the linear flow decoder (zero or, with `cir.flow_init_std`, random
    start); a flow basis without `cir.flow`, or a flow without `cir.source_frame`, is refused with the knob's name."""
    from aupretrain.config import load_config
    from aupretrain.methods import build_method
    from aupretrain.methods.decoders import LinearFlowDecoder

    def method(*overrides):
        cfg = load_config(["experiment=cpu", "objective=clp", *overrides])
        return build_method(cfg.objective, cfg.model, int(cfg.data.input_size))

    linear = method("objective.cir.source_frame=true", "objective.cir.flow=true", "objective.cir.flow_grid=8")
    assert isinstance(linear.decoder, LinearFlowDecoder) and linear.decoder.grid == 8
    assert linear.decoder.basis.weight.abs().max() == 0  # zero start: the copy of the source
    started = method("objective.cir.source_frame=true", "objective.cir.flow=true", "objective.cir.flow_grid=8",
                     "objective.cir.flow_init_std=0.1").decoder
    assert abs(float(started.basis.weight.detach().std()) - 0.1) < 0.01  # `cir.flow_init_std`: a random start
    a, a_s = torch.randn(2, started.basis.in_features, requires_grad=True), torch.randn(2, started.basis.in_features)
    started(a, None, torch.randn(2, 3, 64, 64), a_s).abs().mean().backward()
    assert a.grad.abs().sum() > 0  # ... so the codes get a gradient from the first step
    assert isinstance(method().decoder, Decoder)
    with pytest.raises(ValueError, match="flow_grid"):
        method("objective.cir.flow_grid=8")
    with pytest.raises(ValueError, match="source_frame"):
        method("objective.cir.flow=true")
