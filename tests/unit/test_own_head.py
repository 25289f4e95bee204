"""The supervised bound's own classifier as a saved AU head: exactly the classifier, scored as it is."""
import numpy as np
import pytest
import torch

from tests.unit.test_au_datasets import TINY, fake_set


def test_supervised_classifier_saved_as_a_linear_head_predicts_exactly_what_it_did(tmp_path):
    from aupretrain.eval.head import load_head
    from aupretrain.methods import SupervisedMethod
    from aupretrain.models.head import load_linear_head, save_head

    torch.manual_seed(0)
    m = SupervisedMethod(TINY, 32, au_classes=3).eval()
    torch.nn.init.normal_(m.classifier.weight)
    save_head(tmp_path / "h", m.au_head(), {"protocol": "linear", "aus": ["AU1", "AU2", "AU4"],
                                            "thresholds": [0.5] * 3, "code_dim": 12})
    frames = torch.randint(0, 255, (7, 40, 40, 3), dtype=torch.uint8)
    codes = m.encoder.encode(frames)
    head, meta = load_linear_head(tmp_path / "h")
    with torch.no_grad():
        assert torch.allclose(head(codes), m.classifier(codes), atol=1e-6, rtol=0)
    predictor = load_head(tmp_path / "h", m.encoder)  # what aupretrain-extract --head applies to a user's video
    assert torch.allclose(predictor(frames), torch.sigmoid(m.classifier(codes)), atol=1e-6)


def test_score_head_reads_the_heads_columns_by_au_name_and_refuses_missing_aus(tmp_path):
    from aupretrain.errors import UsageError
    from aupretrain.eval.head import score_head
    from aupretrain.eval.probe import per_au_f1
    from aupretrain.models.head import linear_head_tensors, save_head

    data, rng = fake_set(n_id=6, per_id=30, aus=2)
    data.aus = ["AU1", "AU2"]
    codes = np.concatenate([data.labels, rng.normal(size=(len(data.labels), 6))], 1).astype(np.float32)  # [N, 8]
    lin = torch.nn.Linear(codes.shape[1], 3)
    torch.nn.init.normal_(lin.weight)
    # the head's columns in another order and one AU more: scored by name
    save_head(tmp_path / "h", linear_head_tensors(lin), {"protocol": "linear", "aus": ["AU4", "AU2", "AU1"],
                                                         "thresholds": [0.5, 0.3, 0.7], "code_dim": codes.shape[1]})
    out = score_head(tmp_path / "h", codes, data)
    with torch.no_grad():
        p = torch.sigmoid(lin(torch.as_tensor(codes, dtype=torch.float32))).numpy()
    want = per_au_f1(data.labels, p[:, [2, 1]], np.array([0.7, 0.3]))
    assert out["f1"] == pytest.approx({"AU1": want[0], "AU2": want[1]}) and out["head"] == str(tmp_path / "h")
    data.aus = ["AU1", "AU6"]
    with pytest.raises(UsageError, match=r"not \['AU6'\]"):
        score_head(tmp_path / "h", codes, data)
    with pytest.raises(ValueError, match="takes 8-d AU codes"):
        score_head(tmp_path / "h", codes[:, :5], data)


def test_eval_refuses_a_head_that_does_not_fit_before_reading_any_frame(tmp_path, capsys):
    from aupretrain.cli.evaluate import main
    from aupretrain.models.encoder import AUEncoder, save_encoder
    from aupretrain.models.head import linear_head_tensors, save_head

    save_encoder(AUEncoder(TINY, 32), tmp_path / "encoder.pt")
    assert main([str(tmp_path / "encoder.pt"), "--head", str(tmp_path / "nothing")]) == 2
    assert str(tmp_path / "nothing") + ": no head.json" in capsys.readouterr().err
    save_head(tmp_path / "h", linear_head_tensors(torch.nn.Linear(5, 2)),
              {"protocol": "linear", "aus": ["AU1", "AU2"], "thresholds": [0.5, 0.5], "code_dim": 5})
    assert main([str(tmp_path / "encoder.pt"), "--head", str(tmp_path / "h")]) == 2
    assert "the head takes 5-d AU codes" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["linear", "finetune"])
def test_a_saved_head_marks_aus_without_a_positive_frame_untrained_and_gives_no_value_for_them(tmp_path, caplog,
                                                                                                protocol):
    """Field trial: evaluation data without a positive frame of AU2 gave a head that listed AU2 with threshold 0.5,
    nothing marking it untrained, and aupretrain-extract wrote AU2_on=1 on every frame. head.json now lists the
    AUs trained (`aus_trained`); the predictor gives NaN (no probability, no decision) for the others; heads
    written before keep every AU; a malformed list is one error naming head.json."""
    import json

    from omegaconf import OmegaConf

    from aupretrain.eval.head import final_finetuned_head, final_linear_head, load_head, save_head, score_head
    from aupretrain.models.encoder import AUEncoder
    from tests.unit.test_au_datasets import EVAL

    torch.manual_seed(0)
    data, rng = fake_set(n_id=6, per_id=10, aus=3)
    data.labels[:, 1] = 0  # AU2: no positive frame
    data.frames = rng.integers(0, 255, (len(data.labels), 32, 32, 3)).astype(np.uint8)
    enc = AUEncoder(TINY, 32).eval()
    cfg = OmegaConf.merge(EVAL, {"select": "none", "probe": {"steps": 20},
                                 "finetune": {"epochs": [1], "lr": [1e-3], "weight_decay": 0.0, "batch_size": 32}})
    codes = enc.encode(torch.from_numpy(data.frames)).numpy()
    tensors, meta = (final_linear_head(codes, data, cfg) if protocol == "linear"
                     else final_finetuned_head(enc, data, cfg))
    assert meta["aus"] == data.aus and meta["aus_trained"] == [data.aus[0], data.aus[2]]
    assert f"no positive (or no negative) frame of {data.aus[1]}: not trained" in caplog.text
    save_head(tmp_path / "h", tensors, meta)
    predictor = load_head(tmp_path / "h", enc)
    assert predictor.untrained == [data.aus[1]]
    p = predictor(torch.from_numpy(data.frames[:7]))
    on = predictor.decide(p)
    assert torch.isnan(p[:, 1]).all() and torch.isnan(on[:, 1]).all()  # no value, not 0 or 1
    assert torch.isfinite(p[:, [0, 2]]).all() and set(on[:, [0, 2]].unique().tolist()) <= {0.0, 1.0}
    assert ((on[:, [0, 2]] == 1) == (p[:, [0, 2]] >= torch.tensor(meta["thresholds"])[[0, 2]])).all()

    if protocol == "linear":  # eval --head: no F1 for an AU the head never learnt, even where the data has positives
        scored = fake_set(n_id=6, per_id=10, aus=3)[0]
        out = score_head(tmp_path / "h", codes, scored)
        assert np.isnan(out["f1"][data.aus[1]]) and out["aus_evaluated"] == [data.aus[0], data.aus[2]]
        assert out["f1_mean"] == pytest.approx(np.mean([out["f1"][data.aus[0]], out["f1"][data.aus[2]]]))
        assert out["aus_untrained"] == [data.aus[1]]

    old = json.loads((tmp_path / "h" / "head.json").read_text())
    del old["aus_trained"]  # a head written before aus_trained existed: every AU trained
    (tmp_path / "h" / "head.json").write_text(json.dumps(old))
    assert load_head(tmp_path / "h", enc).untrained == []
    assert torch.isfinite(load_head(tmp_path / "h", enc)(torch.from_numpy(data.frames[:3]))).all()
    (tmp_path / "h" / "head.json").write_text(json.dumps({**old, "aus_trained": ["AU99"]}))
    with pytest.raises(ValueError, match=r"h/head.json: aus_trained=\['AU99'\] must list names among aus"):
        load_head(tmp_path / "h", enc)
