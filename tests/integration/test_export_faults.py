"""`aupretrain-export RUN` on a run that is still moving (field trial, session 45), with real DeepSpeed checkpoints:
a running job prunes the chosen checkpoint while it is read (`train.keep_checkpoints`) — the newest whole one is
chosen again; a run continued past its `encoder.pt` (`train.stop_at`) — its newest checkpoint is exported, and said.

The pruning is made deterministic by a hook on the reader every export goes through (`engine.checkpoint.read_meta`,
`full_weights`): it does what the running job does at that moment (a new checkpoint appears, `checkpoint.prune`
removes the older ones) and the real reader goes on, so DeepSpeed meets the vanished folder itself."""
from __future__ import annotations

import json
import shutil
import stat
import sys
from pathlib import Path

import pytest
import torch

from tests.launch import TRAIN, checkpoint_steps, common, launch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def continued(packed, tmp_path_factory):
    """A run that finished at step 2 (encoder.pt, checkpoints every step), then was continued with train.steps=6
    train.stop_at=4: checkpoints step_2..step_4, encoder.pt still of step 2."""
    tmp = tmp_path_factory.mktemp("export_faults")
    run = tmp / "runs" / "S"
    base = common(packed, tmp, **{"run.dir": str(run), "objective": "tcl", "train.eval_at_end": "false",
                                  "tracking.enabled": "false", "train.checkpoint_every": 1,
                                  "train.keep_checkpoints": 3})
    launch([sys.executable, TRAIN, *base, "train.steps=2"], tmp)
    launch([sys.executable, TRAIN, *base, "train.steps=6", "train.stop_at=4"], tmp)
    assert checkpoint_steps(run) == [2, 3, 4]
    assert torch.load(run / "encoder.pt", weights_only=True)["step"] == 2
    return run


def _copy(run, tmp_path):
    dst = tmp_path / "runs" / run.name
    shutil.copytree(run, dst)
    return dst


def _export(argv, capsys):
    from aupretrain.cli.export import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, [x for x in err.splitlines() if x.startswith("aupretrain-export:")]


def _exported_equals(out, ckpt):
    """The export holds the fp32 encoder of checkpoint `ckpt` (DeepSpeed's gather)."""
    from safetensors.torch import load_file

    from aupretrain.engine.checkpoint import full_weights

    master = full_weights(ckpt)
    got = load_file(out / "model.safetensors")
    weights = {k: v for k, v in got.items() if not k.endswith(("mean", "std"))}
    return bool(weights) and all(torch.equal(v, master[f"encoder.{k}"]) for k, v in weights.items())


def test_a_checkpoint_pruned_while_it_is_read_is_chosen_again(continued, tmp_path, capsys, monkeypatch):
    """Was: exit 2, `Directory '.../step_3' doesn't exist` (2 of 5 exports beside a job with keep_checkpoints=2):
    here too, DeepSpeed's gather meets the folder pruned after meta.json was read."""
    from aupretrain.engine import checkpoint

    run = _copy(continued, tmp_path)
    (run / "encoder.pt").unlink()  # a job still running: no encoder.pt yet
    hidden = tmp_path / "step_4"
    (run / "checkpoints" / "step_4").rename(hidden)  # written by the job while step_3 is being read
    real, calls = checkpoint.read_meta, []

    def job_moves_on(ckpt):  # full_weights reads meta.json, then DeepSpeed gathers the partitions
        meta = real(ckpt)
        calls.append(Path(ckpt).name)
        if len(calls) == 1:
            hidden.rename(run / "checkpoints" / "step_4")
            assert checkpoint.prune(run, 1)  # train.keep_checkpoints=1: step_2 and step_3 go
        return meta

    monkeypatch.setattr(checkpoint, "read_meta", job_moves_on)
    rc, out, err = _export([run, tmp_path / "export"], capsys)
    assert rc == 0, err
    assert calls == ["step_3", "step_4", "step_4"]  # (step_4: for the gather, then for the export's config)
    printed = json.loads(out[out.index("{\n"):])
    assert printed["step"] == 4 and printed["source"] == str(run / "checkpoints" / "step_4")
    assert json.loads((tmp_path / "export" / "config.json").read_text())["step"] == 4
    assert err == [f"aupretrain-export: warning: {run / 'checkpoints' / 'step_3'} was removed while it was read (a "
                   "running job pruning its checkpoints); choosing again"]
    assert _exported_equals(tmp_path / "export", run / "checkpoints" / "step_4")


def test_checkpoints_pruned_on_every_try_are_one_line(continued, tmp_path, capsys, monkeypatch):
    """Each chosen checkpoint vanishes before it is read: a few tries, then one line (exit 1: run it again)."""
    from aupretrain.engine import checkpoint

    run = _copy(continued, tmp_path)
    (run / "encoder.pt").unlink()
    real, calls = checkpoint.full_weights, []

    def pruned_first(ckpt):  # gone before anything of it is read
        calls.append(ckpt.name)
        shutil.rmtree(ckpt)
        return real(ckpt)

    monkeypatch.setattr(checkpoint, "full_weights", pruned_first)
    rc, out, err = _export([run, tmp_path / "export"], capsys)
    assert rc == 1 and out == "" and calls == ["step_4", "step_3", "step_2"], (rc, err)
    assert len(err) == 4 and all("was removed while it was read" in x for x in err[:3]), err
    assert err[3] == (f"aupretrain-export: error: {run}: the running job pruned the checkpoints while they were read "
                      "(step_4, step_3, step_2 removed mid-read); run the same command again, or raise "
                      "train.keep_checkpoints so an export has time to read one")
    assert not (tmp_path / "export").exists()
    # with a readable encoder.pt the newer checkpoints failing is no failure: encoder.pt is exported, with a warning
    run = _copy(continued, tmp_path / "with_pt")
    calls.clear()
    rc, out, err = _export([run, tmp_path / "export_pt"], capsys)
    assert rc == 0 and json.loads(out[out.index("{\n"):])["source"] == str(run / "encoder.pt"), (rc, err)
    assert "could not be read" in err[-1] and "exported encoder.pt" in err[-1], err
    # a checkpoint named directly that vanishes mid-read: one line naming it
    run = _copy(continued, tmp_path / "again")
    rc, out, err = _export([run / "checkpoints" / "step_3", tmp_path / "export3"], capsys)
    assert rc == 2 and err == [f"aupretrain-export: error: {run / 'checkpoints' / 'step_3'}: removed while it was "
                               "read (a running job pruning its checkpoints: train.keep_checkpoints); export the run "
                               "folder for its newest one"], err


def test_a_checkpoint_newer_than_encoder_pt_is_exported(continued, tmp_path, capsys):
    """Was: `"step": 2, "source": ".../encoder.pt"` with no word of step_4. The newest state is exported and named;
    where encoder.pt is as new as the newest checkpoint, encoder.pt is."""
    import os

    run = continued
    rc, out, err = _export([run, tmp_path / "export"], capsys)
    assert rc == 0, err
    ckpt, pt = run / "checkpoints" / "step_4", run / "encoder.pt"
    note = f"{ckpt} (step 4) is newer than {pt} (step 2): exported the checkpoint"
    printed = json.loads(out[out.index("{\n"):])
    assert printed["step"] == 4 and printed["source"] == str(ckpt) and printed["note"] == note
    assert err == [f"aupretrain-export: note: {note}"]
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["step"] == 4 and config["source"] == str(ckpt)
    assert _exported_equals(tmp_path / "export", ckpt)
    umask = os.umask(0)
    os.umask(umask)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "export").iterdir()} == {
        "config.json": 0o666 & ~umask, "model.safetensors": 0o666 & ~umask}
    # the finished run as it was: encoder.pt and its own final checkpoint (step 2) -> encoder.pt, no note
    old = _copy(run, tmp_path)
    for step in (3, 4):
        shutil.rmtree(old / "checkpoints" / f"step_{step}")
    rc, out, err = _export([old, tmp_path / "export_pt"], capsys)
    printed = json.loads(out[out.index("{\n"):])
    assert rc == 0 and err == [] and "note" not in printed
    assert printed["step"] == 2 and printed["source"] == str(old / "encoder.pt")
    assert _exported_equals(tmp_path / "export_pt", old / "checkpoints" / "step_2")
