"""The end-of-run export of `encoder.pt` (`engine.export.master_method` + `export_encoder`) outside a training job,
in DeepSpeed's 16-bit modes when the final checkpoint is not in the run's folder. (With it there, encoder.pt and the
AU head hold its fp32 master weights: `tests/integration/test_train.py::test_zero_stages[1]` and
`test_torchrun_two_ranks[supervised...]`.)"""
import json
import logging

import pytest
import torch

from aupretrain.config import load_config
from aupretrain.engine.export import export_encoder, master_method
from aupretrain.models.encoder import AUEncoder, load_encoder
from omegaconf import OmegaConf


class _Module(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder


class _Bf16Zero1Engine:
    """What `export_encoder` reads of a DeepSpeed engine in bf16 mode under ZeRO-1, on rank 0 of one."""

    def __init__(self, encoder):
        self.module, self.global_rank = _Module(encoder), 0

    def zero_optimization_stage(self):
        return 1

    def bfloat16_enabled(self):
        return True


def test_a_16_bit_run_without_its_final_checkpoint_exports_the_module_weights_with_a_warning(tmp_path, caplog):
    """A run resumed from another run's checkpoint at or past train.steps has no checkpoint of its last step in its
    own folder: encoder.pt gets the 16-bit module's weights cast to fp32 (was: the run failed at its export)."""
    cfg = load_config(["experiment=cpu"])
    enc = AUEncoder(OmegaConf.to_container(cfg.model, resolve=True), 32)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # what a bf16 module holds
    engine = _Bf16Zero1Engine(enc.to(torch.bfloat16))
    with caplog.at_level(logging.WARNING, logger="aupretrain.train"):
        master = master_method(engine, cfg, tmp_path / "checkpoints" / "step_7")
        export_encoder(engine, tmp_path / "encoder.pt", {"step": 7}, master)
    assert master == (None, False)
    assert "fp32 master weights of" in caplog.text and "were not read" in caplog.text and "step_7" in caplog.text
    sd = torch.load(tmp_path / "encoder.pt", weights_only=True)
    assert sd["step"] == 7 and all(v.dtype in (torch.float32, torch.int64) for v in sd["state_dict"].values())
    back = load_encoder(tmp_path / "encoder.pt")
    for (name, p), q in zip(enc.float().named_parameters(), back.parameters()):
        assert torch.equal(p, q), name


# --- aupretrain-export's output folder (field trial, session 45): file modes, OUT that cannot be a folder ---

TINY = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 2, "stem_pool": False, "norm": "group",
        "norm_groups": 4, "au_dim": 12, "id_dim": 6, "proj_hidden": 16, "proj_dim": 8,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _encoder_pt(tmp_path):
    from aupretrain.models.encoder import save_encoder

    torch.manual_seed(0)
    path = tmp_path / "run" / "encoder.pt"
    path.parent.mkdir()
    save_encoder(AUEncoder(TINY, 32), path, {"step": 5, "mlflow_run_id": None})
    return path


def _export(argv, capsys):
    from aupretrain.cli.export import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_export_files_get_the_mode_of_a_normal_write_under_the_umask(tmp_path, capsys):
    """model.safetensors was 0600 (safetensors writes through a private temporary file) beside a 0644 config.json:
    a serving container with another uid could not read it. Every file of the export gets 0666 & ~umask."""
    import os
    import stat

    pt = _encoder_pt(tmp_path)
    for umask in (0o022, 0o027, 0o002):
        old = os.umask(umask)
        try:
            out = tmp_path / f"export_{umask:o}"
            rc, _, err = _export([pt.parent, out], capsys)
        finally:
            os.umask(old)
        assert rc == 0, err
        files = sorted(p.name for p in out.iterdir())
        assert files == ["config.json", "model.safetensors"]  # no temporary left behind
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
        assert modes == {name: 0o666 & ~umask for name in files}, (oct(umask), {k: oct(v) for k, v in modes.items()})
        assert load_encoder(out).au_dim == 12


def test_export_over_an_existing_export_replaces_its_files(tmp_path, capsys):
    pt = _encoder_pt(tmp_path)
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old")
    (out / "notes.txt").write_text("kept\n")
    (out / ".export-999999999.tmp").mkdir()  # left by an export killed mid-write: its process is gone
    (out / ".export-999999999.tmp" / "model.safetensors").write_bytes(b"half")
    (out / ".export-1.tmp").mkdir()  # pid 1 lives: a writer still at work is left alone
    rc, stdout, err = _export([pt, out], capsys)
    assert rc == 0, err
    assert json.loads(stdout)["source"] == str(pt) and (out / "notes.txt").read_text() == "kept\n"
    assert not (out / ".export-999999999.tmp").exists() and (out / ".export-1.tmp").is_dir()
    assert load_encoder(out).au_dim == 12


def _one_error_line(rc, err, want):
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == f"aupretrain-export: error: {want}", lines[0]


def test_an_out_that_is_a_file_is_one_line_and_nothing_is_read(tmp_path, capsys):
    """OUT an existing file was an 11-line FileExistsError traceback (after the whole checkpoint was read)."""
    pt = _encoder_pt(tmp_path)
    (tmp_path / "exports").mkdir()
    f = tmp_path / "exports" / "file"
    f.write_text("not a folder\n")
    rc, out, err = _export([pt.parent, f], capsys)
    _one_error_line(rc, err, f"{f}: is a file; give a folder for the export")
    assert out == "" and f.read_text() == "not a folder\n"
    rc, _, err = _export([pt.parent, f / "sub"], capsys)
    _one_error_line(rc, err, f"{f / 'sub'}: {f} is a file; give a folder for the export")
    rc, _, err = _export([tmp_path / "missing", f], capsys)  # OUT is checked before SOURCE is read
    _one_error_line(rc, err, f"{f}: is a file; give a folder for the export")


def test_the_cli_prints_one_line_for_an_out_that_is_a_file(tmp_path):
    """The console script itself: exit 2 and one line, no traceback (as the field trial ran it)."""
    import subprocess
    import sys
    from pathlib import Path

    pt = _encoder_pt(tmp_path)
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "file").write_text("x")
    r = subprocess.run([str(Path(sys.executable).parent / "aupretrain-export"), str(pt.parent), "exports/file"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    _one_error_line(r.returncode, r.stderr, "exports/file: is a file; give a folder for the export")


def test_an_out_in_a_read_only_folder_is_one_line(tmp_path, capsys):
    """A folder the user may not write (chmod 555), or, as root (whom permissions do not stop), a read-only bind
    mount in a mount namespace of its own."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    pt = _encoder_pt(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        try:
            rc, out, err = _export([pt.parent, ro / "x"], capsys)
        finally:
            ro.chmod(0o755)
        _one_error_line(rc, err, f"{ro / 'x'}: {ro} is not writable by this user; give a folder you can write for "
                                 "the export")
        assert not (ro / "x").exists()
        return
    assert shutil.which("unshare"), "root: util-linux's unshare makes the read-only folder (as for test_netns)"
    export = Path(sys.executable).parent / "aupretrain-export"
    r = subprocess.run(["unshare", "-m", "sh", "-c", f'mount --bind "{ro}" "{ro}" && mount -o remount,bind,ro "{ro}" '
                        f'"{ro}" && exec "{export}" "{pt.parent}" "{ro}/x"'], capture_output=True, text=True,
                       timeout=300)
    assert not ("mount" in r.stderr and "aupretrain-export" not in r.stderr), f"no mount namespace: {r.stderr[:300]}"
    _one_error_line(r.returncode, r.stderr, f"{ro / 'x'}: {ro} is on a read-only file system; give a folder you can "
                                            "write for the export")
    assert not (ro / "x").exists()


def test_an_export_folder_caught_between_its_two_renames_loads_the_weights_with_their_own_config(tmp_path):
    """A re-export renames model.safetensors, then config.json: a reader in between saw new weights beside the old
    config.json (a size mismatch, or the old provenance). The weights file carries its config in its metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from aupretrain.models.encoder import fp32_tensors, save_encoder_folder

    small, wide = AUEncoder(TINY, 32), AUEncoder({**TINY, "au_dim": 20}, 32)
    save_encoder_folder(small, tmp_path / "old", {"step": 1})
    save_encoder_folder(wide, tmp_path / "new", {"step": 2})
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_bytes((tmp_path / "old" / "config.json").read_bytes())
    (mixed / "model.safetensors").write_bytes((tmp_path / "new" / "model.safetensors").read_bytes())
    with safe_open(str(mixed / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["aupretrain"])["step"] == 2
    frames = torch.randint(0, 255, (3, 40, 40, 3), dtype=torch.uint8)
    loaded = load_encoder(mixed)
    assert loaded.au_dim == 20 and torch.equal(loaded.encode(frames), wide.eval().encode(frames))
    assert load_encoder(mixed / "model.safetensors").au_dim == 20
    (mixed / "config.json").unlink()  # the weights file alone describes itself
    assert load_encoder(mixed).au_dim == 20
    # an export written before the metadata (weights only in the header) is still read through config.json
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file(fp32_tensors(small.state_dict()), str(legacy / "model.safetensors"))
    (legacy / "config.json").write_bytes((tmp_path / "old" / "config.json").read_bytes())
    assert torch.equal(load_encoder(legacy).encode(frames), small.eval().encode(frames))
    (legacy / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="needs config.json"):
        load_encoder(legacy)
    (legacy / "config.json").write_text('{"format": "something-else", "model": {}}')
    with pytest.raises(ValueError, match="not an aupretrain encoder"):
        load_encoder(legacy)


def test_a_weights_file_given_by_name_is_the_one_read(tmp_path):
    """Review: load_encoder("dir/X.safetensors") read dir/model.safetensors instead (another model beside it)."""
    from aupretrain.models.encoder import save_encoder_folder

    save_encoder_folder(AUEncoder(TINY, 32), tmp_path / "a")
    save_encoder_folder(AUEncoder({**TINY, "au_dim": 20}, 32), tmp_path / "b")
    (tmp_path / "a" / "wide.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    assert load_encoder(tmp_path / "a" / "wide.safetensors").au_dim == 20
    assert load_encoder(tmp_path / "a").au_dim == 12 == load_encoder(tmp_path / "a" / "model.safetensors").au_dim


def test_the_end_of_run_evaluation_is_no_rank_and_not_held_to_torchruns_one_thread():
    """`evaluation_env`: the process-group variables go; torchrun's own OMP_NUM_THREADS=1 (several ranks a host)
    goes, so the evaluation takes the job's CPUs; a value the user exported, or 1 for a single rank, stays."""
    from aupretrain.engine.export import evaluation_env

    ranks = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h",
             "MASTER_PORT": "1", "TORCHELASTIC_RUN_ID": "r", "PATH": "/bin"}
    env = evaluation_env({**ranks, "OMP_NUM_THREADS": "1"})
    assert env == {"TORCHELASTIC_RUN_ID": "r", "PATH": "/bin"}
    assert evaluation_env({**ranks, "OMP_NUM_THREADS": "4"})["OMP_NUM_THREADS"] == "4"  # the user's budget
    assert evaluation_env({**ranks, "OMP_NUM_THREADS": "1", "LOCAL_WORLD_SIZE": "1"})["OMP_NUM_THREADS"] == "1"
    no_torchrun = {k: v for k, v in ranks.items() if k != "TORCHELASTIC_RUN_ID"}
    assert evaluation_env({**no_torchrun, "OMP_NUM_THREADS": "1"})["OMP_NUM_THREADS"] == "1"
