"""aupretrain-extract: AU codes per frame of a real-looking face video, with the packer's aligner."""
import csv
import json

import numpy as np
import torch

from aupretrain.cli.extract import main as extract_main
from aupretrain.pack.video import write_video
from aupretrain.models.encoder import AUEncoder, save_encoder_folder

TINY = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 2, "stem_pool": False, "norm": "group",
        "norm_groups": 4, "au_grid": 2, "au_dim": 12, "id_dim": 6, "proj_hidden": 16, "proj_dim": 8,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_extract_gives_one_row_per_frame_with_faces_boxes_and_codes(astronaut_mp4, tmp_path, capsys, caplog):
    path, transforms = astronaut_mp4
    torch.manual_seed(0)
    save_encoder_folder(AUEncoder(TINY, 32), tmp_path / "enc")
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(path.read_bytes())
    write_video(folder / "blank.mp4", [np.full((120, 160, 3), 90, np.uint8)] * 5)  # no face anywhere
    (folder / "broken.mp4").write_bytes(b"not a video")
    assert extract_main([str(folder), str(tmp_path / "au.csv"), "--encoder", str(tmp_path / "enc")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == [str(folder / "broken.mp4")] and summary["frames"] == 64 + 5
    rows = list(csv.DictReader(open(tmp_path / "au.csv")))
    face = [r for r in rows if r["input"].endswith("a.mp4")]
    assert [int(r["frame"]) for r in face] == list(range(64)) and all(r["file"] == "" for r in face)  # a video: no file
    assert float(face[1]["time_s"]) == 0.04
    found = [r for r in face if r["face"] == "1"]
    assert len(found) >= 0.95 * 64  # the packer's detector finds the face in nearly every frame
    for r in found:
        x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 0 < x2 - x1 < 320 and 0 < y2 - y1 < 320 and -60 < x1 < 320 and -60 < y1 < 240
        code = np.array([float(r[f"a{k}"]) for k in range(12)])
        assert np.isfinite(code).all()
    blank = [r for r in rows if r["input"].endswith("blank.mp4")]
    assert len(blank) == 5 and all(r["face"] == "0" and r["a0"] == "" and r["x1"] == "" for r in blank)
    assert "blank.mp4: no face found in any of its 5 frame(s)" in caplog.text  # empty rows, and why


def test_a_folder_of_numbered_frames_is_one_video_and_other_images_are_stills(astronaut_mp4, tmp_path, capsys):
    """A folder of numbered frame images (what ffmpeg writes, BP4D's layout) is one video in natural order, read as
    aupretrain-pack reads it — with tracking and time stamps (each image was its own input, frame 0, time 0, in
    lexicographic order); photos with other names are each their own input, and --stills makes every image so."""
    import cv2

    from aupretrain.pack.video import read_video

    path, _ = astronaut_mp4
    torch.manual_seed(0)
    save_encoder_folder(AUEncoder(TINY, 32), tmp_path / "enc")
    frames = read_video(path)[:12]
    seq, photos = tmp_path / "in" / "seq", tmp_path / "in" / "photos"
    seq.mkdir(parents=True)
    photos.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(seq / f"frame_{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    for name in ("alice.jpg", "bob.jpg", "IMG_1234.jpg", "IMG_1301.jpg"):  # numbered photos are not frames
        cv2.imwrite(str(photos / name), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR))
    enc = ["--encoder", str(tmp_path / "enc")]
    assert extract_main([str(tmp_path / "in"), str(tmp_path / "a.csv"), *enc]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == 5
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    seq_rows = [r for r in rows if r["input"] == str(seq)]
    assert [int(r["frame"]) for r in seq_rows] == list(range(12))  # frame_2 before frame_10
    assert float(seq_rows[10]["time_s"]) == 0.4 and sum(r["face"] == "1" for r in seq_rows) >= 11
    assert {r["input"] for r in rows} == {str(seq), *(str(photos / n) for n in ("alice.jpg", "bob.jpg", "IMG_1234.jpg",
                                                                                "IMG_1301.jpg"))}
    assert extract_main([str(tmp_path / "in"), str(tmp_path / "b.csv"), *enc, "--stills"]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == 16


def test_extract_with_a_head_gives_au_probabilities(astronaut_mp4, tmp_path, capsys, caplog):
    """--head (a folder as aupretrain-eval --save-head writes it): per-AU probabilities equal to the head applied
    to the AU codes of the same frames, and 0/1 columns at the head's own thresholds; a head for another code size
    is one clear error; the columns of an AU the head was not trained for are empty."""
    from aupretrain.eval.head import save_head

    path, _ = astronaut_mp4
    torch.manual_seed(0)
    save_encoder_folder(AUEncoder(TINY, 32), tmp_path / "enc")
    bn, lin = torch.nn.BatchNorm1d(12), torch.nn.Linear(12, 2)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    tensors = {**{f"bn.{k}": v for k, v in bn.state_dict().items()}, **{f"linear.{k}": v for k, v in lin.state_dict().items()}}
    save_head(tmp_path / "head", tensors, {"protocol": "linear", "aus": ["AU1", "AU12"], "thresholds": [0.4, 0.6],
                                           "code_dim": 12})
    enc_args = ["--encoder", str(tmp_path / "enc")]
    assert extract_main([str(path), str(tmp_path / "codes.csv"), *enc_args]) == 0
    assert extract_main([str(path), str(tmp_path / "aus.csv"), *enc_args, "--head", str(tmp_path / "head")]) == 0
    codes = [r for r in csv.DictReader(open(tmp_path / "codes.csv")) if r["face"] == "1"]
    aus = [r for r in csv.DictReader(open(tmp_path / "aus.csv")) if r["face"] == "1"]
    assert len(aus) == len(codes) > 0 and list(aus[0])[9:] == ["AU1", "AU12", "AU1_on", "AU12_on"]
    x = torch.tensor([[float(r[f"a{k}"]) for k in range(12)] for r in codes])
    with torch.no_grad():
        want = torch.sigmoid(lin(bn.eval()(x))).numpy()
    got = np.array([[float(r["AU1"]), float(r["AU12"])] for r in aus])
    assert np.allclose(got, want, atol=1e-4)
    on = np.array([[float(r["AU1_on"]), float(r["AU12_on"])] for r in aus])
    assert (on == (got >= np.array([0.4, 0.6]))).all()
    # a head fitted on data without a positive AU12 frame: its columns empty (they were AU12_on=1 on every frame)
    save_head(tmp_path / "half", tensors, {"protocol": "linear", "aus": ["AU1", "AU12"], "thresholds": [0.4, 0.6],
                                           "code_dim": 12, "aus_trained": ["AU1"]})
    caplog.clear()
    assert extract_main([str(path), str(tmp_path / "half.csv"), *enc_args, "--head", str(tmp_path / "half")]) == 0
    half = [r for r in csv.DictReader(open(tmp_path / "half.csv")) if r["face"] == "1"]
    assert len(half) == len(aus) and all(r["AU12"] == "" and r["AU12_on"] == "" for r in half)
    assert np.allclose([float(r["AU1"]) for r in half], got[:, 0], atol=1e-4)
    assert [float(r["AU1_on"]) for r in half] == on[:, 0].tolist()
    warned = [m for m in caplog.messages if "not trained for AU12" in m]
    assert len(warned) == 1 and str(tmp_path / "half") in warned[0]  # once, naming the head and the AU
    save_head(tmp_path / "wide", tensors, {"protocol": "linear", "aus": ["AU1", "AU12"], "code_dim": 16})
    capsys.readouterr()
    assert extract_main([str(path), str(tmp_path / "x.csv"), *enc_args, "--head", str(tmp_path / "wide")]) == 2
    assert "16-d AU codes" in capsys.readouterr().err


def test_a_frame_folder_with_gaps_keeps_the_file_numbers_and_names_each_file(astronaut_mp4, tmp_path, capsys, caplog):
    """Field trial: 0001.jpg … 0020.jpg less 0005 and 0006 gave frames 0–17 (0007.jpg reported as frame 4 at 0.16 s)
    and no file column. A numbered frame folder's rows carry the number of the file name, time_s = (number − first)
    / fps and the file's name (still images too); an undecodable image keeps its number unused."""
    import cv2

    from aupretrain.pack.video import read_video

    path, _ = astronaut_mp4
    torch.manual_seed(0)
    save_encoder_folder(AUEncoder(TINY, 32), tmp_path / "enc")
    seq = tmp_path / "clip" / "frames"
    seq.mkdir(parents=True)
    for i, f in enumerate(read_video(path)[:20], start=1):
        cv2.imwrite(str(seq / f"{i:04d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    (seq / "0005.jpg").unlink()
    (seq / "0006.jpg").unlink()
    (seq / "0012.jpg").write_bytes(b"cut short")  # cannot be decoded: no row, and 12 stays unused
    still = tmp_path / "clip" / "portrait.png"
    cv2.imwrite(str(still), cv2.cvtColor(read_video(path)[0], cv2.COLOR_RGB2BGR))
    assert extract_main([str(tmp_path / "clip"), str(tmp_path / "a.csv"), "--encoder", str(tmp_path / "enc")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "a.csv")))
    seq_rows = [r for r in rows if r["input"] == str(seq)]
    numbers = [n for n in range(1, 21) if n not in (5, 6, 12)]
    assert [int(r["frame"]) for r in seq_rows] == numbers
    assert [r["file"] for r in seq_rows] == [f"{n:04d}.jpg" for n in numbers]
    assert [float(r["time_s"]) for r in seq_rows] == [round((n - 1) / 25, 4) for n in numbers]  # pack.frames_fps 25
    by_file = {r["file"]: r for r in seq_rows}
    assert by_file["0007.jpg"]["frame"] == "7" and float(by_file["0007.jpg"]["time_s"]) == 0.24
    assert sum(r["face"] == "1" for r in seq_rows) >= 15
    assert "1 of 18 frame images cannot be decoded, each left out (0012.jpg)" in caplog.text
    (row,) = [r for r in rows if r["input"] == str(still)]
    assert row["file"] == "portrait.png" and row["frame"] == "0" and row["face"] == "1"
    # frames named by epoch seconds: rows at once (review: the frame numbers before the first were walked one by one)
    epoch = tmp_path / "epoch"
    epoch.mkdir()
    for i, f in enumerate(read_video(path)[:4]):
        cv2.imwrite(str(epoch / f"{1_700_000_000 + i}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    assert extract_main([str(epoch), str(tmp_path / "e.csv"), "--encoder", str(tmp_path / "enc")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert [int(r["frame"]) for r in rows] == [1_700_000_000 + i for i in range(4)]
    assert [r["file"] for r in rows] == [f"{1_700_000_000 + i}.jpg" for i in range(4)]
    from pathlib import Path

    from aupretrain.eval.extract import is_frame_folder

    assert not is_frame_folder([Path("f_1.jpg"), Path("f_01.jpg"), Path("f_2.jpg")])  # one number twice: no frames
