"""aupretrain-extract faults from the ft8 field trial: OUT checked before any input is read and never an input, a
failed re-run keeps the earlier CSV, heads refused on another encoder, every image type in folders, a stray image in
a frame folder, --encoder RUN_FOLDER, and a warning when the followed face comes back elsewhere."""
import csv
import json

import numpy as np
import pytest
import torch

from aupretrain.cli.extract import main as extract_main
from aupretrain.models.encoder import AUEncoder, save_encoder, save_encoder_folder
from aupretrain.pack.video import write_video
from tests.integration.test_extract import TINY

CENTER = ["--align", "center"]  # no detector: the checks here are about files, not faces


def _encoder(tmp_path, seed=0, name="enc"):
    torch.manual_seed(seed)
    enc = AUEncoder(TINY, 32).eval()
    save_encoder_folder(enc, tmp_path / name)
    return enc, ["--encoder", str(tmp_path / name)]


def _frames(n=3, seed=0, h=48, w=64):
    return list(np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8))


def _no_input_read(monkeypatch):
    import aupretrain.eval.extract as x

    def boom(*a, **k):
        raise AssertionError("an input was read")
    monkeypatch.setattr(x, "extract", boom)


def test_out_that_is_an_input_is_refused_before_anything_is_read(tmp_path, capsys, monkeypatch):
    """ft8 #1: `extract same.mp4 same.mp4` replaced the video with the CSV. OUT that is the input, or any file read
    as an input of a folder (a still, a frame of a frame folder, a hard link to one), is one line, exit 2."""
    import cv2

    _, enc = _encoder(tmp_path)
    video = tmp_path / "same.mp4"
    write_video(video, _frames())
    before = video.read_bytes()
    _no_input_read(monkeypatch)
    assert extract_main([str(video), str(video), *enc, *CENTER]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is an input" in err and str(video) in err
    assert video.read_bytes() == before and not (tmp_path / "same.mp4.partial").exists()
    folder = tmp_path / "in"
    (folder / "seq").mkdir(parents=True)
    for i, f in enumerate(_frames(4), start=1):
        cv2.imwrite(str(folder / "seq" / f"{i:05d}.png"), f)
    cv2.imwrite(str(folder / "photo.jpg"), _frames(1)[0])
    (tmp_path / "link.png").hardlink_to(folder / "seq" / "00002.png")
    for out in (folder / "photo.jpg", folder / "seq" / "00003.png", tmp_path / "link.png"):
        kept = out.read_bytes()
        assert extract_main([str(folder), str(out), *enc, *CENTER]) == 2
        assert "is an input" in capsys.readouterr().err and out.read_bytes() == kept


def test_a_failed_rerun_keeps_the_earlier_csv(tmp_path, capsys):
    """ft8 #2: a re-run whose inputs all fail deleted the good CSV at OUT while saying it was "not written"."""
    _, enc = _encoder(tmp_path)
    write_video(tmp_path / "good.mp4", _frames())
    (tmp_path / "garbage.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out" / "keep.csv"
    assert extract_main([str(tmp_path / "good.mp4"), str(out), *enc, *CENTER]) == 0
    good = out.read_bytes()
    capsys.readouterr()
    assert extract_main([str(tmp_path / "garbage.mp4"), str(out), *enc, *CENTER]) == 2
    err = capsys.readouterr().err
    assert out.read_bytes() == good and "is kept" in err and not (tmp_path / "out" / "keep.csv.partial").exists()
    assert extract_main([str(tmp_path / "garbage.mp4"), str(tmp_path / "new.csv"), *enc, *CENTER]) == 2
    assert not (tmp_path / "new.csv").exists() and not (tmp_path / "new.csv.partial").exists()


def test_out_folder_or_under_a_file_is_one_line_before_any_input_is_read(tmp_path, capsys, monkeypatch):
    """ft8 #5 / #11: OUT an existing folder was found only after every frame was encoded (and left OUT.partial);
    OUT below a file said "File exists" with exit 1. Both are a path to change: one line, exit 2, nothing read."""
    _, enc = _encoder(tmp_path)
    video = tmp_path / "v.mp4"
    write_video(video, _frames())
    (tmp_path / "out").mkdir()
    _no_input_read(monkeypatch)
    assert extract_main([str(video), str(tmp_path / "out"), *enc, *CENTER]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder" in err and not (tmp_path / "out.partial").exists()
    assert extract_main([str(video), str(video / "x.csv"), *enc, *CENTER]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{video} is a file, not a folder" in err
    assert extract_main([str(video), str(video / "deeper" / "x.csv"), *enc, *CENTER]) == 2
    assert f"{video} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.skipif(not __import__("pathlib").Path("/sys/kernel").is_dir(), reason="needs /sys")
def test_out_in_a_folder_that_cannot_be_written_is_one_line_first(tmp_path, capsys, monkeypatch):
    _, enc = _encoder(tmp_path)
    write_video(tmp_path / "v.mp4", _frames())
    _no_input_read(monkeypatch)
    assert extract_main([str(tmp_path / "v.mp4"), "/sys/kernel/x.csv", *enc, *CENTER]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write /sys/kernel/x.csv" in err


def test_every_image_type_extract_reads_is_an_input_in_folders_too(tmp_path, capsys, caplog):
    """ft8 #9: `photo 1.webp` was read on its own but silently dropped from a folder. .webp, .bmp, .tif are
    inputs in folders, with the same row as alone; other files are counted in one line."""
    import logging

    import cv2

    caplog.set_level(logging.INFO)
    _, enc = _encoder(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = ["a.png", "photo 1.webp", "c.bmp", "d.tif", "e.tiff"]
    for name, img in zip(names, _frames(len(names))):
        assert cv2.imwrite(str(folder / name), img)
    (folder / "notes.gif").write_bytes(b"GIF89a")
    assert extract_main([str(folder), str(tmp_path / "all.csv"), *enc, *CENTER]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == len(names)
    rows = {r["file"]: r for r in csv.DictReader(open(tmp_path / "all.csv"))}
    assert set(rows) == set(names)
    assert "1 file(s) neither a video" in caplog.text and "notes.gif" in caplog.text
    assert extract_main([str(folder / "photo 1.webp"), str(tmp_path / "one.csv"), *enc, *CENTER]) == 0
    (alone,) = csv.DictReader(open(tmp_path / "one.csv"))
    assert alone == rows["photo 1.webp"]  # one reader for an image alone or in a folder


def test_a_stray_image_in_a_frame_folder_does_not_turn_the_frames_into_stills(tmp_path, capsys, caplog):
    """ft8 #10: one cover.jpg beside 00001.jpg … made every frame a still (frame 0, time 0), silently. The numbered
    frames stay one video, the stray image is an input of its own, and one warning names it."""
    import cv2

    _, enc = _encoder(tmp_path)
    seq = tmp_path / "frames"
    seq.mkdir()
    for i, f in enumerate(_frames(11), start=1):
        if i != 4:
            cv2.imwrite(str(seq / f"{i:05d}.jpg"), f)
    cv2.imwrite(str(seq / "cover.jpg"), _frames(1, seed=3)[0])
    assert extract_main([str(seq), str(tmp_path / "a.csv"), *enc, *CENTER]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == 2
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    video = [r for r in rows if r["input"] == str(seq)]
    assert [int(r["frame"]) for r in video] == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    assert float(video[-1]["time_s"]) == 0.4  # (11 - 1) / pack.frames_fps 25
    (cover,) = [r for r in rows if r["input"] == str(seq / "cover.jpg")]
    assert cover["frame"] == "0" and cover["file"] == "cover.jpg"
    (warned,) = [m for m in caplog.messages if "cover.jpg" in m]
    assert str(seq) in warned and "--stills" in warned
    assert extract_main([str(seq), str(tmp_path / "b.csv"), *enc, *CENTER, "--stills"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == 11
    from aupretrain.eval.extract import list_inputs

    (seq / "back.jpg").write_bytes((seq / "cover.jpg").read_bytes())  # two strays for 10 frames: all stills, said
    caplog.clear()
    assert len(list_inputs(seq)) == 12
    (warned,) = [m for m in caplog.messages if "look like one video's frames" in m]
    assert "00001.jpg … 00011.jpg" in warned and "2 other image(s)" in warned


def test_encoder_may_be_a_run_folder_as_eval_and_export_take_it(tmp_path, capsys):
    """ft8 #14: `--encoder runs/clp1` (a run folder with encoder.pt) was diagnosed as a broken export folder."""
    torch.manual_seed(0)
    enc = AUEncoder(TINY, 32).eval()
    (tmp_path / "run").mkdir()
    save_encoder(enc, tmp_path / "run" / "encoder.pt")
    save_encoder_folder(enc, tmp_path / "export")
    write_video(tmp_path / "v.mp4", _frames())
    assert extract_main([str(tmp_path / "v.mp4"), str(tmp_path / "a.csv"), "--encoder", str(tmp_path / "run"),
                         *CENTER]) == 0
    assert extract_main([str(tmp_path / "v.mp4"), str(tmp_path / "b.csv"), "--encoder", str(tmp_path / "export"),
                         *CENTER]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    capsys.readouterr()
    assert extract_main([str(tmp_path / "v.mp4"), str(tmp_path / "c.csv"), "--encoder", str(tmp_path / "unfinished"),
                         *CENTER]) == 2
    assert "a run folder without encoder.pt" in capsys.readouterr().err


def _linear_head(path, meta_extra):
    from aupretrain.eval.head import save_head

    torch.manual_seed(1)
    bn, lin = torch.nn.BatchNorm1d(12), torch.nn.Linear(12, 2)
    tensors = {**{f"bn.{k}": v for k, v in bn.state_dict().items()},
               **{f"linear.{k}": v for k, v in lin.state_dict().items()}}
    save_head(path, tensors, {"protocol": "linear", "aus": ["AU1", "AU12"], "code_dim": 12, "dataset": "gft",
                              **meta_extra})


def test_a_head_is_refused_on_an_encoder_other_than_the_one_it_was_fitted_on(tmp_path, capsys, caplog):
    """ft8 #3: a head fitted on one encoder's codes gave confident nonsense on another of the same code size.
    head.json records the encoder (weight fingerprint), and another encoder is refused in one line naming both;
    the same weights (run's encoder.pt, its export) pass; a head without the record loads with one warning."""
    from omegaconf import OmegaConf

    from aupretrain.eval.head import encoder_record, final_linear_head
    from tests.unit.test_au_datasets import EVAL, fake_set

    enc_a, args_a = _encoder(tmp_path, 0, "a")
    enc_b, args_b = _encoder(tmp_path, 5, "b")
    (tmp_path / "run_a").mkdir()
    save_encoder(enc_a, tmp_path / "run_a" / "encoder.pt")
    write_video(tmp_path / "v.mp4", _frames())
    _linear_head(tmp_path / "head", {"encoder": encoder_record(enc_a, tmp_path / "a")})
    head = ["--head", str(tmp_path / "head")]
    assert extract_main([str(tmp_path / "v.mp4"), str(tmp_path / "x.csv"), *args_b, *head, *CENTER]) == 2
    err = capsys.readouterr().err
    rec = json.loads((tmp_path / "head" / "head.json").read_text())["encoder"]
    assert err.count("\n") == 1 and rec["fingerprint"] in err and str(tmp_path / "a") in err and str(tmp_path / "b") in err
    assert "--save-head" in err and not (tmp_path / "x.csv").exists()
    for args in (args_a, ["--encoder", str(tmp_path / "run_a")]):  # the same weights, either format
        assert extract_main([str(tmp_path / "v.mp4"), str(tmp_path / "y.csv"), *args, *head, *CENTER]) == 0
    assert "does not record the encoder" not in caplog.text
    _linear_head(tmp_path / "old", {})  # saved before heads kept their encoder
    for _ in range(2):
        assert extract_main([str(tmp_path / "v.mp4"), str(tmp_path / "z.csv"), *args_b, "--head",
                             str(tmp_path / "old"), *CENTER]) == 0
    assert len([m for m in caplog.messages if "does not record the encoder" in m]) == 1
    # aupretrain-eval --save-head's linear head records the encoder that gave the codes
    data, _ = fake_set(n_id=6, per_id=6, aus=2)
    codes = np.random.default_rng(0).normal(size=(len(data.labels), 12)).astype(np.float32)
    cfg = OmegaConf.merge(EVAL, {"select": "none", "probe": {"steps": 5}})
    _, meta = final_linear_head(codes, data, cfg, encoder=enc_a, source="runs/a")
    assert meta["encoder"] == {**encoder_record(enc_a), "source": "runs/a"}


def test_a_finetuned_head_says_that_encoder_is_not_used(tmp_path, capsys, caplog):
    """ft8 #3: with a fine-tuned head --encoder was silently ignored (any encoder, byte-identical AU columns)."""
    from aupretrain.eval.head import encoder_record, save_head

    enc_a, args_a = _encoder(tmp_path, 0, "a")
    _, args_b = _encoder(tmp_path, 5, "b")
    tensors = {f"encoder.{k}": v for k, v in enc_a.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in torch.nn.Linear(12, 2).state_dict().items()})
    save_head(tmp_path / "ft", tensors, {"protocol": "finetune", "aus": ["AU1", "AU12"], "code_dim": 12,
                                         "encoder_config": enc_a.config,
                                         "encoder": encoder_record(enc_a, tmp_path / "a")})
    write_video(tmp_path / "v.mp4", _frames())
    assert extract_main([str(tmp_path / "v.mp4"), str(tmp_path / "x.csv"), *args_b, "--head", str(tmp_path / "ft"),
                         *CENTER]) == 0
    (warned,) = [m for m in caplog.messages if "fine-tuned head" in m]
    assert "is not used" in warned and str(tmp_path / "b") in warned and f"fine-tuned from {tmp_path / 'a'}" in warned
    caplog.clear()
    assert extract_main([str(tmp_path / "v.mp4"), str(tmp_path / "y.csv"), *args_a, "--head", str(tmp_path / "ft"),
                         *CENTER]) == 0
    (warned,) = [m for m in caplog.messages if "fine-tuned head" in m]
    assert "is the encoder it was fine-tuned from" in warned


def test_a_face_that_comes_back_elsewhere_is_warned_about(astronaut_mp4, tmp_path, capsys, caplog):
    """ft8 #15: person A on the left, then (after frames without a face) a face on the right: the rows switched
    person silently. One warning names the input and the frame where the followed face came back elsewhere; a face
    that comes back where it was gives none."""
    from aupretrain.pack.video import read_video

    _, enc = _encoder(tmp_path)
    path, _ = astronaut_mp4
    face = read_video(path)[:8]
    grey = np.full((240, 640, 3), 120, np.uint8)

    def placed(f, x):
        c = grey.copy()
        c[:, x:x + 320] = f
        return c
    write_video(tmp_path / "switch.mp4", [placed(f, 0) for f in face[:6]] + [grey] * 3 +
                [placed(f, 320) for f in face[:6]])
    write_video(tmp_path / "back.mp4", [placed(f, 0) for f in face[:6]] + [grey] * 3 + [placed(f, 0) for f in face[:6]])
    assert extract_main([str(tmp_path / "switch.mp4"), str(tmp_path / "s.csv"), *enc]) == 0
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    back = next(r for r in rows[9:] if r["face"] == "1")
    (warned,) = [m for m in caplog.messages if "comes back elsewhere" in m]
    assert str(tmp_path / "switch.mp4") in warned and f"frame {back['frame']}" in warned
    caplog.clear()
    assert extract_main([str(tmp_path / "back.mp4"), str(tmp_path / "b.csv"), *enc]) == 0
    assert sum(r["face"] == "1" for r in csv.DictReader(open(tmp_path / "b.csv"))) >= 10
    assert "comes back elsewhere" not in caplog.text
