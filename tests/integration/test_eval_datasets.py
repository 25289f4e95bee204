"""BP4D / DISFA / GFT readers on small fake folders in each layout (faces from the synthetic renderer, found
and aligned by the packer's real detector), the aligned-face cache, input errors, and aupretrain-eval end to
end on a fake BP4D folder."""
import json
import os

import numpy as np
import pytest
import torch

from aupretrain.pack.clips import PackSettings
from aupretrain.errors import UsageError
from aupretrain.eval.au_datasets import AUS, load_au_dataset
from tests.fake_au_datasets import write_bp4d, write_disfa, write_gft

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
S = PackSettings(size=48)


@pytest.fixture(scope="module")
def bp4d(tmp_path_factory):
    root = tmp_path_factory.mktemp("bp4d")
    labels = write_bp4d(root, n=10, unknown={("F001", "T1"): [2, 3]})
    return root, labels


def test_bp4d_frames_labels_subjects_unknowns_and_cache(bp4d, tmp_path):
    root, labels = bp4d
    cache = tmp_path / "cache"
    data = load_au_dataset("bp4d", root, S, cache)
    assert data.aus == [f"AU{a}" for a in AUS["bp4d"]] and data.dataset == "bp4d"
    assert data.identity_names == ["F001", "F007", "M011"] and data.frames.shape[1:] == (48, 48, 3)
    assert data.info["no_face"] == 0 and data.info["unknown_label"] == 2  # 9 in AU1: the frame is dropped
    assert len(data.labels) == 3 * 2 * 10 - 2
    for v, name in enumerate(data.video_names):  # each kept frame carries its own row of its own label file
        s, t = name.split("_")
        m = data.video == v
        assert set(data.subject_names[m]) == {s}
        want = labels[(s, t)][data.frame_index[m] - 1]
        assert np.array_equal(data.labels[m], want)
    assert 2 + 1 not in data.frame_index[data.video == data.video_names.index("F001_T1")]  # row 2 had a 9
    files = sorted(cache.glob("bp4d/*.npz"))
    assert len(files) == 6
    mtimes = [f.stat().st_mtime_ns for f in files]
    again = load_au_dataset("bp4d", root, S, cache)  # read back: no detection, nothing rewritten
    assert again.info["cache_hits"] == 6 and [f.stat().st_mtime_ns for f in files] == mtimes
    assert np.array_equal(again.frames, data.frames) and np.array_equal(again.labels, data.labels)
    strided = load_au_dataset("bp4d", root, S, cache, frame_stride=2)  # other settings: other cache files
    assert strided.info["cache_hits"] == 0 and len(list(cache.glob("bp4d/*.npz"))) == 12
    assert set(strided.frame_index.tolist()) <= {1, 3, 5, 7, 9}


def test_disfa_and_gft_layouts(tmp_path):
    inten = write_disfa(tmp_path / "disfa", n=12)
    data = load_au_dataset("disfa", tmp_path / "disfa", S, None)
    assert data.identity_names == ["SN001", "SN003", "SN013"] and len(data.aus) == 8
    assert data.info["no_face"] == 0 and len(data.labels) == 36
    for i, s in enumerate(data.identity_names):
        m = data.identity == i
        rows = data.frame_index[m] - 1  # label files count frames from 1
        assert np.array_equal(data.intensity[m], inten[s][rows])
        assert np.array_equal(data.labels[m], (inten[s][rows] >= 2).astype(np.float32))  # present at >= 2
    labels = write_gft(tmp_path / "gft", n=10)
    g = load_au_dataset("gft", tmp_path / "gft", S, None)
    assert g.identity_names == ["001A", "002B", "003C"] and len(g.aus) == 10 and len(g.labels) == 30
    assert np.array_equal(g.labels[g.identity == 1], labels["002B"][g.frame_index[g.identity == 1] - 1])


def test_inputs_are_checked_with_one_clear_error(tmp_path, caplog):
    root = tmp_path / "disfa"
    write_disfa(root, subjects=("SN001",), n=6)
    (root / "ActionUnit_Labels" / "SN001" / "SN001_au9.txt").unlink()
    with pytest.raises(UsageError, match=r"SN001_au9.txt: missing AU9 label file"):
        load_au_dataset("disfa", root, S, None)
    write_disfa(root, subjects=("SN001",), n=6)
    (root / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi").write_bytes(b"not a video")
    with pytest.raises(UsageError, match=r"LeftVideoSN001_comp.avi: unreadable video"):
        load_au_dataset("disfa", root, S, None)
    with pytest.raises(UsageError, match=r"nowhere: missing BP4D root \(eval.root\) folder"):
        load_au_dataset("bp4d", tmp_path / "nowhere", S, None)
    (tmp_path / "bp4d" / "AUCoding" / "AU_OCC").mkdir(parents=True)
    (tmp_path / "bp4d" / "Sequences").mkdir()
    (tmp_path / "bp4d" / "AUCoding" / "AU_OCC" / "F001_T1.csv").write_text("Frame,1\n1,0\n")
    with pytest.raises(UsageError, match=r"Sequences/F001/T1: missing frame folder for F001_T1.csv"):
        load_au_dataset("bp4d", tmp_path / "bp4d", S, None)
    g = tmp_path / "gft"
    write_gft(g, subjects=("001A",), n=6)
    lines = (g / "AUCoding" / "001A.csv").read_text().splitlines()
    (g / "AUCoding" / "001A.csv").write_text("\n".join(lines + [f"{7 + i}," + ",".join(["0"] * 10) for i in range(3)]))
    data = load_au_dataset("gft", g, S, None)  # 9 labelled frames, 6 in the video: a warning, the common length
    assert len(data.labels) == 6 and "6 frames decoded, 9 labelled; using the first 6" in caplog.text


def test_field_report_inputs_real_copies_have(tmp_path, caplog):
    """From a researcher's field trial: an empty GFT video is refused before any other video is aligned (nothing
    cached), a subject name with brackets is found, a `__MACOSX` folder among DISFA's labels is passed over,
    DISFA's intensity threshold is `eval.au_threshold` (a synthetic 0..1 value refused), a mistyped subject is
    named, and a sequence whose every frame is coded 9 is left out with the reason."""
    g = tmp_path / "gft"
    write_gft(g, subjects=("S[1]", "002B"), n=6)
    (g / "Videos" / "002B.mp4").write_bytes(b"")
    cache = tmp_path / "cache"
    with pytest.raises(UsageError, match=r"002B.mp4: unreadable video \("):
        load_au_dataset("gft", g, S, cache)
    assert not cache.exists() or not any(cache.rglob("*.npz"))  # refused before S[1] was aligned
    assert load_au_dataset("gft", g, S, None, subjects=["S[1]"]).identity_names == ["S[1]"]  # 002B left out: unread
    (g / "Videos" / "002B.mp4").unlink()
    (g / "AUCoding" / "002B.csv").unlink()
    assert load_au_dataset("gft", g, S, None).identity_names == ["S[1]"]
    with pytest.raises(UsageError, match=r"eval.subjects: S1 not in .*gft \(its subjects: S\[1\]\)"):
        load_au_dataset("gft", g, S, None, subjects=["S1"])
    d = tmp_path / "disfa"
    inten = write_disfa(d, subjects=("SN001", "SN002"), n=6)["SN001"]
    (d / "ActionUnit_Labels" / "__MACOSX").mkdir()
    at2 = load_au_dataset("disfa", d, S, None)
    assert "1 folder(s) hold no <subject>_au<k>.txt label files and are passed over: __MACOSX" in caplog.text
    at1 = load_au_dataset("disfa", d, S, None, au_threshold=1)
    m = at1.identity == 0
    assert np.array_equal(at1.labels[m], (inten[at1.frame_index[m] - 1] >= 1).astype(np.float32))
    assert np.array_equal(at2.labels[at2.identity == 0], (inten[at2.frame_index[m] - 1] >= 2).astype(np.float32))
    with pytest.raises(UsageError, match=r"eval.au_threshold=0.5: DISFA codes intensity 0-5"):
        load_au_dataset("disfa", d, S, None, au_threshold=0.5)
    b = tmp_path / "bp4d"
    write_bp4d(b, subjects=("F001", "M011"), tasks=("T1",), n=4)
    occ = b / "AUCoding" / "AU_OCC" / "F001_T1.csv"
    rows = occ.read_text().splitlines()
    occ.write_text("\n".join([rows[0]] + [r.split(",")[0] + ",9" * (len(rows[0].split(",")) - 1) for r in rows[1:]]) + "\n")
    caplog.clear()
    data = load_au_dataset("bp4d", b, S, None, au_threshold=0.5)
    assert data.identity_names == ["M011"]
    assert "F001/T1: left out: 4 labelled frames with a face, each with an evaluated AU coded 9" in caplog.text
    assert "eval.au_threshold=0.5 is not used: BP4D codes AU occurrence" in caplog.text


def test_cli_end_to_end_on_fake_bp4d(bp4d, tmp_path, capsys):
    from aupretrain.cli.evaluate import main
    from aupretrain.models.encoder import AUEncoder, save_encoder

    tiny = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 2, "stem_pool": False,
            "norm": "group", "norm_groups": 4, "au_grid": 2, "au_dim": 12, "id_dim": 6, "proj_hidden": 16,
            "proj_dim": 8, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    import mlflow

    torch.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    save_encoder(AUEncoder(tiny, 48), run / "encoder.pt")
    # the pretraining run as training leaves it: params, its own synthetic evaluation at the last step, tracking.json
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    pre = client.create_run(client.create_experiment("eval-test"), run_name="clp-run").info.run_id
    for k, v in {"objective.name": "clp", "model.name": "resnet_small", "train.steps": 150}.items():
        client.log_param(pre, k, v)
    client.log_metric(pre, "eval/f1_mean", 0.3, step=150)
    client.set_tag(pre, "eval.dataset", "synthetic")
    client.set_terminated(pre)
    (run / "tracking.json").write_text(json.dumps({"uri": uri, "experiment": "eval-test", "run_id": pre}))
    root, _ = bp4d
    argv = [str(run), "dataset=bp4d", f"eval.root={root}", f"eval.cache={tmp_path / 'cache'}", "eval.frame_stride=1",
            "eval.select_steps=[20,40]", "eval.probe.steps=40", "eval.baselines=[always_positive]",
            "--save-head", str(tmp_path / "head"), "--threads", "1"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["dataset"] == "bp4d" and out["protocol"] == "linear"
    summary = json.loads((run / "eval.json").read_text())
    assert summary["select"] == "validation" and "ME-GraphAU" in summary["fold_source"]
    assert summary["subjects"] == ["F001", "F007", "M011"] and summary["data_info"]["unknown_label"] == 2
    r = summary["results"]
    assert set(r) == {"pretrained", "random-init", "always-positive"}
    p = r["pretrained"]
    assert set(p["f1"]) == {f"AU{a}" for a in AUS["bp4d"]} and 0 <= p["f1_mean"] <= 1 and "identity_acc" in p
    assert [f["test_subjects"] for f in p["folds"]] == [["F007"], ["M011"], ["F001"]]
    for f in p["folds"]:  # the validation subject is one of the training folds', never the test subject
        assert f["steps"] in (20, 40) and f["validation_subjects"] and not set(f["validation_subjects"]) & set(f["test_subjects"])
    assert (run / "eval_f1.png").stat().st_size > 0 and (run / "eval_pca.png").stat().st_size > 0
    head = json.loads((tmp_path / "head" / "head.json").read_text())
    assert head["aus"] == [f"AU{a}" for a in AUS["bp4d"]] and head["code_dim"] == 12 and len(head["thresholds"]) == 12
    assert (tmp_path / "head" / "head.safetensors").stat().st_size > 0
    # MLflow: the evaluation is a run of its own nested under the pretraining run, which keeps its own results
    exp = client.get_experiment_by_name("eval-test").experiment_id
    child = [r for r in client.search_runs([exp]) if r.info.run_id != pre]
    assert len(child) == 1 and child[0].info.run_name == "eval-bp4d-linear" and child[0].info.status == "FINISHED"
    c = child[0].data
    assert c.tags["mlflow.parentRunId"] == pre and c.tags["eval.pretraining_run"] == pre
    assert c.tags["eval.dataset"] == "bp4d" and c.tags["eval.protocol"] == "linear"
    assert c.metrics["eval/f1_mean"] == pytest.approx(p["f1_mean"]) and "eval/f1/AU24" in c.metrics
    assert c.params["eval.dataset"] == "bp4d" and "objective.name" not in c.params
    arts = {f.path for f in client.list_artifacts(child[0].info.run_id, "eval")}
    assert {"eval/f1.png", "eval/eval_pca.png", "eval/eval.json"} <= arts
    assert client.get_run(pre).data.metrics["eval/f1_mean"] == 0.3 and "eval/f1/AU24" not in client.get_run(pre).data.metrics
    # logging another dataset into the pretraining run itself is refused before anything is evaluated
    assert main(argv[:3] + ["--mlflow-run", pre, "--threads", "1"]) == 2
    assert "already holds the synthetic / linear evaluation" in capsys.readouterr().err
    # compare: one row per evaluation, the nested one with its pretraining run's objective and steps
    from aupretrain.cli.compare import main as compare

    assert compare(["eval-test", "--tracking-uri", uri, "--json", str(tmp_path / "cmp.json"),
                    "--out", str(tmp_path / "cmp")]) == 0
    rows = {r["dataset"]: r for r in json.loads((tmp_path / "cmp.json").read_text())}
    assert rows["bp4d"]["run"] == "clp-run / eval-bp4d-linear" and rows["bp4d"]["objective"] == "clp"
    assert rows["bp4d"]["steps"] == 150 and rows["bp4d"]["pretraining_run"] == pre
    assert rows["synthetic"]["run"] == "clp-run" and rows["synthetic"]["f1_mean"] == 0.3
    assert main([str(run), "eval=bp4d"]) == 2  # no eval.root: one line naming the key
    assert "eval.root" in capsys.readouterr().err
    assert os.path.exists(run / "encoder.pt")
