"""aupretrain-compare reads runs from a real MLflow server and ranks them by mean AU F1."""
import json

import pytest

from aupretrain.cli.compare import main


def log_run(client, exp, name, metrics, params=None, speeds=None):
    """A finished run as training logs it (client API: no global tracking URI leaks into later tests)."""
    run = client.create_run(exp, run_name=name)
    for k, v in (params or {}).items():
        client.log_param(run.info.run_id, k, v)
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v)
    for step, fps in enumerate(speeds or [], 1):  # perf/frames_per_s logged at every logging step
        client.log_metric(run.info.run_id, "perf/frames_per_s", fps, step=step)
    client.set_terminated(run.info.run_id)


def evaluated(objective, f1s, random_f1):
    params = {"objective.name": objective, "model.name": "resnet_small", "train.steps": 150, "data.batch_size": 16,
              "deepspeed.gradient_accumulation_steps": 2}
    metrics = {"eval/f1_mean": sum(f1s.values()) / len(f1s), "eval_random/f1_mean": random_f1,
               "eval/identity_acc": 0.2, **{f"eval/f1/{k}": v for k, v in f1s.items()}}
    return metrics, params


def test_compare_ranks_runs_by_mean_f1(mlflow_server, tmp_path, capsys):
    import mlflow

    client = mlflow.tracking.MlflowClient(mlflow_server)
    exp = client.create_experiment("compare-test")
    log_run(client, exp, "tcl-run", *evaluated("tcl", {"AU1": 0.2, "AU12": 0.3}, 0.14))
    log_run(client, exp, "clp-run", *evaluated("clp", {"AU1": 0.4, "AU12": 0.5}, 0.14), speeds=[200, 210, 190, 7])
    log_run(client, exp, "not-evaluated", {"train/loss": 1.0})
    out = tmp_path / "cmp.json"
    assert main(["compare-test", "--tracking-uri", mlflow_server, "--json", str(out),
                 "--out", str(tmp_path / "table")]) == 0
    rows = json.loads(out.read_text())
    assert [r["objective"] for r in rows] == ["clp", "tcl"]  # sorted by mean F1; the unevaluated run left out
    assert rows[0]["f1_mean"] == pytest.approx(0.45) and rows[0]["clips/rank/step"] == 32
    assert rows[0]["f1"] == {"AU1": 0.4, "AU12": 0.5} and "eval_group" not in rows[0]  # evaluated alike
    # the run's typical speed, not its last logging window (7 frames/s while the machine was busy)
    assert rows[0]["frames_per_s"] == pytest.approx(195) and rows[1]["frames_per_s"] is None
    assert (tmp_path / "table.png").stat().st_size > 0
    import csv

    table = list(csv.DictReader(open(tmp_path / "table.csv")))
    assert [r["run"] for r in table] == ["clp-run", "tcl-run"] and float(table[0]["F1 AU12"]) == pytest.approx(0.5)
    assert table[0]["dataset"] == "synthetic" and table[0]["protocol"] == "linear"
    assert "clp-run" in capsys.readouterr().out
    assert main(["--tracking-uri", mlflow_server, "--experiment", "nope"]) == 2


def test_evaluations_made_with_different_settings_are_lettered_and_ranked_apart(mlflow_server, tmp_path, capsys):
    """Two runs probed on the test identities and one on the validation identities (easier ones): the table says
    which rows compare instead of ranking them side by side."""
    import csv

    import mlflow

    client = mlflow.tracking.MlflowClient(mlflow_server)
    exp = client.create_experiment("settings-test")
    same = {"eval.dataset": "synthetic", "eval.identities": 24, "eval.baselines": "['hog']"}
    for name, f1, split, baselines in (("a-test", 0.38, "test", "[]"), ("b-val", 0.47, "validation", "['hog']"),
                                       ("c-test", 0.36, "test", "['hog']")):
        metrics, params = evaluated("clp", {"AU1": f1}, 0.14)
        log_run(client, exp, name, metrics, {**params, **same, "eval.split": split, "eval.baselines": baselines})
    out = tmp_path / "cmp.json"
    assert main(["settings-test", "--tracking-uri", mlflow_server, "--json", str(out),
                 "--out", str(tmp_path / "t")]) == 0
    rows = json.loads(out.read_text())
    assert [(r["run"], r["eval_group"]) for r in rows] == [("b-val", "A"), ("a-test", "B"), ("c-test", "B")]
    assert rows[0]["eval_settings"] == {"eval.split": "validation"}  # only what differs (not eval.baselines)
    said = capsys.readouterr().out
    assert "rows of different letters do not compare" in said and "A: eval.split=validation" in said
    assert "B: eval.split=test" in said
    table = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [(r["eval_group"], r["eval_settings"]) for r in table][1] == ("B", "eval.split=test")


BP4D_AUS = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24")
SYNTHETIC_KEYS = {"eval.split": "test", "eval.corpus": "data/synthetic_eval-test-24x2x100-s11", "eval.identities": 24,
                  "eval.videos_per_identity": 2, "eval.frames": 100, "eval.seed": 11, "eval.first_identity": 200000,
                  "eval.splits.test.seed": 11}


def test_nested_evaluations_keep_full_run_names_and_groups_list_only_keys_that_apply(mlflow_server, tmp_path, capsys):
    """Field trial: with `<run> / eval-bp4d-linear` rows and 12 AU columns the run column was cut to `smoke…`, so
    runs could not be told apart on screen; and the BP4D group's "what differs" line listed synthetic-only keys
    (eval.corpus=..., eval.identities=24, eval.frames=100) that a BP4D evaluation does not use."""
    import csv

    import mlflow

    client = mlflow.tracking.MlflowClient(mlflow_server)
    exp = client.create_experiment("nested-test")
    names = {}
    for k, (objective, f1) in enumerate((("clp", 0.41), ("tcl", 0.33))):
        metrics, params = evaluated(objective, {a: f1 for a in BP4D_AUS}, 0.14)
        parent = client.create_run(exp, run_name=f"smoke-{objective}-resnet-small-150-steps")
        for key, v in {**params, **SYNTHETIC_KEYS, "eval.dataset": "synthetic"}.items():
            client.log_param(parent.info.run_id, key, v)
        for key, v in metrics.items():  # training's own end-of-run evaluation (synthetic)
            client.log_metric(parent.info.run_id, key, v - 0.1)
        for protocol, delta in (("linear", 0.0), ("finetune", 0.05)):
            run = client.create_run(exp, run_name=f"eval-bp4d-{protocol}",
                                    tags={"mlflow.parentRunId": parent.info.run_id, "eval.dataset": "bp4d",
                                          "eval.protocol": protocol})
            # an aupretrain-eval run logs every eval.* param, the synthetic defaults that BP4D inherits included
            bp4d = {**SYNTHETIC_KEYS, "eval.dataset": "bp4d", "eval.root": "/data/bp4d", "eval.frame_stride": 5,
                    "eval.corpus": f"data/synthetic_eval-test-{24 + k}x2x100-s11", "eval.identities": 24 + k}
            for key, v in bp4d.items():
                client.log_param(run.info.run_id, key, v)
            for key, v in metrics.items():
                client.log_metric(run.info.run_id, key, v + delta)
            client.set_terminated(run.info.run_id)
            names[(objective, protocol)] = f"smoke-{objective}-resnet-small-150-steps / eval-bp4d-{protocol}"
        client.set_terminated(parent.info.run_id)
    out = tmp_path / "cmp.json"
    assert main(["nested-test", "--tracking-uri", mlflow_server, "--json", str(out), "--out", str(tmp_path / "t")]) == 0
    said = capsys.readouterr().out
    for name in names.values():  # each run's whole name on screen, on one line
        assert name in said, said
    rows = json.loads(out.read_text())
    groups = {r["dataset"]: r["eval_group"] for r in rows}
    lines = {line.strip()[:1]: line.strip() for line in said.splitlines() if line.strip()[1:3] == ": "}
    bp4d_line, synthetic_line = lines[groups["bp4d"]], lines[groups["synthetic"]]
    assert bp4d_line.startswith(f"{groups['bp4d']}: ") and "eval.dataset=bp4d" in bp4d_line
    for key in ("eval.corpus", "eval.identities", "eval.frames", "eval.split", "eval.seed", "eval.videos_per_identity"):
        assert key not in bp4d_line, bp4d_line  # synthetic-only: a BP4D evaluation does not use them
    assert "eval.root" not in synthetic_line and "eval.dataset=synthetic" in synthetic_line
    assert len({r["eval_group"] for r in rows if r["dataset"] == "bp4d"}) == 1  # the corpus they ignore splits nothing
    bp4d_row = next(r for r in rows if r["dataset"] == "bp4d")
    assert not any(k in bp4d_row["eval_settings"] for k in SYNTHETIC_KEYS)
    table = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert {r["run"] for r in table} >= set(names.values())
