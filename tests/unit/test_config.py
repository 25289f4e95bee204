import pytest

from aupretrain.config import flatten, load_config
from aupretrain.train import split_launcher_args


def test_defaults_compose():
    cfg = load_config()
    assert cfg.objective.name == "clp" and cfg.deepspeed.zero_optimization.stage == 2
    assert cfg.model.name == "resnet18" and cfg.data.shards == "shards/synthetic"


def test_experiment_presets():
    smoke = load_config(["experiment=smoke"])
    assert smoke.model.name == "resnet_small" and smoke.train.steps < 20
    assert smoke.model.widths[0] < load_config().model.widths[0]
    q = load_config(["experiment=quickstart", "data.shards=s3://bucket/x"])
    assert q.data.shards == "s3://bucket/x"


def test_flatten_for_mlflow():
    flat = flatten(load_config())
    assert flat["objective.temperature"] == "0.1" and "deepspeed.zero_optimization.stage" in flat


@pytest.mark.parametrize("argv,expected,rank", [
    (["--local_rank=3", "experiment=smoke"], ["experiment=smoke"], 3),
    (["experiment=smoke", "--local_rank", "1"], ["experiment=smoke"], 1),
    (["--local-rank=0", "a=b"], ["a=b"], 0),
    (["a=b"], ["a=b"], None),
])
def test_launcher_args_are_consumed(argv, expected, rank):
    assert split_launcher_args(argv) == (expected, rank)
