"""Real-dataset protocol pieces on small arrays: label files, standard folds, selection on validation only,
the probe on informative and random codes, fine-tuning on tiny data, the saved head."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from aupretrain.errors import UsageError
from aupretrain.eval.au_datasets import AUS, read_intensity_txt, read_occurrence_csv
from aupretrain.eval.baselines import always_positive
from aupretrain.eval.datasets import LabelledFrames
from aupretrain.eval.folds import STANDARD_PARTS, standard_folds, validation_subjects
from aupretrain.eval.report import evaluate_codes




EVAL = OmegaConf.create({"folds": 3, "identity_probe": False, "select": "validation", "validation_fraction": 0.25,
                         "select_steps": [50, 150], "select_thresholds": [0.2, 0.35, 0.5, 0.65, 0.8],
                         "probe": {"steps": 150, "lr": 0.05, "weight_decay": 1e-4, "batch_size": 128}})


def test_occurrence_csv_reads_frame_column_and_the_aus_asked_for(tmp_path):
    p = tmp_path / "F001_T1.csv"
    p.write_text("0,1,2,3,4\n10,1,0,1,9\n11,0,1,0,0\n")  # the real files' header starts "0,1,2,..."
    frames, lab = read_occurrence_csv(p, [1, 4])
    assert frames.tolist() == [10, 11] and lab.tolist() == [[1, 9], [0, 0]]
    with pytest.raises(UsageError, match=r"F001_T1.csv: no column for AU 7"):
        read_occurrence_csv(p, [1, 7])
    p.write_text("Frame,AU01,AU4\n1,1,x\n")
    with pytest.raises(UsageError, match="F001_T1.csv, line 2: unreadable AU occurrence row"):
        read_occurrence_csv(p, [1, 4])
    p.write_text("Frame,AU01,AU4\n1,1,0\n\n2,1,0\n3,1\n")  # a row cut short: its line, not an IndexError
    with pytest.raises(UsageError, match=r"F001_T1.csv, line 5: 2 values, the header has 3 \(a row cut short\)"):
        read_occurrence_csv(p, [1, 4])
    p.write_text("Frame,AU01,AU4\n")
    with pytest.raises(UsageError, match="F001_T1.csv: AU occurrence file has no frames"):
        read_occurrence_csv(p, [1, 4])


def test_label_files_from_real_tools_and_values_outside_the_convention(tmp_path):
    """A byte-order mark (Excel) is read past in BP4D/GFT and DISFA files; an occurrence value other than 0, 1 or 9
    (e.g. -1 for absent) is one error naming the line, not a scikit-learn traceback after alignment; two videos
    of one GFT subject are refused by name, not one of them picked."""
    from aupretrain.eval.au_datasets import gft_sequences

    p = tmp_path / "F001_T1.csv"
    p.write_bytes("\ufeffFrame,1,4\r\n1,1,0\r\n2,9,1\r\n".encode())
    frames, lab = read_occurrence_csv(p, [1, 4])
    assert frames.tolist() == [1, 2] and lab.tolist() == [[1, 0], [9, 1]]
    p.write_text("Frame,1,4\n1,1,0\n2,-1,1\n")
    with pytest.raises(UsageError, match=r"F001_T1.csv, line 3: AU1 is -1; occurrence values are 0 \(absent\), "
                                         r"1 \(present\) or 9"):
        read_occurrence_csv(p, [1, 4])
    t = tmp_path / "SN001_au1.txt"
    t.write_bytes("\ufeff1,0\r\n2,3\r\n".encode())
    assert read_intensity_txt(t).tolist() == [[1, 0], [2, 3]]
    (tmp_path / "gft" / "Videos").mkdir(parents=True)
    (tmp_path / "gft" / "AUCoding").mkdir()
    (tmp_path / "gft" / "AUCoding" / "005.csv").write_text("Frame," + ",".join(str(a) for a in AUS["gft"]) + "\n")
    for ext in (".mp4", ".avi"):
        (tmp_path / "gft" / "Videos" / f"005{ext}").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"005.csv: 2 videos for subject 005 \(005.avi, 005.mp4\)"):
        gft_sequences(tmp_path / "gft")


def test_an_au_with_no_positive_frame_shows_no_f1():
    from aupretrain.eval.report import table

    result = {"f1": {"AU1": 0.5, "AU2": 0.0}, "f1_mean": 0.5, "au_base_rate": {"AU1": 0.2, "AU2": 0.0},
              "aus_evaluated": ["AU1"]}
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(table({"pretrained": result}, ["AU1", "AU2"]))
    text = console.export_text()
    row = next(x for x in text.splitlines() if "AU2" in x)
    assert "–" in row and "no positive frame" in row and "0.0" not in row, text


def test_disfa_intensity_file_errors_name_the_file_and_line(tmp_path, recwarn):
    p = tmp_path / "SN001_au1.txt"
    p.write_text("1,0\n2,3\n\n")
    assert read_intensity_txt(p).tolist() == [[1, 0], [2, 3]]
    for text, said in (("", "SN001_au1.txt: AU label file has no frames"),
                       ("1,0\n2\n", "SN001_au1.txt, line 2: expected 'frame,intensity' (1 values)"),
                       ("1,0\n2,0,5\n", "SN001_au1.txt, line 2: expected 'frame,intensity' (3 values)"),
                       ("1,a\n", "SN001_au1.txt, line 1: expected 'frame,intensity'")):
        p.write_text(text)
        with pytest.raises(UsageError) as e:
            read_intensity_txt(p)
        assert said in str(e.value), str(e.value)
    assert not [w for w in recwarn if "numpy" in str(w.filename)]  # no numpy "empty input file" warning


def test_standard_fold_lists_are_the_literatures_and_disjoint():
    for name, n in (("bp4d", 41), ("disfa", 27)):
        parts = STANDARD_PARTS[name]
        every = [s for p in parts for s in p]
        assert len(every) == len(set(every)) == n
    assert len(AUS["bp4d"]) == 12 and len(AUS["disfa"]) == 8 and len(AUS["gft"]) == 10
    subjects = np.repeat([s for p in STANDARD_PARTS["bp4d"] for s in p], 3)
    masks, source = standard_folds("bp4d", subjects)
    assert "ME-GraphAU" in source and len(masks) == 3
    assert np.array_equal(np.sum(masks, 0), np.ones(len(subjects)))
    for k, m in enumerate(masks):  # fold 1 tests part 3, fold 3 tests part 1
        assert set(subjects[m]) == set(STANDARD_PARTS["bp4d"][2 - k])
        for other in masks[:k]:
            assert not set(subjects[m]) & set(subjects[other])


def test_unknown_subjects_fall_back_to_a_seeded_split(caplog):
    subjects = np.repeat(["F001", "M011", "F007", "X999", "Y123", "Z555"], 4)
    masks, source = standard_folds("bp4d", subjects, 3, seed=5)
    assert source.startswith("seeded") and "standard 3-fold split not usable" in caplog.text
    seen = set()
    for m in masks:
        assert not set(subjects[m]) & seen
        seen |= set(subjects[m])
    assert seen == set(subjects)
    sub, src = standard_folds("disfa", np.repeat(["SN001", "SN013", "SN003"], 2))  # one per part: standard
    assert "ME-GraphAU" in src and [set(np.repeat(["SN001", "SN013", "SN003"], 2)[m]) for m in sub] == \
        [{"SN003"}, {"SN013"}, {"SN001"}]


def fake_set(n_id=9, per_id=60, seed=0, aus=3):
    rng = np.random.default_rng(seed)
    ident = np.repeat(np.arange(n_id), per_id)
    video = ident * 2 + (np.arange(len(ident)) % per_id >= per_id // 2)
    labels = (rng.uniform(size=(len(ident), aus)) < 0.3).astype(np.float32)
    names = [s for p in STANDARD_PARTS["disfa"] for s in p[:n_id // 3]]  # n_id/3 subjects of each part
    return LabelledFrames(np.zeros((len(ident), 4, 4, 3), np.uint8), labels, labels.copy(), ident, video,
                          [f"AU{a}" for a in AUS["disfa"][:aus]], names, dataset="disfa"), rng


def test_selection_never_reads_a_test_fold_index():
    data, rng = fake_set()
    codes = np.concatenate([data.labels * 2 + rng.normal(0, 0.5, data.labels.shape), rng.normal(size=(len(data.labels), 4))], 1)
    masks, _ = standard_folds("disfa", data.subject_names)
    log: list = []
    cfg = OmegaConf.merge(EVAL, {"select_steps": [30, 60]})  # what is read matters here, not convergence
    out = evaluate_codes(codes, data, cfg, folds=masks, selection_log=log)
    stages = {(e["fold"], e["stage"]) for e in log}
    assert stages == {(k, s) for k in range(3) for s in ("select_fit", "select_score", "fit", "predict")}
    for e in log:
        test = set(np.flatnonzero(masks[e["fold"]]))
        idx = set(e["index"].tolist())
        if e["stage"] == "predict":
            assert idx == test
        else:  # choosing steps and thresholds, and the final fit: training folds only
            assert idx and not idx & test, e["stage"]
    for k in range(3):  # validation is carved by subject: no subject both fits and scores the selection
        fit, score = (next(e["index"] for e in log if e["fold"] == k and e["stage"] == s) for s in ("select_fit", "select_score"))
        assert not set(data.identity[fit]) & set(data.identity[score])
        f = out["folds"][k]
        assert f["steps"] in (30, 60) and set(f["thresholds"].values()) <= {0.2, 0.35, 0.5, 0.65, 0.8}
        assert not set(f["validation_subjects"]) & set(f["test_subjects"])
    assert out["select"] == "validation" and 0 <= out["f1_fold_mean"] <= 1


def test_selection_reads_no_test_row_seen_from_the_probe_itself(monkeypatch):
    """Independent of the code's own selection log: spy on the functions that fit the probe and choose thresholds,
    map every row they receive back to its frame, and assert no test-fold frame is fitted or scored on."""
    import aupretrain.eval.report as report

    data, rng = fake_set()
    codes = rng.normal(size=(len(data.labels), 5))  # every row unique: a row's bytes name its frame
    row_of = {codes[i].tobytes(): i for i in range(len(codes))}
    rows = lambda x: {row_of[r.tobytes()] for r in np.asarray(x)}  # noqa: E731
    masks, _ = standard_folds("disfa", data.subject_names)
    calls, probe = [], report.au_probe

    def spy_probe(x_fit, y_fit, x_pred, *a, **k):
        calls.append((rows(x_fit), rows(x_pred)))
        return probe(x_fit, y_fit, x_pred, *a, **k)

    monkeypatch.setattr(report, "au_probe", spy_probe)
    cfg = OmegaConf.merge(EVAL, {"select_steps": [20, 40]})
    report.evaluate_codes(codes, data, cfg, folds=masks)
    assert len(calls) == 3 * (2 + 1)  # per fold: one probe per candidate step count, then the final probe
    for k, test in enumerate(masks):
        test_rows = set(np.flatnonzero(test))
        fold_calls = calls[3 * k:3 * k + 3]
        for fit, pred in fold_calls[:2]:  # selection: fitted and scored on training folds only, disjoint
            assert fit and pred and not (fit | pred) & test_rows and not fit & pred
        fit, pred = fold_calls[2]
        assert not fit & test_rows and pred == test_rows  # the test fold is read once: to predict


def test_best_thresholds_agree_with_scikit_learn():
    from sklearn.metrics import f1_score

    from aupretrain.eval.probe import best_thresholds

    rng = np.random.default_rng(3)
    labels = (rng.random((200, 4)) < [0.1, 0.3, 0.5, 0.0]).astype(np.float32)  # the last AU never occurs
    probs = np.clip(labels * 0.3 + rng.random((200, 4)) * 0.7, 0, 1)
    grid = [0.2, 0.35, 0.5, 0.65, 0.8]
    thr, f1 = best_thresholds(labels, probs, grid)
    for a in range(3):
        ref = [f1_score(labels[:, a], probs[:, a] >= t, zero_division=0) for t in grid]
        assert f1[a] == pytest.approx(max(ref)) and thr[a] == grid[int(np.argmax(ref))]
    assert thr[3] == 0.5 and f1[3] == 0.0  # an AU without a positive keeps 0.5


def test_probe_near_perfect_on_informative_codes_and_chance_on_random():
    data, rng = fake_set()
    person = rng.normal(size=(9, 8))[data.identity]  # identity offsets the probe must see through
    good = np.concatenate([data.labels * 2 + rng.normal(0, 0.3, data.labels.shape), person], 1)
    masks, _ = standard_folds("disfa", data.subject_names)
    r_good = evaluate_codes(good, data, EVAL, folds=masks)
    r_bad = evaluate_codes(rng.normal(size=good.shape), data, EVAL, folds=masks)
    chance = always_positive(data)["f1_mean"]  # ~0.46 at base rate 0.3
    assert r_good["f1_mean"] > 0.95 and min(f["f1_mean"] for f in r_good["folds"]) > 0.9
    assert abs(r_bad["f1_mean"] - chance) < 0.12 and r_bad["f1_mean"] < 0.6


def test_select_none_keeps_the_fixed_protocol():
    data, rng = fake_set()
    codes = rng.normal(size=(len(data.labels), 6))
    cfg = OmegaConf.merge(EVAL, {"select": "none"})
    out = evaluate_codes(codes, data, cfg)
    assert out["select"] == "none" and all(f["steps"] == 150 and set(f["thresholds"].values()) == {0.5}
                                           for f in out["folds"])
    assert OmegaConf.merge(EVAL, {"select": "auto"}).select == "auto"
    from aupretrain.eval.report import select_mode

    assert select_mode(OmegaConf.create({"select": "auto"}), "synthetic") == "none"
    assert select_mode(OmegaConf.create({"select": "auto"}), "bp4d") == "validation"
    with pytest.raises(ValueError, match="needs >= 2 training subjects"):
        validation_subjects(np.zeros(4, int), np.ones(4, bool), 0.25, 0)


TINY = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 2, "stem_pool": False, "norm": "group",
        "norm_groups": 4, "au_grid": 2, "au_dim": 12, "id_dim": 6, "proj_hidden": 16, "proj_dim": 8,
        "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def test_finetune_protocol_runs_on_tiny_data_and_selects_on_validation_only(tmp_path, monkeypatch):
    from aupretrain.eval.finetune import evaluate_finetune
    from aupretrain.eval.head import final_finetuned_head, final_linear_head, load_linear_head, save_head
    from aupretrain.models.encoder import AUEncoder

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data, _ = fake_set(n_id=6, per_id=12, aus=2)
    frames = rng.integers(0, 60, (len(data.labels), 32, 32, 3)).astype(np.uint8)
    frames[data.labels[:, 0] > 0, :16, :16] = 250  # AU1: a bright patch; AU2: a bright lower half
    frames[data.labels[:, 1] > 0, 16:] = 250
    idx = np.arange(len(frames))
    frames[:, 0, 31, 0], frames[:, 0, 31, 1] = idx % 256, idx // 256  # one pixel names each frame (for the spies)
    data.frames = frames
    import aupretrain.eval.finetune as finetune

    seen = []  # (what, frames) of every fit and every prediction, read from the frames the functions receive
    frame_ids = lambda x: set((x[:, 0, 31, 0].astype(int) + 256 * x[:, 0, 31, 1].astype(int)).tolist())  # noqa: E731
    real_train, real_predict = finetune.train, finetune.predict
    monkeypatch.setattr(finetune, "train", lambda enc, x, *a, **k: seen.append(("fit", frame_ids(x))) or real_train(enc, x, *a, **k))
    monkeypatch.setattr(finetune, "predict", lambda m, x, *a, **k: seen.append(("predict", frame_ids(x))) or real_predict(m, x, *a, **k))
    cfg = OmegaConf.merge(EVAL, {"finetune": {"epochs": [1, 3], "lr": [3e-3], "weight_decay": 1e-4, "batch_size": 16}})
    masks, _ = standard_folds("disfa", data.subject_names)
    log: list = []
    enc = AUEncoder(TINY, 32)
    out = evaluate_finetune(enc, data, cfg, folds=masks, selection_log=log)
    assert out["protocol"] == "finetune" and len(out["folds"]) == 3
    assert all(f["epochs"] in (1, 3) and f["lr"] == 3e-3 for f in out["folds"])
    assert {(e["fold"], e["stage"]) for e in log} == {(k, s) for k in range(3)
                                                      for s in ("select_fit", "select_score", "fit", "predict")}
    for e in log:
        test = set(np.flatnonzero(masks[e["fold"]]))
        if e["stage"] == "predict":
            assert set(e["index"].tolist()) == test
        else:  # selection and the final fit: training folds only
            assert e["index"].size and not set(e["index"].tolist()) & test
    tests = [set(np.flatnonzero(m)) for m in masks]
    for k, test in enumerate(tests):  # fold k's calls run up to its one prediction of the test fold
        end = next(i for i, (what, ids) in enumerate(seen) if what == "predict" and ids == test)
        fold, seen = seen[:end], seen[end + 1:]
        assert [w for w, _ in fold].count("fit") == 2  # the selection's fit, then the final fit
        for what, ids in fold:  # fits and validation scoring: frames of the training folds only
            assert ids and not ids & test, (k, what)
    assert not seen
    assert out["f1_mean"] > always_positive(data)["f1_mean"]  # the patches are learnable in a few epochs
    tensors, meta = final_finetuned_head(enc, data, cfg)
    assert meta["protocol"] == "finetune" and "head.weight" in tensors and any(k.startswith("encoder.") for k in tensors)
    codes = enc.encode(torch.from_numpy(frames)).numpy()
    tensors, meta = final_linear_head(codes, data, cfg)
    save_head(tmp_path / "head", tensors, meta)
    probe, meta2 = load_linear_head(tmp_path / "head")
    assert meta2["aus"] == data.aus and meta2["code_dim"] == 12 and len(meta2["thresholds"]) == 2
    assert probe(torch.from_numpy(codes[:5])).shape == (5, 2)


def test_frames_or_videos_without_a_label_file_are_reported_by_name_and_count(tmp_path, caplog):
    """A BP4D frame folder, a DISFA video or a GFT video whose label file is missing (a partial copy) is not
    evaluated, and one warning names it and counts them (it was skipped silently)."""
    import shutil

    from aupretrain.eval.au_datasets import bp4d_sequences, disfa_sequences, gft_sequences
    from tests.fake_au_datasets import write_bp4d, write_disfa, write_gft

    write_bp4d(tmp_path / "bp4d", subjects=("F001", "M011"), tasks=("T1",), n=3)
    (tmp_path / "bp4d" / "AUCoding" / "AU_OCC" / "F001_T1.csv").unlink()
    write_disfa(tmp_path / "disfa", subjects=("SN001", "SN013"), n=3)
    shutil.rmtree(tmp_path / "disfa" / "ActionUnit_Labels" / "SN013")
    write_gft(tmp_path / "gft", subjects=("001A", "002B"), n=3)
    (tmp_path / "gft" / "AUCoding" / "002B.csv").unlink()
    with caplog.at_level("WARNING"):
        got = {"bp4d": bp4d_sequences(tmp_path / "bp4d"), "disfa": disfa_sequences(tmp_path / "disfa"),
               "gft": gft_sequences(tmp_path / "gft")}
    assert {k: [s.subject for s in v] for k, v in got.items()} == {"bp4d": ["M011"], "disfa": ["SN001"],
                                                                    "gft": ["001A"]}
    warned = [r.getMessage() for r in caplog.records if "no label file" in r.getMessage()]
    assert len(warned) == 3 and all(w.startswith("1 frame folder(s) / video(s)") for w in warned), warned
    assert "F001/T1" in warned[0] and "LeftVideoSN013_comp.avi" in warned[1] and "002B.mp4" in warned[2]


def test_label_cells_that_are_not_whole_numbers_and_frames_listed_twice_are_refused_by_line(tmp_path):
    """Field report: 0.6 read as 0 and frame 2.7 as frame 2, silently; two rows of one frame, the last one
    winning. Each is now one error naming the file and line ("1.0" from a spreadsheet still reads as 1)."""
    p = tmp_path / "F001_T1.csv"
    p.write_text("Frame,1,4\n1,1.0,0\n2,0.6,1\n")
    with pytest.raises(UsageError, match=r"F001_T1.csv, line 3: unreadable AU occurrence row \('0.6' is not a whole"):
        read_occurrence_csv(p, [1, 4])
    p.write_text("Frame,1,4\n1,1,0\n2.7,0,1\n")
    with pytest.raises(UsageError, match=r"line 3: unreadable AU occurrence row \('2.7' is not a whole number"):
        read_occurrence_csv(p, [1, 4])
    p.write_text("Frame,1,4\n1,1,0\n2,0,1\n1,0,0\n")
    with pytest.raises(UsageError, match=r"F001_T1.csv, line 4: frame 1 again \(first on line 2\)"):
        read_occurrence_csv(p, [1, 4])
    p.write_text("Frame,1,4\n1,1.0,0\n2,9,1\n")
    assert read_occurrence_csv(p, [1, 4])[1].tolist() == [[1, 0], [9, 1]]
    t = tmp_path / "SN001_au1.txt"
    t.write_text("1,0\n2,2.5\n")
    with pytest.raises(UsageError, match=r"SN001_au1.txt, line 2: expected 'frame,intensity' \('2.5' is not a whole"):
        read_intensity_txt(t)
    t.write_text("1,0\n2,3\n2,1\n")
    with pytest.raises(UsageError, match=r"SN001_au1.txt, line 3: frame 2 again \(first on line 2\)"):
        read_intensity_txt(t)


def test_frame_folders_two_images_of_one_number_a_nested_copy_and_a_name_in_the_wrong_case(tmp_path, caplog):
    """0001.jpg beside 001.jpg: both left out with a warning naming them (which one was coded is unknown); a
    frame folder one level too deep and a folder named in the wrong case get errors that say so."""
    from aupretrain.eval.au_datasets import _frame_files, bp4d_sequences

    f = tmp_path / "frames"
    f.mkdir()
    for name in ("0001.jpg", "001.jpg", "0002.jpg", "3.png", "notes.txt"):
        (f / name).write_bytes(b"x")
    assert [(n, p.name) for n, p in _frame_files(f)] == [(2, "0002.jpg"), (3, "3.png")]
    assert "1 frame number(s) have more than one image (0001.jpg and 001.jpg)" in caplog.text
    root = tmp_path / "bp4d"
    (root / "AUCoding" / "AU_OCC").mkdir(parents=True)
    (root / "AUCoding" / "AU_OCC" / "F001_T1.csv").write_text("Frame," + ",".join(map(str, AUS["bp4d"])) + "\n1" +
                                                             ",0" * len(AUS["bp4d"]) + "\n")
    (root / "Sequences" / "f001" / "T1").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"Sequences/F001/T1: missing frame folder for F001_T1.csv \(there is "
                                         r".*Sequences/f001: names are case-sensitive; rename it 'F001'\)"):
        bp4d_sequences(root)
    (root / "Sequences" / "f001").rename(root / "Sequences" / "F001")
    (root / "Sequences" / "F001" / "T1" / "T1").mkdir()
    (root / "Sequences" / "F001" / "T1" / "T1" / "0001.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"F001/T1: no frames <number>.jpg / .png \(its subfolder T1/ has them"):
        bp4d_sequences(root)


def test_a_labelled_set_too_small_for_its_folds_is_one_line_before_any_probe():
    """Field trial 8: a GFT copy with one label file missing and one subject without a face kept 2 subjects; the
    3-fold protocol with selection on validation subjects ended in a traceback after all the alignment."""
    from aupretrain.eval.run import check_folds

    subjects = np.repeat(np.array(["S001", "S002"]), 20)
    masks, _ = standard_folds("gft", subjects, k=3, seed=0)
    e = OmegaConf.create({"select": "auto", "folds": 3})
    with pytest.raises(UsageError, match=r"gft: 2 subject\(s\) kept with labelled frames and a face \(S001, S002\) "
                                         r"for eval.folds=3 \(2 made\): fold 1 trains on 1 subject\(s\); .* — add "
                                         r"subjects, or set eval.select=none \(fixed probe steps, threshold 0.5\)$"):
        check_folds("gft", subjects, masks, e)
    masks, _ = standard_folds("gft", subjects, k=2, seed=0)
    with pytest.raises(UsageError, match="eval.select=none"):  # 2 folds: each trains on 1, too few to hold one out
        check_folds("gft", subjects, masks, e)
    check_folds("gft", subjects, masks, OmegaConf.create({"select": "none", "folds": 2}))  # fits: no error
    four = np.repeat(np.array(["S001", "S002", "S003", "S004"]), 10)
    masks, _ = standard_folds("gft", four, k=2, seed=0)
    check_folds("gft", four, masks, e)  # 2 folds of 2: each trains on 2
