"""CIR pairing (checked with the synthetic renderer as an oracle decoder), CIR/MoCo/supervised losses, CLP's objectives
(the decoders: test_decoders.py)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from aupretrain.synth.identity import AUS, Pose, sample_identity, sample_scene
from aupretrain.synth.render import render
from aupretrain.methods import CIRRequest, MomentumBranch, cir_forward, select_frames
from aupretrain.objectives import OBJECTIVES, build_objective, cir_terms, moco_loss, supervised_loss

S, T = 48, 4
N_AU = len(AUS)


class RendererOracle:
    """decode(a, p) renders identity argmax(p) with AU intensities a[:N_AU]; encode looks the image up.

    A perfect, person-independent encoder and a perfect decoder: the AU code is the AU vector itself and
    the identity code a one-hot. `leak` > 0 makes the AU code carry the identity too (a person-specific
    encoder) by appending leak * one-hot(identity) to it.
    """

    def __init__(self, identities, leak: float = 0.0):
        self.identities = identities
        self.scene = sample_scene(11)
        self.leak = leak
        self.seen: dict[bytes, tuple[np.ndarray, int]] = {}

    def codes(self, au: np.ndarray, ident: int) -> tuple[torch.Tensor, torch.Tensor]:
        onehot = F.one_hot(torch.tensor(ident), len(self.identities)).float()
        a = torch.cat([torch.tensor(au, dtype=torch.float32), self.leak * onehot])
        return a, onehot

    def image(self, au: np.ndarray, ident: int) -> torch.Tensor:
        img, _ = render(self.identities[ident], au, Pose(), self.scene, seed=0, size=S)
        self.seen[img.tobytes()] = (np.asarray(au, dtype=np.float64), ident)
        return torch.from_numpy(img).permute(2, 0, 1).float()

    def decode(self, a: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.image(ai[:N_AU].numpy().astype(np.float64), int(pi.argmax())) for ai, pi in zip(a, p)])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = [self.codes(*self.seen[xi.permute(1, 2, 0).round().to(torch.uint8).numpy().tobytes()]) for xi in x]
        return torch.stack([a for a, _ in out]), torch.stack([p for _, p in out])


def clips(oracle: RendererOracle, tracks: list[np.ndarray]):
    """Clip i shows identity i with the AU track tracks[i] [T, N_AU]; returns x [B,T,3,S,S], a, p [B,T,D]."""
    x, a, p = [], [], []
    for ident, track in enumerate(tracks):
        x.append(torch.stack([oracle.image(u, ident) for u in track]))
        codes = [oracle.codes(u, ident) for u in track]
        a.append(torch.stack([c[0] for c in codes]))
        p.append(torch.stack([c[1] for c in codes]))
    return torch.stack(x), torch.stack(a), torch.stack(p)


def au_track(seed: int) -> np.ndarray:
    return np.round(np.random.default_rng(seed).uniform(0, 1, (T, N_AU)), 3)


@pytest.fixture(scope="module")
def two_identities():
    return [sample_identity(101), sample_identity(202)]


def test_cir_same_aus_same_code(two_identities):
    """Two identities rendered with the same AU vectors: the cross-identity image "A showing B's AUs" is A's
    own frame, its AU code is B's, its identity code is A's, and the cycle returns B's frame: every CIR term
    is zero for a person-independent encoder and a perfect decoder."""
    oracle = RendererOracle(two_identities)
    shared = au_track(1)
    x, a, p = clips(oracle, [shared, shared])
    assert not torch.equal(x[0], x[1])  # different faces ...
    assert torch.equal(a[0], a[1])  # ... with the same AU code
    req = CIRRequest(partner=torch.tensor([1, 0]), frames=tuple(range(T)), identity_offset=1)
    out = cir_forward(oracle.encode, oracle.decode, x, a, p, req)
    assert torch.equal(out["cross"], x)  # A with B's (identical) AUs is exactly A's frame, and vice versa
    assert torch.equal(out["a_cross"], a[[1, 0]]) and torch.equal(out["p_cross"], p)
    assert torch.equal(out["target_cycle"], x[[1, 0]])
    terms = cir_terms(out)
    assert all(abs(float(v)) < 1e-6 for v in terms.values()), terms


def test_cir_pairs_partner_aus_with_own_identity(two_identities):
    """With different AUs the cross image is A's face with B's AUs (a new image), and the targets are B's AU
    code and A's identity code; an encoder whose AU code carries identity is penalised by L_au."""
    tracks = [au_track(2), au_track(3)]
    oracle = RendererOracle(two_identities)
    x, a, p = clips(oracle, tracks)
    req = CIRRequest(partner=torch.tensor([1, 0]), frames=(0, 3), identity_offset=1)
    out = cir_forward(oracle.encode, oracle.decode, x, a, p, req)
    for t_i, t in enumerate(req.frames):
        want = oracle.image(tracks[1][t], 0)  # identity 0 (A) showing identity 1's AUs at frame t
        assert torch.equal(out["cross"][0, t_i], want)
        assert not torch.equal(want, x[0, t]) and not torch.equal(want, x[1, t])
    assert abs(float(cir_terms(out)["au_consistency"])) < 1e-6 and float(cir_terms(out)["rec_cycle"]) == 0.0

    leaky = RendererOracle(two_identities, leak=1.0)
    x, a, p = clips(leaky, tracks)
    terms = cir_terms(cir_forward(leaky.encode, leaky.decode, x, a, p, req))
    assert float(terms["au_consistency"]) > 0.05  # identity in the AU code is what CIR removes
    assert float(terms["rec_self"]) == 0.0 and abs(float(terms["id_consistency"])) < 1e-6


def test_cir_terms_ignore_clips_without_partner_and_grow_with_error():
    b, f, d = 3, 2, 5
    g = torch.Generator().manual_seed(0)
    img = torch.randn(b, f, 3, 8, 8, generator=g)
    code = torch.randn(b, f, d, generator=g)
    perfect = {"rec_self": img, "target_self": img, "rec_cycle": img, "target_cycle": img, "a_cross": code,
               "a_target": code, "p_cross": code, "p_target": code, "valid": torch.tensor([True, True, False])}
    assert all(abs(float(v)) < 1e-6 for v in cir_terms(perfect).values())
    noisy = dict(perfect, rec_cycle=img + 1.0, rec_self=img + 0.5)
    terms = cir_terms(noisy)
    assert terms["rec_self"] == pytest.approx(0.5) and terms["rec_cycle"] == pytest.approx(2 / 3)  # clip 2 excluded
    bad_third = dict(perfect, a_cross=torch.cat([code[:2], -code[2:]]))
    assert abs(float(cir_terms(bad_third)["au_consistency"])) < 1e-6  # a clip without partner does not count


def test_select_frames():
    assert select_frames(8, 0) == tuple(range(8)) and select_frames(8, 8) == tuple(range(8))
    assert select_frames(8, 2) == (0, 7) and select_frames(8, 1) == (4,) and select_frames(8, 3) == (0, 4, 7)


def test_moco_loss_and_queue():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
    queue = F.normalize(torch.randn(50, 16, generator=g), dim=-1)
    good, acc = moco_loss(q, q, queue, 0.2)
    bad, _ = moco_loss(q, F.normalize(torch.randn(6, 16, generator=g), dim=-1), queue, 0.2)
    assert acc == 1.0 and good < bad

    enc, proj = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    br = MomentumBranch(torch.nn.Module(), torch.nn.Module(), queue_size=5, dim=2, momentum=0.9)
    start = br.negatives()
    assert start.shape == (5, 2) and torch.allclose(start.norm(dim=1), torch.ones(5))  # random unit keys, as MoCo
    br.enqueue(torch.arange(6.0).view(3, 2))
    assert br.negatives()[:3].tolist() == [[0, 1], [2, 3], [4, 5]] and torch.equal(br.negatives()[3:], start[3:])
    br.enqueue(torch.arange(6.0, 12.0).view(3, 2))  # wraps: 5 slots, newest win
    assert br.queue[0].tolist() == [10, 11] and br.queue[4].tolist() == [8, 9] and int(br.queue_ptr) == 1
    br.enqueue(torch.arange(20.0).view(10, 2))  # more keys than slots: the newest 5
    assert sorted(br.queue[:, 0].tolist()) == [10, 12, 14, 16, 18]

    br = MomentumBranch(enc, proj, queue_size=4, dim=4, momentum=0.9)
    assert not any(p.requires_grad for p in br.parameters())
    with torch.no_grad():
        enc.weight.add_(1.0)
    before = br.encoder.weight.clone()
    br.update(enc, proj)
    assert torch.allclose(br.encoder.weight, 0.9 * before + 0.1 * enc.weight)


def test_supervised_loss_prefers_correct_logits():
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    right = supervised_loss((labels * 2 - 1) * 5, labels)
    wrong = supervised_loss((1 - labels * 2) * 5, labels)
    assert right < 0.05 < wrong


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_builds_from_the_config_tree(name):
    from aupretrain.config import load_config

    cfg = load_config([f"objective={name}"])
    obj = build_objective(cfg.objective)
    assert obj.name == name == cfg.objective.name
    OmegaConf.to_container(cfg.objective, resolve=True)


def test_cir_pass_pairs_frames_and_partners():
    """With codes that name their clip and frame, every decoded image and target comes from the right place:
    self = (a_t^A, p_s^A), cross = (a_t^B, p_s^A), cycle = (a(cross), p_s^B), s = (t + offset) mod T."""
    b, t = 3, 5
    clip = torch.arange(b).view(b, 1, 1).expand(b, t, 1).float()
    frame = torch.arange(t).view(1, t, 1).expand(b, t, 1).float()
    a = torch.cat([clip, frame, torch.zeros(b, t, 1)], -1)  # AU code "a[clip, frame]"
    p = torch.cat([clip, frame, torch.ones(b, t, 1)], -1)  # identity code "p[clip, frame]"
    x = torch.cat([clip, frame, 2 * torch.ones(b, t, 1)], -1).view(b, t, 3, 1, 1)  # image "x[clip, frame]"
    # decode writes the (clip, frame) of the AU code and of the identity code into the image; encode reads the
    # AU code's (clip, frame) back as the new AU code (a perfect person-independent encoder)
    decode = lambda ac, pc: torch.cat([ac[:, :2], pc[:, :2]], -1).view(-1, 4, 1, 1)  # noqa: E731
    encode = lambda img: (img.flatten(1)[:, [0, 1, 1]] * torch.tensor([1.0, 1.0, 0.0]), img.flatten(1)[:, 2:])  # noqa: E731
    partner = torch.tensor([2, -1, 0])
    req = CIRRequest(partner=partner, frames=(1, 4), identity_offset=2)
    out = cir_forward(encode, decode, x, a, p, req)
    for i in range(b):
        j = int(partner[i]) if partner[i] >= 0 else i
        for k, f in enumerate(req.frames):
            s = (f + 2) % t
            assert out["rec_self"][i, k].flatten().tolist() == [i, f, i, s]
            assert out["cross"][i, k].flatten().tolist() == [j, f, i, s]
            assert out["a_target"][i, k].tolist() == [j, f, 0] and out["p_target"][i, k].tolist() == [i, s, 1]
            assert out["target_self"][i, k].flatten().tolist() == [i, f, 2]
            assert out["target_cycle"][i, k].flatten().tolist() == [j, f, 2]
            # the cycle decodes the cross image's re-encoded AU code with the partner's identity code
            assert out["rec_cycle"][i, k].flatten().tolist() == [j, f, j, s]
    assert out["valid"].tolist() == [True, False, True]


@pytest.mark.parametrize("flow", [False, True])
def test_cir_pass_gives_the_decoder_frame_s_as_its_source(flow):
    """cir.source_frame: self and cross decode onto A's frame s, the cycle onto the partner's frame s; with cir.flow
    the decoder also reads a_s of the frame it warps (A's for self and cross, the partner's for the cycle)."""
    b, t = 3, 5
    clip = torch.arange(b).view(b, 1, 1).expand(b, t, 1).float()
    frame = torch.arange(t).view(1, t, 1).expand(b, t, 1).float()
    a = torch.cat([clip, frame], -1)
    p = torch.cat([clip, frame], -1)
    x = torch.cat([clip, frame, torch.zeros(b, t, 1)], -1).view(b, t, 3, 1, 1)  # image "x[clip, frame]"
    if flow:  # the last two entries say whose a_s the decoder read
        decode = lambda ac, pc, src, a_src: torch.cat([ac, pc, a_src], -1).view(-1, 6, 1, 1)  # noqa: E731
    else:  # ... whose frame s it read
        decode = lambda ac, pc, src: torch.cat([ac, pc, src.flatten(1)[:, :2]], -1).view(-1, 6, 1, 1)  # noqa: E731
    encode = lambda img: (img.flatten(1)[:, :2], img.flatten(1)[:, 2:4])  # noqa: E731
    partner = torch.tensor([2, -1, 0])
    req = CIRRequest(partner=partner, frames=(1, 4), identity_offset=2, source_frame=True, flow=flow)
    out = cir_forward(encode, decode, x, a, p, req)
    for i in range(b):
        j = int(partner[i]) if partner[i] >= 0 else i
        for k, f in enumerate(req.frames):
            s = (f + 2) % t
            assert out["rec_self"][i, k].flatten().tolist() == [i, f, i, s, i, s]
            assert out["cross"][i, k].flatten().tolist() == [j, f, i, s, i, s]
            assert out["rec_cycle"][i, k].flatten().tolist() == [j, f, j, s, j, s]


def test_rec_copy_is_logged_with_a_source_decoder_and_never_trained():
    """`rec_copy` = |x_s - x_t|_1 (the copy-the-source floor) is a part of the loss report, not of the loss."""
    from aupretrain.objectives.cir import cir_loss

    b, t = 2, 4
    x = torch.randn(b, t, 3, 8, 8)
    a, p = torch.randn(b, t, 6), torch.randn(b, t, 5)
    copy = lambda ac, pc, src: src.clone().requires_grad_(True)  # noqa: E731
    encode = lambda img: (img.flatten(1)[:, :6], img.flatten(1)[:, 6:11])  # noqa: E731
    req = CIRRequest(partner=torch.tensor([1, 0]), frames=(0, 2), identity_offset=1, source_frame=True)
    out = cir_forward(encode, copy, x, a, p, req)
    w = {"rec_self": 1.0, "rec_cycle": 0.0, "au_consistency": 0.0, "id_consistency": 0.0}
    loss, parts = cir_loss(out, w)
    expected = (x[:, [1, 3]] - x[:, [0, 2]]).abs().mean()
    assert torch.allclose(parts["rec_copy"], expected) and torch.allclose(parts["rec_self"], expected)
    assert torch.allclose(loss, expected)  # only rec_self's weight counts
    plain = cir_forward(encode, lambda ac, pc: torch.zeros(ac.shape[0], 3, 8, 8), x, a, p,
                        CIRRequest(partner=torch.tensor([1, 0]), frames=(0, 2)))
    assert "rec_copy" not in cir_loss(plain, w)[1]


def test_rec_blur_compares_blurred_images():
    """`cir.rec_blur`: the blur keeps a flat image and its mean, takes most of a pixel noise away, and every L1
    term (and `rec_copy`) is measured on blurred images."""
    from aupretrain.objectives.cir import gaussian_blur

    flat = torch.full((2, 3, 16, 16), 0.7)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat, atol=1e-6)
    assert gaussian_blur(flat, 0.0) is flat
    noise = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert gaussian_blur(noise, 1.0).abs().mean() < 0.4 * noise.abs().mean()
    b, t = 2, 4
    x = torch.randn(b, t, 3, 16, 16)
    a, p = torch.randn(b, t, 6), torch.randn(b, t, 5)
    copy = lambda ac, pc, src: src  # noqa: E731
    encode = lambda img: (img.flatten(1)[:, :6], img.flatten(1)[:, 6:11])  # noqa: E731
    out = cir_forward(encode, copy, x, a, p, CIRRequest(torch.tensor([1, 0]), (0, 2), 1, source_frame=True))
    sharp, blurred = cir_terms(out), cir_terms(out, blur=1.0)
    want = (gaussian_blur(x[:, [1, 3]], 1.0) - gaussian_blur(x[:, [0, 2]], 1.0)).abs().mean()
    assert torch.allclose(blurred["rec_copy"], want) and torch.allclose(blurred["rec_self"], want)
    assert blurred["rec_cycle"] < 0.6 * sharp["rec_cycle"]


def test_clp_tcl_weight_scales_the_tcl_term_only():
    """`objective.tcl_weight` multiplies CLP's TCL term; the logged `tcl` part and the CIR terms stay as they are."""
    from aupretrain.config import load_config

    torch.manual_seed(0)
    b, d = 3, 8
    feats = {"z1": F.normalize(torch.randn(b, T, d), dim=-1), "z2": F.normalize(torch.randn(b, T, d), dim=-1)}
    full = build_objective(load_config(["objective=clp"]).objective)
    quarter = build_objective(load_config(["objective=clp", "objective.tcl_weight=0.25"]).objective)
    keys = full.keys(feats)
    loss_full, parts_full = full.global_loss(feats, keys, 0)
    loss_q, parts_q = quarter.global_loss(feats, keys, 0)
    assert loss_full.item() > 0
    assert loss_q.item() == pytest.approx(0.25 * loss_full.item(), rel=1e-6)
    assert parts_q["tcl"].item() == pytest.approx(parts_full["tcl"].item(), rel=1e-6)
    b_, f_, s_ = 2, 2, 8  # the CIR (local) terms are not weighted by it
    cir = {"valid": torch.ones(b_), **{k: torch.rand(b_, f_, 3, s_, s_) for k in
                                       ("rec_self", "target_self", "rec_cycle", "target_cycle")},
           **{k: torch.randn(b_, f_, 4) for k in ("a_cross", "a_target", "p_cross", "p_target")}}
    local_full, _ = full.local_loss({"cir": cir, "z1": feats["z1"], "z2": feats["z2"]}, {})
    local_q, _ = quarter.local_loss({"cir": cir, "z1": feats["z1"], "z2": feats["z2"]}, {})
    assert local_full.item() > 0 and local_q.item() == pytest.approx(local_full.item(), rel=1e-6)
    with pytest.raises(ValueError, match="tcl_weight"):
        build_objective(load_config(["objective=clp", "objective.tcl_weight=-1"]).objective)


def test_clp_flow_preset_is_clp_led_by_the_linear_flow_basis():
    """`objective=clp_flow` is CLP (same objective and method) with the measured flow-led settings: the linear flow
    decoder, blurred L1, TCL at a twentieth; the CLP knobs it does not set keep clp.yaml's values."""
    from aupretrain.config import load_config
    from aupretrain.methods import build_method
    from aupretrain.methods.decoders import LinearFlowDecoder

    cfg = load_config(["experiment=cpu", "objective=clp_flow"])
    base = load_config(["experiment=cpu", "objective=clp"]).objective
    obj = build_objective(cfg.objective)
    assert obj.name == "clp" and obj.tcl_weight == 0.05 and obj.rec_blur == 1.0
    assert obj.cir_weights["rec_self"] == obj.cir_weights["rec_cycle"] == 100.0
    assert obj.cir_weights["au_consistency"] == float(base.cir.au_weight)
    assert cfg.objective.temperature == base.temperature and cfg.objective.margin == base.margin
    decoder = build_method(cfg.objective, cfg.model, int(cfg.data.input_size)).decoder
    assert isinstance(decoder, LinearFlowDecoder) and decoder.grid == 16


class _Bf16Engine:
    """The slice of DeepSpeed's engine that `train_step` uses, in DeepSpeed's bf16 mode: the module's weights are
    bf16 and the inputs are cast to it (`bfloat16_enabled`), no autocast."""

    def __init__(self, module):
        self.module, self.device = module.to(torch.bfloat16), torch.device("cpu")
        self.optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def bfloat16_enabled(self):
        return True

    def backward(self, loss, scale_wrt_gas=True):
        loss.backward()

    def step(self):
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("objective", ["clp", "clp_flow", "clp_hog"])
def test_clp_trains_with_bf16_weights(objective):
    """Under DeepSpeed's bf16 the method's weights are bf16; CIR's cycle re-encodes the decoder's output, which may
    come back in fp32 (found on a GPU: "Input type (torch.cuda.FloatTensor) and weight type (CUDABFloat16Type)
    should be the same"). A whole training step runs with bf16 weights, on CPU too, and gives a finite loss."""
    from aupretrain.config import load_config
    from aupretrain.engine.step import train_step
    from aupretrain.methods import build_method

    cfg = load_config(["experiment=cpu", f"objective={objective}", "data.input_size=32"])
    engine = _Bf16Engine(build_method(cfg.objective, cfg.model, 32))
    b, t = 4, 4
    g = torch.Generator().manual_seed(0)
    batch = {"view1": torch.randn(b, t, 3, 32, 32, generator=g), "view2": torch.randn(b, t, 3, 32, 32, generator=g),
             "identity": torch.arange(b), "partner": (torch.arange(b) + 1) % b}
    loss, parts = train_step(engine, build_objective(cfg.objective), [batch], 0)
    assert torch.isfinite(loss.float()) and "rec_cycle" in parts
