"""Bad input to the user-facing commands (a new user's trial, session 43): a damaged or foreign encoder file, a video
with no frames, an output folder that is not there, an out-of-range flag, a bad `eval.split`, `--help` of the
trainer — each one clear line naming the file or setting, never a traceback, and no half-written output."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from aupretrain.cli.evaluate import main as eval_main
from aupretrain.cli.extract import main as extract_main
from aupretrain.models.encoder import AUEncoder, load_encoder, save_encoder, save_encoder_folder
from aupretrain.pack.video import write_video

TINY = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 2, "stem_pool": False, "norm": "group",
        "norm_groups": 4, "au_grid": 2, "au_dim": 12, "id_dim": 6, "proj_hidden": 16, "proj_dim": 8,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class Payload:
    """A pickled object whose unpickling would call os.system (never run: the loader refuses it first)."""

    def __reduce__(self):
        import os

        return os.system, ("true",)


@pytest.fixture
def encoder_pt(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "encoder.pt"
    save_encoder(AUEncoder(TINY, 32), path)
    return path


def test_damaged_or_foreign_encoder_files_are_one_value_error_naming_the_file(tmp_path, encoder_pt):
    text = tmp_path / "notes.txt"
    text.write_text("hi\n")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(encoder_pt.read_bytes()[:5000])
    payload = tmp_path / "payload.pt"
    torch.save({"format": "aupretrain-encoder/1", "x": Payload()}, payload)
    export = tmp_path / "export"
    save_encoder_folder(load_encoder(encoder_pt), export)
    (export / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes()[:100])
    other = tmp_path / "other.pt"
    torch.save({"format": "aupretrain-encoder/1", "config": {**TINY, "au_dim": 20, "input_size": 32},
                "state_dict": AUEncoder(TINY, 32).state_dict()}, other)
    cases = {text: "not a readable encoder file", truncated: "not a readable encoder file",
             payload: "refused", export: "model.safetensors: not a readable safetensors file",
             other: "do not fit the encoder"}
    for path, want in cases.items():
        with pytest.raises(ValueError) as e:
            load_encoder(path)
        assert want in str(e.value) and path.name in str(e.value), (path, str(e.value))
    assert load_encoder(encoder_pt).au_dim == 12  # the intact file still loads


def test_eval_and_extract_report_a_damaged_encoder_in_one_line(tmp_path, encoder_pt, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(encoder_pt.read_bytes()[:5000])
    image = tmp_path / "face.png"
    import cv2

    cv2.imwrite(str(image), np.full((64, 64, 3), 120, np.uint8))
    assert eval_main([str(bad), "--no-mlflow", "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "bad.pt: not a readable encoder file" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert extract_main([str(image), str(tmp_path / "o.csv"), "--encoder", str(bad), "--align", "center"]) == 2
    err = capsys.readouterr().err
    assert "bad.pt: not a readable encoder file" in err and not (tmp_path / "o.csv").exists()


def test_extract_skips_a_video_with_no_frames_and_leaves_no_csv_when_nothing_was_read(tmp_path, encoder_pt,
                                                                                      capsys, caplog):
    import cv2

    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64))
    writer.release()  # a valid container holding no frame
    out = tmp_path / "codes.csv"
    assert extract_main([str(empty), str(out), "--encoder", str(encoder_pt), "--align", "center"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] == [str(empty)]
    assert "no input gave a frame" in captured.err and "nothing written" in captured.err
    assert "empty.avi: no decodable frames" in caplog.text
    assert not out.exists() and not (tmp_path / "codes.csv.partial").exists()
    # beside a readable video, the empty one is skipped and the other's rows are written (to a folder not there yet)
    write_video(tmp_path / "ok.mp4", [np.full((48, 48, 3), 100 + 10 * i, np.uint8) for i in range(3)])
    nested = tmp_path / "new" / "folder" / "codes.csv"
    assert extract_main([str(tmp_path), str(nested), "--encoder", str(encoder_pt), "--align", "center"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == [str(empty)] and summary["frames"] == 3 and nested.is_file()


def test_extract_refuses_a_batch_below_one_and_an_output_that_is_a_folder(tmp_path, encoder_pt, capsys):
    image = tmp_path / "face.png"
    import cv2

    cv2.imwrite(str(image), np.full((64, 64, 3), 120, np.uint8))
    with pytest.raises(SystemExit) as e:
        extract_main([str(image), str(tmp_path / "o.csv"), "--encoder", str(encoder_pt), "--batch", "0"])
    assert e.value.code == 2 and "--batch 0" in capsys.readouterr().err
    (tmp_path / "dir.csv").mkdir()
    assert extract_main([str(image), str(tmp_path / "dir.csv"), "--encoder", str(encoder_pt), "--align",
                         "center"]) == 2
    err = capsys.readouterr().err
    assert "dir.csv: is a folder; give the CSV file to write" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("threads", ["0", "-2", "two"])
def test_eval_refuses_threads_below_one_naming_the_flag(encoder_pt, tmp_path, capsys, threads):
    with pytest.raises(SystemExit) as e:
        eval_main([str(encoder_pt), "--no-mlflow", "--out", str(tmp_path / "ev"), f"--threads={threads}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument --threads: '{threads}' is not a whole number >= 1" in err, err
    assert "Traceback" not in err


def test_a_bad_eval_split_names_the_setting_and_its_choices(encoder_pt, tmp_path, capsys):
    assert eval_main([str(encoder_pt), "--no-mlflow", "--out", str(tmp_path / "ev"), "eval.split=tset"]) == 2
    err = capsys.readouterr().err
    assert "eval.split=tset" in err and "validation" in err and "test" in err and "Interpolation" not in err, err


def test_the_trainer_prints_its_help_and_the_config_groups(capsys):
    from aupretrain.train import main as train_main

    assert train_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: aupretrain-train") and "objective=" in out and "clp_hog_basis" in out
    assert "experiment=cpu | quickstart | smoke" in out


@pytest.mark.parametrize("overrides,says", [
    (["optim.name=lars"], "optim.name=lars needs deepspeed=zero0"),
    (["optim.name=lamb", "deepspeed=zero3"], "optim.name=lamb needs deepspeed=zero0"),
    (["objective=moco", "deepspeed=zero0", "deepspeed.bf16.enabled=true"], "objective=moco with deepspeed.bf16/fp16"),
])
def test_check_refuses_what_training_would_refuse(overrides, says, packed, capsys):
    """Field report: `train.py --check` (the Kubernetes entrypoint's pre-flight) passed settings that training
    then refused; it now runs the same method, optimizer and precision checks."""
    from aupretrain.train import main as train_main

    assert train_main(["--check", "experiment=smoke", f"data.shards={packed}"]) == 0
    rc = train_main(["--check", "experiment=smoke", f"data.shards={packed}", *overrides])
    err = capsys.readouterr().err
    assert rc == 2 and says in err and "Traceback" not in err, err


def test_a_pickled_payload_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Touch:
        def __reduce__(self):
            return open, (str(marker), "w")

    path = tmp_path / "enc.pt"
    with open(path, "wb") as f:
        torch.save({"format": "aupretrain-encoder/1", "x": Touch()}, f, pickle_module=pickle)
    with pytest.raises(ValueError, match="refused"):
        load_encoder(path)
    assert not marker.exists()


@pytest.mark.parametrize("override", ["data.augment.shared_geometry=maybe", "objective.cir.flow=no",
                                      "deepspeed.bf16.enabled=1", "model.channels_last=yes"])
def test_a_switch_set_to_anything_but_true_or_false_is_refused(override):
    """Every key that is true/false in the config tree is held to true/false (a string such as `no` would be
    true to Python), SCHEMA or not."""
    from aupretrain.config import load_config
    from aupretrain.errors import UsageError
    from aupretrain.settings import validate

    key = override.split("=")[0]
    with pytest.raises(UsageError, match=f"{key}=.*must be true or false"):
        validate(load_config(["experiment=smoke", "objective=clp_flow", override]))
    validate(load_config(["experiment=smoke", "objective=clp_flow", f"{key}=true"]))  # a real switch passes
