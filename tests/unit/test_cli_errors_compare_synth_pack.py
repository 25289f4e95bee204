"""Bad input to aupretrain-compare, aupretrain-synth and aupretrain-pack is one error line naming the argument or
file (no traceback), exit status 2; a tracking server that does not answer is one line too, within seconds."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def unused_port() -> int:
    """A local TCP port with nothing listening on it (bound once by the OS, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(name: str, *args, cwd: Path, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m aupretrain.cli.<name> ARGS` as a user would, with no MLflow settings from the environment:
    (result, seconds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", f"aupretrain.cli.{name}", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


def one_error(r: subprocess.CompletedProcess, prog: str) -> str:
    """The single `<prog>: error: ...` line of stderr (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, r.stderr[-3000:]
    return errors[0]


def test_compare_names_the_run_ids_a_store_does_not_have(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("other")  # a real store, without these runs
    r, _ = cli("compare", "--tracking-uri", uri, "--runs", "deadbeef", "cafe0123", "--out", tmp_path / "c2",
               cwd=tmp_path)
    line = one_error(r, "aupretrain-compare")
    assert r.returncode == 2, r.stderr
    assert "--runs" in line and "deadbeef" in line and "cafe0123" in line and "no MLflow store" not in line, line
    assert not (tmp_path / "c2.csv").exists()


def test_compare_against_a_server_that_does_not_answer_fails_fast_in_one_line(tmp_path):
    uri = f"http://alice:s3cret-pw@127.0.0.1:{unused_port()}"
    # MLflow's own retries alone would keep it silent ~250 s: a hang past 120 s fails here (the subprocess timeout)
    r, _ = cli("compare", "--tracking-uri", uri, "--out", tmp_path / "c6", cwd=tmp_path, timeout=120)
    line = one_error(r, "aupretrain-compare")
    assert r.returncode == 1, r.stderr
    assert "does not answer" in line and uri.replace("s3cret-pw", "***") in line, line
    assert "s3cret-pw" not in r.stderr + r.stdout


def test_compare_refuses_two_different_experiment_names(tmp_path):
    r, _ = cli("compare", "ablations", "--experiment", "baselines", "--tracking-uri",
               f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    line = one_error(r, "aupretrain-compare")
    assert r.returncode == 2, r.stderr
    assert "EXPERIMENT" in line and "--experiment" in line and "ablations" in line and "baselines" in line
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store is touched


SMALL = ("--identities", "1", "--videos-per-identity", "1", "--frames", "4", "--size", "48", "--workers", "1")


def test_synth_into_a_corpus_rendered_with_other_settings_is_one_line(tmp_path):
    out = tmp_path / "sq"
    first, _ = cli("synth", out, *SMALL, "--", "experiment=quickstart", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    r, _ = cli("synth", out, *SMALL, cwd=tmp_path)
    line = one_error(r, "aupretrain-synth")
    assert r.returncode == 2, r.stderr
    assert str(out) in line and "other settings" in line and "--overwrite" in line, line


@pytest.mark.parametrize("below", ["", "sub"])
def test_synth_out_that_is_a_file_is_one_line(tmp_path, below):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder\n")
    out = notes / below if below else notes
    r, _ = cli("synth", out, *SMALL, cwd=tmp_path)
    line = one_error(r, "aupretrain-synth")
    assert r.returncode == 2, r.stderr
    assert f"OUT {out}" in line and "file" in line, line
    assert notes.read_text() == "not a folder\n"


def test_pack_input_that_is_a_file_but_no_list_is_named_as_such(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a list\n")
    r, _ = cli("pack", notes, tmp_path / "out", "--align", "center", cwd=tmp_path)
    line = one_error(r, "aupretrain-pack")
    assert r.returncode == 2, r.stderr
    assert str(notes) in line and "does not exist" not in line and ".csv" in line and "folder" in line, line


@pytest.mark.parametrize("where", ["output", "output-below", "work-dir", "work-dir-override"])
def test_pack_output_or_work_dir_that_is_a_file_is_refused_up_front(tmp_path, where):
    src = tmp_path / "src"
    (src / "id0").mkdir(parents=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a folder\n")
    out, extra, named = tmp_path / "out", [], "OUTPUT"
    if where == "output":
        out = notes
    elif where == "output-below":
        out = notes / "shards"
    elif where == "work-dir":
        extra, named = ["--work-dir", notes], "--work-dir"
    else:
        extra, named = ["--", f"pack.work_dir={notes}/w"], "pack.work_dir"
    r, _ = cli("pack", src, out, "--align", "center", *extra, cwd=tmp_path)
    line = one_error(r, "aupretrain-pack")
    assert r.returncode == 2, r.stderr
    assert named in line and str(notes) in line and "existing file, not a folder" in line, line
    assert "resume" not in line, line
    assert notes.read_text() == "not a folder\n"


def test_compare_letters_only_settings_a_dataset_reads():
    """Review: BP4D / GFT evaluations logged eval.au_threshold=0.5 (inherited, never read) before their presets set
    null, and DISFA ones 0.5 while thresholding at 2: neither may split rows into letters."""
    from aupretrain.cli.compare import label_settings

    def row(dataset, f1, **params):
        return {"dataset": dataset, "f1_mean": f1, "eval_params": {"eval.folds": "3", **params}}

    rows = [row("bp4d", 0.5, **{"eval.au_threshold": "0.5"}), row("bp4d", 0.4, **{"eval.au_threshold": "None"}),
            row("disfa", 0.3, **{"eval.au_threshold": "0.5"}), row("disfa", 0.2, **{"eval.au_threshold": "2"})]
    assert label_settings(rows) == [] and all("eval_group" not in r for r in rows)
    rows += [row("disfa", 0.1, **{"eval.au_threshold": "1"})]  # the other DISFA convention: a setting that counts
    lines = label_settings(rows)
    assert lines == ["A: none of these settings is read by its dataset", "B: eval.au_threshold=2",
                     "C: eval.au_threshold=1"], lines
    assert [r["eval_group"] for r in rows if r["dataset"] == "bp4d"] == ["A", "A"]  # nothing of theirs differs
    assert [r["eval_group"] for r in rows if r["dataset"] == "disfa"] == ["B", "B", "C"]
