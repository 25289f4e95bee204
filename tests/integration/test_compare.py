"""aupretrain-compare reads runs from a real MLflow server and ranks them by mean AU F1."""
import json

import pytest

from aupretrain.cli.compare import main


def log_run(mlflow, name, objective, f1s, random_f1):
    with mlflow.start_run(run_name=name):
        mlflow.log_params({"objective.name": objective, "model.name": "resnet_small", "train.steps": 150,
                           "data.batch_size": 16, "deepspeed.gradient_accumulation_steps": 2})
        mlflow.log_metrics({"eval/f1_mean": sum(f1s.values()) / len(f1s), "eval_random/f1_mean": random_f1,
                            "eval/identity_acc": 0.2, **{f"eval/f1/{k}": v for k, v in f1s.items()}})


def test_compare_ranks_runs_by_mean_f1(mlflow_server, tmp_path, capsys):
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_experiment("compare-test")
    log_run(mlflow, "tcl-run", "tcl", {"AU1": 0.2, "AU12": 0.3}, 0.14)
    log_run(mlflow, "clp-run", "clp", {"AU1": 0.4, "AU12": 0.5}, 0.14)
    with mlflow.start_run(run_name="not-evaluated"):
        mlflow.log_metric("train/loss", 1.0)
    out = tmp_path / "cmp.json"
    assert main(["--tracking-uri", mlflow_server, "--experiment", "compare-test", "--json", str(out),
                 "--plot", str(tmp_path / "cmp.png")]) == 0
    rows = json.loads(out.read_text())
    assert [r["objective"] for r in rows] == ["clp", "tcl"]  # sorted by mean F1; the unevaluated run left out
    assert rows[0]["f1_mean"] == pytest.approx(0.45) and rows[0]["clips/rank/step"] == 32
    assert rows[0]["f1"] == {"AU1": 0.4, "AU12": 0.5}
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert "clp-run" in capsys.readouterr().out
    assert main(["--tracking-uri", mlflow_server, "--experiment", "nope"]) == 2
