"""Field trial ft8, faults 6, 7, 8, 13: aupretrain-compare against real MLflow sqlite stores (runs logged with the
MLflow client, as training and aupretrain-eval log them) shows what a run did not log as missing, checks every
output path before reading the store, names the --runs it leaves out, and never creates a store it was pointed at by
mistake; aupretrain-eval refuses a --parent-run the store does not have before evaluating anything."""
from __future__ import annotations

import csv
import json
import sqlite3

import pytest

from aupretrain.cli.compare import main


def store(tmp_path, name="mlflow.db"):
    """(uri, client) of a new MLflow sqlite store in tmp_path."""
    import mlflow

    uri = f"sqlite:///{tmp_path / name}"
    return uri, mlflow.tracking.MlflowClient(uri)


def log_run(client, exp, name, params=None, metrics=None, tags=None) -> str:
    run = client.create_run(exp, run_name=name, tags=tags or {})
    for k, v in (params or {}).items():
        client.log_param(run.info.run_id, k, v)
    for k, v in (metrics or {}).items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


FULL = {"objective.name": "clp", "model.name": "resnet_small", "train.steps": 150, "data.batch_size": 16}
EVAL = {"eval/f1_mean": 0.4, "eval/f1/AU1": 0.4, "eval_random/f1_mean": 0.1}


def errors(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("aupretrain-compare: error: ")]


def test_values_a_run_did_not_log_are_missing_not_invented(tmp_path, capsys):
    """Fault 6: an evaluation whose pretraining run is not in the store read `? ? 0 0` and its own id as the
    pretraining run; a run without batch size read clips/rank/step 0."""
    uri, client = store(tmp_path)
    exp = client.create_experiment("e")
    full = log_run(client, exp, "full", FULL, EVAL)
    log_run(client, exp, "no-batch", {"objective.name": "tcl", "model.name": "resnet_small", "train.steps": 90},
            {"eval/f1_mean": 0.3, "eval/f1/AU1": 0.3})
    ghost = "0123456789abcdef0123456789abcdef"
    orphan = log_run(client, exp, "eval-gft-linear", {"eval.dataset": "gft"}, {"eval/f1_mean": 0.2, "eval/f1/AU1": 0.2},
                     tags={"eval.pretraining_run": ghost, "eval.dataset": "gft", "eval.protocol": "linear"})
    assert main(["e", "--tracking-uri", uri, "--out", str(tmp_path / "t"), "--json", str(tmp_path / "t.json")]) == 0
    out, err = capsys.readouterr()
    rows = {r["run"]: r for r in json.loads((tmp_path / "t.json").read_text())}
    assert rows["full"]["clips/rank/step"] == 16 and rows["full"]["steps"] == 150 and rows["full"]["pretraining_run"] == full
    assert rows["no-batch"]["clips/rank/step"] is None and rows["no-batch"]["steps"] == 90
    assert rows["no-batch"]["f1_random"] is None and rows["no-batch"]["frames_per_s"] is None
    o = rows["eval-gft-linear"]
    for key in ("objective", "model", "steps", "clips/rank/step", "frames_per_s", "pretraining_run", "identity_acc"):
        assert o[key] is None, (key, o)
    assert o["dataset"] == "gft" and o["run_id"] == orphan
    table = {r["run"]: r for r in csv.DictReader(open(tmp_path / "t.csv"))}
    assert [table["eval-gft-linear"][k] for k in ("objective", "model", "steps", "clips/rank/step", "pretraining_run")] \
        == [""] * 5
    assert table["no-batch"]["clips/rank/step"] == ""
    line = next(x for x in out.splitlines() if "eval-gft-linear" in x)
    assert "?" not in line and " 0 " not in line and line.count("–") >= 4, line
    assert ghost in err and "not in the store" in err and not errors(err)


def test_outputs_are_checked_before_the_store_is_read(tmp_path, capsys):
    """Fault 7: --json / --plot into a missing folder tracebacked after the CSV and chart were written."""
    uri, client = store(tmp_path)
    log_run(client, client.create_experiment("e"), "full", FULL, EVAL)
    assert main(["e", "--tracking-uri", uri, "--out", str(tmp_path / "a" / "t"), "--json", str(tmp_path / "new" / "x.json"),
                 "--plot", str(tmp_path / "new2" / "deeper" / "p.svg")]) == 0
    assert json.loads((tmp_path / "new" / "x.json").read_text())[0]["run"] == "full"
    assert (tmp_path / "new2" / "deeper" / "p.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "a" / "t.csv").exists() and not (tmp_path / "a" / "t.png").exists()  # --plot replaces it
    capsys.readouterr()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.json").mkdir()
    missing_store = f"sqlite:///{tmp_path / 'nowhere.db'}"
    for extra, arg, said in ((["--json", str(tmp_path / "afile" / "x.json")], "--json", "is a file, not a folder"),
                             (["--json", str(tmp_path / "adir.json")], "--json", "is a folder"),
                             (["--plot", str(tmp_path / "p.xyz")], "--plot", "cannot write .xyz"),
                             (["--out", str(tmp_path / "afile" / "t")], "--out", "is a file, not a folder"),
                             (["--json", str(tmp_path / "b" / "t.csv")], "--json", "is also the table file")):
        argv = ["e", "--tracking-uri", uri, "--out", str(tmp_path / "b" / "t"), *extra]
        assert main(argv) == 2, extra
        line, = errors(capsys.readouterr().err)
        assert arg in line and said in line, line
        assert not (tmp_path / "b").exists()  # nothing written, no folder made
        # refused before the store is opened: an output error comes first even where there is no store
        assert main(["e", "--tracking-uri", missing_store, "--out", str(tmp_path / "b" / "t"), *extra]) == 2
        line, = errors(capsys.readouterr().err)
        assert arg in line and said in line, line
    assert not (tmp_path / "nowhere.db").exists()


def test_runs_left_out_are_named_with_the_reason(tmp_path, capsys):
    """Fault 8: `--runs A B` with B not evaluated printed A alone, saying nothing; `--runs B` said "no run with eval
    results in <store>". A run evaluated later by aupretrain-eval (a run nested under it) is not left out."""
    uri, client = store(tmp_path)
    exp = client.create_experiment("e")
    done = log_run(client, exp, "simclr1", FULL, EVAL)
    bare = log_run(client, exp, "tcl-noeval", FULL, {"train/loss": 1.0})
    later = log_run(client, exp, "clp-later", FULL, {"train/loss": 1.0})
    nested = log_run(client, exp, "eval-bp4d-linear", {"eval.dataset": "bp4d"}, {"eval/f1_mean": 0.5, "eval/f1/AU1": 0.5},
                     tags={"mlflow.parentRunId": later, "eval.pretraining_run": later, "eval.dataset": "bp4d"})
    out = tmp_path / "r.json"
    assert main(["--runs", done, bare, later, done, "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert sorted(r["run_id"] for r in rows) == sorted([done, nested])
    assert next(r for r in rows if r["run_id"] == nested)["objective"] == "clp"
    err = capsys.readouterr().err
    warned = [x for x in err.splitlines() if "warning" in x and "left out" in x]
    assert len(warned) == 1 and bare in warned[0] and "tcl-noeval" in warned[0] and "eval/f1_mean" in warned[0], err
    assert main(["--runs", bare, "--tracking-uri", uri, "--out", str(tmp_path / "r2")]) == 2
    line, = errors(capsys.readouterr().err)
    assert "--runs" in line and bare in line and "tcl-noeval" in line and "aupretrain-eval" in line, line
    assert not (tmp_path / "r2.csv").exists()
    assert main(["--runs", "deadbeef", "--tracking-uri", uri, "--out", str(tmp_path / "r3")]) == 2  # unknown id: kept
    line, = errors(capsys.readouterr().err)
    assert "no run with id deadbeef" in line


def test_a_store_that_does_not_exist_is_refused_not_created(tmp_path, capsys, monkeypatch):
    """Fault 13: a mistyped sqlite path (or no mlflow.db in the working folder) made a new empty database there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    typo = tmp_path / "mlfow.db"
    assert main(["--tracking-uri", f"sqlite:///{typo}", "--out", str(tmp_path / "c")]) == 2
    line, = errors(capsys.readouterr().err)
    assert "--tracking-uri" in line and f"no MLflow store at {typo}" in line, line
    assert not typo.exists() and not (tmp_path / "c.csv").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel/mlflow.db")  # relative to the working folder
    (tmp_path / "rel").mkdir()
    assert main(["--out", str(tmp_path / "c")]) == 2
    line, = errors(capsys.readouterr().err)
    assert "MLFLOW_TRACKING_URI" in line and "no MLflow store at" in line, line
    assert not (tmp_path / "rel" / "mlflow.db").exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert main(["--out", str(tmp_path / "c")]) == 2  # the default: ./mlflow.db
    line, = errors(capsys.readouterr().err)
    assert "default store" in line and "no MLflow store at" in line, line
    assert not (tmp_path / "mlflow.db").exists()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a folder store, where MLflow still opens one
    assert main(["--tracking-uri", f"file://{tmp_path / 'mlruns'}", "--out", str(tmp_path / "c")]) == 2
    line, = errors(capsys.readouterr().err)
    assert "no MLflow store at" in line and "mlruns" in line, line
    assert not (tmp_path / "mlruns").exists()
    other = tmp_path / "other.db"  # somebody else's sqlite database: not given MLflow's tables
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE notes (x TEXT)")
    assert main(["--tracking-uri", f"sqlite:///{other}", "--out", str(tmp_path / "c")]) == 2
    line, = errors(capsys.readouterr().err)
    assert "is not an MLflow store" in line, line
    with sqlite3.connect(other) as c:
        assert {t for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type='table'")} == {"notes"}


@pytest.fixture
def tiny_encoder(tmp_path):
    from aupretrain.models.encoder import AUEncoder, save_encoder

    tiny = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8, "stem_stride": 2, "stem_pool": False,
            "norm": "group", "norm_groups": 4, "au_grid": 2, "au_dim": 12, "id_dim": 6, "proj_hidden": 16,
            "proj_dim": 8, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    path = tmp_path / "enc" / "encoder.pt"
    path.parent.mkdir()
    save_encoder(AUEncoder(tiny, 48), path)
    return path


def test_eval_refuses_a_parent_run_the_store_does_not_have(tmp_path, tiny_encoder, capsys, monkeypatch):
    """Fault 6: `aupretrain-eval --parent-run ID` with an ID the store does not have evaluated and logged an
    orphan run. Now: one line naming the id and the store, before any frame is read (an empty BP4D folder here:
    reading it would fail with another message), and nothing logged."""
    from aupretrain.cli.evaluate import main as evaluate

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, client = store(tmp_path)
    exp = client.create_experiment("aupretrain")
    real = log_run(client, exp, "simclr1", FULL, EVAL)
    gone = log_run(client, exp, "deleted-run", FULL, EVAL)
    client.delete_run(gone)
    elsewhere = log_run(client, client.create_experiment("ablations"), "abl", FULL, EVAL)
    (tmp_path / "bp4d").mkdir()
    base = [str(tiny_encoder), "dataset=bp4d", f"eval.root={tmp_path / 'bp4d'}", f"tracking.uri={uri}",
            "--out", str(tmp_path / "out"), "--threads", "1"]
    ghost = "0123456789abcdef0123456789abcdef"
    for parent, extra, said in ((ghost, [], "no run with this id"), (gone, [], "deleted"),
                                (elsewhere, ["tracking.experiment=aupretrain"], "not of experiment 'aupretrain'")):
        assert evaluate([*base, *extra, "--parent-run", parent]) == 2, parent
        err = capsys.readouterr().err
        line, = [x for x in err.splitlines() if x.startswith("aupretrain-eval: error: ")]
        assert "--parent-run" in line and parent in line and said in line, line
        assert "mlflow.db" in line or said != "no run with this id", line
        assert not (tmp_path / "out" / "eval.json").exists()
    assert len(client.search_runs([exp])) == 1  # no orphan evaluation run (the deleted one is not listed)
    nowhere = tmp_path / "nowhere.db"
    assert evaluate([*base[:3], f"tracking.uri=sqlite:///{nowhere}", *base[4:], "--parent-run", real]) == 2
    line, = [x for x in capsys.readouterr().err.splitlines() if x.startswith("aupretrain-eval: error: ")]
    assert "--parent-run" in line and "no MLflow store at" in line and not nowhere.exists(), line
    # a run the store has passes the check (the empty BP4D folder is what stops it then), in its own experiment
    # or in the one tracking.experiment names
    for extra, parent in (([], real), (["tracking.experiment=ablations"], elsewhere)):
        evaluate([*base, *extra, "--parent-run", parent])
        assert "--parent-run" not in capsys.readouterr().err


def test_remote_store_names_are_not_taken_for_missing_local_folders():
    """Review: `databricks`, `databricks-uc` and `uc` (names MLflow takes whole) were refused as missing folders."""
    from aupretrain.track.store import store_missing

    for uri in ("databricks", "databricks-uc", "uc", "databricks://profile", "http://127.0.0.1:5000",
                "postgresql://u@h/db"):
        assert store_missing(uri) is None, uri
    assert "no such folder" in store_missing("/nonexistent/mlruns")
