"""The MLflow run name of a training job (field trial 8: `run.name` was ignored beside `run.dir`)."""
from pathlib import Path

from aupretrain.config import load_config
from aupretrain.engine.components import mlflow_run_name


def test_run_name_names_the_mlflow_run_beside_a_fixed_run_dir():
    folder = Path("/tmp/runs/clp1")
    cfg = load_config(["objective=clp", "run.dir=/tmp/runs/clp1", "run.name=ft8-clp"])
    assert mlflow_run_name(cfg, folder) == "ft8-clp"
    cfg = load_config(["objective=clp", "run.dir=/tmp/runs/clp1"])  # run.name left at its default
    assert mlflow_run_name(cfg, folder) == "clp1"
    stamped = Path("/tmp/runs/ft8-clp-20261207-070000")  # no run.dir: the folder <root>/<name>-<time> names it
    assert mlflow_run_name(load_config(["objective=clp", "run.name=ft8-clp"]), stamped) == stamped.name
