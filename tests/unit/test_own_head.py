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
