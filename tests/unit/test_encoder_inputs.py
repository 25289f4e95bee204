"""What `aupretrain.load_encoder(...)` takes (a new user's field trial): numpy arrays as well as tensors, one pixel
convention for `enc(crops)` and `enc.encode(frames)` (uint8 0..255 or float in [0, 1]; float 0..255 refused, never
silently wrong), a clear ValueError for a wrong layout, and codes a user can `.numpy()` — while training's
`AUEncoder.forward` keeps its gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import aupretrain
from aupretrain.models.encoder import AUCodeModel, AUEncoder, load_encoder, save_encoder

TINY = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 2, "stem_pool": False, "norm": "group",
        "norm_groups": 4, "au_grid": 2, "au_dim": 12, "id_dim": 6, "proj_hidden": 16, "proj_dim": 8,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def encoder_pt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    save_encoder(AUEncoder(TINY, 32), path)
    return path


@pytest.fixture
def enc(encoder_pt):
    return aupretrain.load_encoder(encoder_pt)


def crops_and_frames(n=3, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    crops = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return crops, crops.permute(0, 2, 3, 1).contiguous()


def test_numpy_inputs_give_the_codes_of_tensors(enc):
    crops, frames = crops_and_frames()
    assert torch.equal(enc(crops.numpy()), enc(crops))
    assert torch.equal(enc.encode(frames.numpy()), enc.encode(frames))
    assert torch.allclose(enc.encode(frames.numpy(), batch_size=2), enc.encode(frames), atol=1e-6)
    # OpenCV's BGR -> RGB flip is a negative-stride view; a read-only array (np.frombuffer) warns in torch
    bgr = frames.flip(-1).numpy()
    assert torch.equal(enc.encode(bgr[..., ::-1]), enc.encode(frames))
    ro = frames.numpy().copy()
    ro.flags.writeable = False
    assert torch.equal(enc.encode(ro), enc.encode(frames))
    assert torch.equal(enc.encoder.preprocess(frames.numpy()), enc.encoder.preprocess(frames))
    # the forward and the frame path agree: crops [N, 3, H, W] and the same pixels as frames [N, H, W, 3]
    assert torch.allclose(enc(crops), enc.encode(frames), atol=1e-6)


def test_float_0_255_is_refused_with_what_was_given_and_what_to_do(enc):
    crops, frames = crops_and_frames()
    for call, x in ((enc, crops.float()), (enc.encode, frames.float()), (enc.encode, frames.numpy().astype(np.float64)),
                    (enc, crops.numpy().astype(np.float32))):
        with pytest.raises(ValueError) as e:
            call(x)
        msg = str(e.value)
        assert all(w in msg for w in ("[0, 1]", "float", "max 255", "divide by 255", "uint8")), msg
    with pytest.raises(ValueError, match="min -0.5"):
        enc(crops.float() / 255 - 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        enc.encode(torch.full((1, 8, 8, 3), float("nan")))
    with pytest.raises(ValueError, match="0..255"):
        enc(crops.long() * 2)  # integers beyond uint8's range


def test_float_in_0_1_is_uint8_over_255_in_forward_and_encode(enc):
    crops, frames = crops_and_frames()
    want_crops, want_frames = enc(crops), enc.encode(frames)
    assert torch.allclose(enc(crops.float() / 255), want_crops, atol=1e-5)
    assert torch.allclose(enc(crops.double() / 255), want_crops, atol=1e-5)
    assert torch.allclose(enc.encode(frames.float() / 255), want_frames, atol=1e-5)
    assert torch.allclose(enc.encode(frames.numpy() / 255.0), want_frames, atol=1e-5)  # numpy float64
    assert torch.allclose(enc(crops.long()), want_crops)  # torch.tensor(list of ints): the 0..255 scale
    # a hair outside [0, 1] (rounding after the user's own resize) is accepted
    assert torch.allclose(enc((crops.float() / 255 * 1.0005).clamp(min=-5e-4)), want_crops, atol=1e-2)


@pytest.mark.parametrize("call, shape, hint", [
    ("encode", (2, 3, 40, 40), "permute(0, 2, 3, 1)"),  # crops NCHW to encode (was: "The size of tensor a ...")
    ("encode", (40, 40, 3), "frame[None]"),  # one frame (was: a permute RuntimeError)
    ("encode", (2, 40, 40), "grey"),  # grey frames (was: a permute RuntimeError)
    ("encode", (2, 40, 40, 4), "x[..., :3]"),  # RGBA
    ("forward", (2, 40, 40, 3), "enc.encode(frames)"),  # frames NHWC to forward
    ("forward", (3, 40, 40), "crop[None]"),  # one crop
])
def test_wrong_layouts_are_one_value_error_naming_layout_and_shape(enc, call, shape, hint):
    fn = enc.encode if call == "encode" else enc
    for x in (torch.zeros(shape, dtype=torch.uint8), np.zeros(shape, np.uint8)):
        with pytest.raises(ValueError) as e:
            fn(x)
        msg = str(e.value)
        want = "[N, H, W, 3]" if call == "encode" else "[N, 3, H, W]"
        assert want in msg and str(shape) in msg and hint in msg, msg


def test_codes_of_a_loaded_encoder_can_be_numpyd_and_training_keeps_its_gradients(enc, encoder_pt):
    crops, frames = crops_and_frames()
    codes = enc(crops)
    assert not codes.requires_grad and codes.dtype == torch.float32
    assert codes.numpy().shape == (3, enc.au_dim)
    assert enc.encode(frames).numpy().shape == (3, enc.au_dim) and not enc.training
    # gradients w.r.t. the input still flow (saliency), and fine-tuning is one call away
    x = (crops.float() / 255).requires_grad_(True)
    enc(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    enc.requires_grad_(True)
    enc(crops).sum().backward()
    assert all(p.grad is not None for m in (enc.encoder.trunk, enc.encoder.au_head) for p in m.parameters())
    assert any(p.requires_grad for p in AUCodeModel(AUEncoder(TINY, 32), trainable=True).parameters())
    # training builds its own AUEncoder and calls forward with gradients: unchanged; the encoder that
    # aupretrain-eval fine-tunes (models.encoder.load_encoder) keeps trainable weights too
    torch.manual_seed(1)
    train_enc = AUEncoder(TINY, 32).train()
    out = train_enc(train_enc.preprocess(frames))
    assert out["a"].requires_grad and out["p"].requires_grad
    assert all(p.requires_grad for p in load_encoder(encoder_pt).parameters())
    assert not train_enc.encode(frames).requires_grad


def test_empty_batches_and_a_bad_batch_size(enc):
    assert enc.encode(np.zeros((0, 20, 20, 3), np.uint8)).shape == (0, enc.au_dim)
    assert enc(torch.zeros(0, 3, 20, 20, dtype=torch.uint8)).shape == (0, enc.au_dim)
    with pytest.raises(ValueError, match="at least 1"):
        enc.encode(np.zeros((1, 20, 20, 3), np.uint8), batch_size=0)
    with pytest.raises(ValueError, match=r"H and W must be at least 1"):
        enc(torch.zeros(1, 3, 0, 20, dtype=torch.uint8))
    with pytest.raises(TypeError, match="tensor or numpy array"):
        enc.encode("frames.mp4")
