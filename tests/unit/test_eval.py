import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from aupretrain.eval.datasets import LabelledFrames
from aupretrain.eval.probe import per_au_f1, subject_folds
from aupretrain.eval.report import evaluate_codes, identity_split
from aupretrain.methods import Method
from aupretrain.models.encoder import load_encoder, save_encoder

EVAL = OmegaConf.create({"folds": 3, "identity_probe": True,
                         "probe": {"steps": 200, "lr": 0.01, "weight_decay": 1e-4, "batch_size": 128}})


def fake_set(n_id=6, per_id=120, seed=0):
    rng = np.random.default_rng(seed)
    ident = np.repeat(np.arange(n_id), per_id)
    video = ident * 2 + (np.arange(len(ident)) % per_id >= per_id // 2)
    labels = (rng.uniform(size=(len(ident), 3)) < 0.3).astype(np.float32)
    return LabelledFrames(np.zeros((len(ident), 4, 4, 3), np.uint8), labels, labels.copy(), ident, video,
                          ["AU1", "AU2", "AU4"], [f"id{i}" for i in range(n_id)]), rng


def test_subject_folds_are_disjoint_and_cover_everything():
    ident = np.repeat(np.arange(7), 5)
    folds = subject_folds(ident, 3)
    assert len(folds) == 3 and np.array_equal(np.sum(folds, axis=0), np.ones(35))
    for f in folds:
        assert not set(ident[f]) & set(ident[~f])


def test_probe_recovers_informative_codes_and_not_noise():
    data, rng = fake_set()
    person = rng.normal(size=(6, 16))[data.identity] * 3  # identity offsets the probe must see through
    informative = np.concatenate([data.labels * 2 + rng.normal(0, 0.3, data.labels.shape), person], 1)
    noise = rng.normal(size=informative.shape)
    good = evaluate_codes(informative, data, EVAL)
    bad = evaluate_codes(noise, data, EVAL)
    assert good["f1_mean"] > 0.9 and bad["f1_mean"] < 0.6
    assert good["identity_acc"] > 0.9  # the identity offsets are linearly decodable
    assert set(good["f1"]) == {"AU1", "AU2", "AU4"}


def test_per_au_f1_matches_definition():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], np.float32)
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.4]])
    f = per_au_f1(y, p)  # AU A: tp=1 fp=1 fn=1 -> 0.5; AU B: tp=2 -> 1.0
    assert f == pytest.approx([0.5, 1.0])


def test_identity_split_holds_out_later_videos():
    data, _ = fake_set()
    test = identity_split(data)
    for i in range(6):
        m = data.identity == i
        assert test[m].any() and (~test[m]).any()
        assert len(set(data.video[m & test]) & set(data.video[m & ~test])) == 0


def test_encoder_export_round_trip(tmp_path):
    cfg = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 2, "stem_pool": False,
           "norm": "group", "norm_groups": 4, "au_grid": 2, "au_dim": 12, "id_dim": 6, "proj_hidden": 16,
           "proj_dim": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    model = Method(cfg, 32)
    out = model(torch.randn(2, 3, 3, 32, 32))
    assert out["a"].shape == (2, 3, 12) and out["p"].shape == (2, 3, 6)
    assert torch.allclose(out["z"].norm(dim=-1), torch.ones(2, 3))
    save_encoder(model.encoder, tmp_path / "enc.pt")
    enc = load_encoder(tmp_path / "enc.pt")
    frames = torch.randint(0, 255, (5, 48, 40, 3), dtype=torch.uint8)
    assert torch.allclose(enc.encode(frames), model.encoder.eval().encode(frames), atol=1e-6)
    with pytest.raises(ValueError, match="not an aupretrain encoder"):
        torch.save({"x": 1}, tmp_path / "bad.pt")
        load_encoder(tmp_path / "bad.pt")
    # a module held in bf16 (DeepSpeed's bf16 mode) is written in fp32: encoder.pt is fp32 whatever the precision
    save_encoder(model.encoder.to(torch.bfloat16), tmp_path / "bf16.pt")
    state = torch.load(tmp_path / "bf16.pt", weights_only=True)["state_dict"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}


def test_pretraining_validation_and_test_identities_are_disjoint():
    from aupretrain.config import load_config
    from aupretrain.eval.datasets import check_identity_sets, identity_sets

    for preset in ([], ["experiment=cpu"], ["experiment=quickstart"], ["experiment=smoke"]):
        cfg = load_config(preset)
        sets = identity_sets(cfg)
        assert set(sets) == {"pretraining", "validation", "test"}
        for a in sets:
            for b in sets:
                assert a == b or not set(sets[a]) & set(sets[b]), (preset, a, b)
        check_identity_sets(cfg)
        assert cfg.eval.split == "test" and cfg.eval.first_identity == cfg.eval.splits.test.first_identity
    val = load_config(["eval.split=validation"]).eval
    assert val.first_identity == 100000 and val.seed != load_config([]).eval.seed and "validation" in val.corpus
    with pytest.raises(ValueError, match="overlap: pretraining 0..100000 and validation 100000..100023"):
        check_identity_sets(load_config(["synth.identities=100001"]))
    with pytest.raises(ValueError, match="eval.split='pretraining'"):
        check_identity_sets(load_config(["eval.split=pretraining", "+eval.splits.pretraining={first_identity: 900000, seed: 1}"]))


def test_reference_rows_always_positive_and_hog():
    from aupretrain.eval.baselines import always_positive, hog_features
    from aupretrain.eval.datasets import LabelledFrames

    labels = np.zeros((10, 3), np.float32)
    labels[:5, 0] = 1  # base rate 0.5 -> F1 2/3; AU b 0.1 -> 2/11; AU c never present: not evaluated
    labels[:1, 1] = 1
    frames = np.random.default_rng(0).integers(0, 255, (10, 40, 40, 3), dtype=np.uint8)
    d = LabelledFrames(frames, labels, labels, np.arange(10) // 2, np.arange(10), ["a", "b", "c"], list("abcde"))
    r = always_positive(d)
    assert r["f1"]["a"] == pytest.approx(2 / 3) and r["f1"]["b"] == pytest.approx(2 / 11)
    assert r["f1_mean"] == pytest.approx((2 / 3 + 2 / 11) / 2) and r["aus_evaluated"] == ["a", "b"]
    from aupretrain.eval.run import unscored_as_null

    fold = {"fold": 1, "f1": {"a": 0.5, "b": 0.0, "c": 0.0}, "f1_mean": 0.5, "aus_evaluated": ["a"]}
    js = json.loads(json.dumps(unscored_as_null({"row": {**r, "folds": [fold]}})))  # what eval.json holds
    assert js["row"]["f1"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(2 / 11), "c": None}
    assert js["row"]["folds"][0]["f1"] == {"a": 0.5, "b": None, "c": None}  # b: no positive in this fold
    assert r["f1"]["c"] == 0.0  # the in-memory result is left as it was
    h = hog_features(frames)
    assert h.shape == (10, 1764) and h.dtype == np.float32 and np.isfinite(h).all()
    assert not np.allclose(h[0], h[1])  # different images, different descriptors
    with pytest.raises(ValueError, match="RGB frames"):
        hog_features(frames[..., 0])


def test_video_median_normalisation_cancels_each_persons_offset():
    """eval.normalize=video_median (person-specific normalisation, OpenFace-style): a per-video offset on the
    same dimensions as the AU signal misleads a probe trained on other people; subtracting each video's
    median code removes it, and with it the identity signal."""
    from aupretrain.eval.report import normalize_codes

    data, rng = fake_set(n_id=9)
    offset = rng.normal(0, 4, size=(data.video.max() + 1, 3))[data.video]  # each video its own appearance
    codes = data.labels * 2 + rng.normal(0, 0.2, data.labels.shape) + offset
    norm = normalize_codes(codes, data, "video_median")
    assert np.allclose(normalize_codes(codes - offset, data, "video_median"), norm)  # offsets cancel exactly
    for v in np.unique(data.video):
        assert np.allclose(np.median(norm[data.video == v], axis=0), 0)
    assert normalize_codes(codes, data, "none") is codes
    with pytest.raises(ValueError, match="eval.normalize='zscore'"):
        normalize_codes(codes, data, "zscore")
    plain = evaluate_codes(codes, data, EVAL)
    person = evaluate_codes(codes, data, OmegaConf.merge(EVAL, {"normalize": "video_median"}))
    assert person["f1_mean"] > 0.9 and plain["f1_mean"] < 0.75
    assert person["identity_acc"] < plain["identity_acc"]


def test_normalize_is_refused_where_it_cannot_hold():
    from aupretrain.errors import UsageError
    from aupretrain.eval.run import check_normalize

    e = OmegaConf.create({"normalize": "video_median"})
    check_normalize(e, "linear", None)
    check_normalize(OmegaConf.create({"normalize": "none"}), "finetune", "heads/x")
    with pytest.raises(UsageError, match="applies to the linear protocol"):
        check_normalize(e, "finetune", None)
    with pytest.raises(UsageError, match="--save-head with eval.normalize=video_median"):
        check_normalize(e, "linear", "heads/x")
