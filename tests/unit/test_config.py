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
    q = load_config(["experiment=cpu", "data.shards=s3://bucket/x"])
    assert q.data.shards == "s3://bucket/x" and q.objective.cir.hog_basis_weight == 0 and q.train.steps == 150
    # the README job: the CPU preset training the headline CLP preset on the still-head control's corpus and clips
    job = load_config(["experiment=quickstart"])
    assert job.model == q.model and job.optim == q.optim and job.data.batch_size == q.data.batch_size
    assert job.objective == load_config(["experiment=cpu", "objective=clp_hog_basis"]).objective  # what was measured
    assert job.train.steps == 1000
    assert (job.synth.identities, job.synth.frames, job.synth.head_motion) == (800, 40, 0.0)
    assert (job.pack.clip_len, job.pack.stride, job.pack.clip_step) == (4, 12, 1)
    assert job.data.augment.shared_geometry and not q.data.augment.shared_geometry


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


def test_a_password_in_the_store_url_is_never_recorded_and_comes_back_from_the_environment(tmp_path, monkeypatch):
    """tracking.json holds the URL without its password; a resumed job gets it from $MLFLOW_TRACKING_URI when
    that names the same store (and keeps the recorded store otherwise)."""
    import json

    from aupretrain.track.store import redact, tracking_uri

    url = "http://me:s3cr%40t@mlflow.example:5000"
    assert redact(url) == "http://me:***@mlflow.example:5000"
    assert redact(f"API request to {url}/api/2.0/runs failed") == \
        "API request to http://me:***@mlflow.example:5000/api/2.0/runs failed"
    assert redact("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"
    (tmp_path / "tracking.json").write_text(json.dumps({"uri": redact(url), "experiment": "x", "run_id": "r"}))
    cfg = load_config()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    assert tracking_uri(cfg, tmp_path) == url
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://me:other@elsewhere:5000")
    assert tracking_uri(cfg, tmp_path) == redact(url)  # another store: the record's, as it was written


@pytest.mark.parametrize("override,hydra", [
    ("data.shards=s3://b/year=2024/x", 'data.shards="s3://b/year=2024/x"'),
    ('k=say "hi"', "k='say \"hi\"'"),
    ("k=it's \"x\"", 'k="it\'s \\"x\\""'),
    ("k=a#b\\", 'k="a#b\\\\"'),
])
def test_quote_override_gives_what_hydra_reads_back(override, hydra):
    from aupretrain.config import quote_override

    assert quote_override(override) == hydra
    if override.startswith("data.shards"):
        assert load_config([hydra]).data.shards == override.split("=", 1)[1]
