"""A new user's field trial of bad settings: each is refused at start by `aupretrain-train` in one line naming the
key and the fix (exit 2, no traceback, no run folder), never a hang, a traceback deep in training, a silent
fallback or a run that ignores the setting. Validation comes before any training, so nothing here trains: the
dataset is a manifest whose shards do not exist (a setting that wrongly passes fails fast in the loader)."""
import copy
import json
import resource
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from aupretrain.config import load_config
from aupretrain.data.shards import FORMAT, Manifest
from aupretrain.errors import UsageError
from aupretrain.settings import validate
from tests.conftest import BIN, run_env

PREFIX = "aupretrain-train: error: "
MEMORY = 6 << 30  # address space of a subprocess: a runaway loop (model.decoder.start=0) fails, not the machine

GOOD = {"format": FORMAT, "samples": 6, "frames": 48, "clip_len": 8, "stride": 2, "size": 64, "fps": None,
        "identities": ["id0"], "videos": 1, "rejects": [], "stats": {}, "settings": {},
        "shards": [{"name": "shard-000000.tar", "index": "shard-000000.idx", "samples": 6, "bytes": 1024,
                    "sha256": "0" * 64}]}


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def dataset(folder, **change):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({**GOOD, **change}))
    return folder


def train_cli(tmp_path, *args, timeout=60, **env):
    """`aupretrain-train` as the user runs it, on a dataset of no shards, tracking off unless asked."""
    shards = dataset(tmp_path / "shards")
    base = ["experiment=smoke", f"data.shards={shards}", "train.eval_at_end=false", f"run.root={tmp_path / 'runs'}",
            "train.steps=1"]
    r = subprocess.run([str(BIN / "aupretrain-train"), *base, *args], cwd=tmp_path, env=run_env(**env),
                       capture_output=True, text=True, timeout=timeout, preexec_fn=_limit)
    lines = [x for x in r.stderr.splitlines() if x.startswith(PREFIX)]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "runs").exists(), list((tmp_path / "runs").iterdir())
    return lines[0][len(PREFIX):]


def cfg(*overrides):
    return load_config(["experiment=smoke", "data.shards=/nowhere", *overrides])


def refused(*overrides, training=False) -> str:
    with pytest.raises(UsageError) as e:
        validate(cfg(*overrides), training=training)
    return str(e.value)


OFF = "tracking.enabled=false"

# (case, arguments, environment, what the one line must say)
CLI = [
    ("decoder start 0 (a hang)", [OFF, "model.decoder.start=0"], {},
     ["model.decoder.start=0: must be a whole number >= 1", "set e.g. model.decoder.start=7"]),
    ("groups that divide no width", [OFF, "model.norm_groups=5"], {},
     ["model.norm_groups=5", "model.stem_width=24", "model.widths=[24, 48, 96, 192]", "model.norm_groups=4"]),
    ("stem stride 0", [OFF, "model.stem_stride=0"], {}, ["model.stem_stride=0: must be a whole number >= 1"]),
    ("delete train.steps", [OFF, "~train.steps"], {},
     ["train.steps has no default in code: it cannot be deleted with ~; set a value instead (e.g. train.steps=1)"]),
    ("delete data.shards", [OFF, "~data.shards"], {}, ["data.shards has no default in code: it cannot be deleted"]),
    ("empty run.dir", [OFF, "run.dir="], {}, ["run.dir is empty", "leave run.dir out (null)"]),
    ("tracking store: a folder", ["tracking.uri={tmp}/some/path"], {},
     ["tracking.uri={tmp}/some/path: MLflow", "tracking.uri=sqlite:///{tmp}/some/path/mlflow.db"]),
    ("tracking store: file://", ["tracking.uri=file://{tmp}/x"], {},
     ["tracking.uri=file://{tmp}/x", "sqlite:///{tmp}/x/mlflow.db", "http(s)://host:port"]),
    ("tracking store: a file", ["tracking.uri={tmp}/shards/manifest.json"], {},
     ["{tmp}/shards/manifest.json is a file", "sqlite:///{tmp}/shards/mlflow.db"]),
    ("tracking store: scheme typo in the environment", [], {"MLFLOW_TRACKING_URI": "htp://host:5000"},
     ["MLFLOW_TRACKING_URI=htp://host:5000 (environment)", "no tracking store for the scheme 'htp:'",
      "did you mean http://host:5000?"]),
    ("+ of a key that is set", [OFF, "train.steps=1", "+train.steps=3"], {},
     ["override +train.steps=3: train.steps exists already; write train.steps=3 (without +)"]),
    ("+ of a typo", [OFF, "+data.batchsize=8"], {},
     ["override +data.batchsize=8", "nothing reads a key added under data", "write data.batch_size=8"]),
    ("DeepSpeed key misspelt", [OFF, "+deepspeed.zero_optimisation.stage=3"], {},
     ["deepspeed.zero_optimisation: not a setting DeepSpeed", "did you mean deepspeed.zero_optimization?",
      "write deepspeed.zero_optimization.stage=3"]),
]


@pytest.mark.parametrize("name,args,env,expect", CLI, ids=[c[0] for c in CLI])
def test_the_field_trial_is_one_line_before_anything_starts(tmp_path, name, args, env, expect):
    line = train_cli(tmp_path, *[a.format(tmp=tmp_path) for a in args], **env)
    for part in expect:
        assert part.format(tmp=tmp_path) in line, (part, line)


def test_a_typo_suggests_only_the_key_meant(tmp_path):
    line = train_cli(tmp_path, OFF, "data.batchsize=8")
    assert "did you mean data.batch_size? write data.batch_size=8" in line, line
    assert "+data.batchsize" not in line and "eval.batch_size" not in line, line


def test_a_manifest_field_of_the_wrong_type_is_one_line(tmp_path):
    shards = dataset(tmp_path / "bad", size="sixty-four")
    line = train_cli(tmp_path, OFF, f"data.shards={shards}")
    assert line == (f"{shards}/manifest.json: field 'size' is \"sixty-four\" (a string), expected a whole number "
                    ">= 0 (pixels); pack the dataset again (aupretrain-pack) or correct the field"), line


def test_model_settings_that_crash_or_hang_are_refused():
    assert "model.decoder.start=0" in refused("model.decoder.start=0")
    assert "model.decoder.norm_groups=0" in refused("model.decoder.norm_groups=0")
    assert "model.decoder.widths=[]" in refused("model.decoder.widths=[]")
    assert "model.decoder.widths=[96, 0]" in refused("model.decoder.widths=[96,0]")
    assert "model.widths=[24, 48.5]" in refused("model.widths=[24,48.5]")
    assert "model.blocks=[1, 1, 1, 1] (4) differ in length" in refused("model.widths=[24,48]")
    assert "model.std=[0, 1, 1]: must be a list of 3 numbers, each > 0" in refused("model.std=[0,1,1]")
    assert "model.mean=[0.5]" in refused("model.mean=[0.5]")
    for key in ("stem_width", "proj_dim", "proj_hidden", "norm_groups"):
        assert f"model.{key}=0: must be a whole number >= 1" in refused(f"model.{key}=0")
    assert "model.decoder.start=100: the decoder's first map is larger" in refused("model.decoder.start=100")


def test_norm_groups_must_divide_the_widths_that_use_group_norm():
    msg = refused("model.decoder.norm_groups=5")
    assert "model.decoder.norm_groups=5" in msg and "model.decoder.widths=[96, 48, 32, 16, 8]" in msg, msg
    assert "model.norm_groups=12 (it divides them all)" in refused("model.norm_groups=16")
    validate(cfg("model.norm=batch", "model.norm_groups=5"))  # BatchNorm: no groups
    validate(cfg("model.norm_groups=48"))  # GroupNorm(min(48, 24), 24) for the 24-wide stem: fine
    validate(cfg("objective=tcl", "model.decoder.norm_groups=5"))  # no decoder is built
    validate(cfg("objective=clp_flow", "model.decoder.norm_groups=5"))  # the linear flow decoder: not this one


def test_decoder_refuses_start_0_instead_of_looping_forever():
    code = ("from aupretrain.methods.decoders import Decoder\n"
            "Decoder(8, 8, 16, (8, 8), start=0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=run_env(),
                       preexec_fn=_limit)
    assert r.returncode == 1 and "ValueError: model.decoder.start must be >= 1" in r.stderr, r.stderr[-2000:]


def test_keys_of_the_tree_cannot_be_deleted():
    from aupretrain.settings import check_present

    for override, says in [("~train.steps", "override ~train.steps: train.steps has no default in code: it cannot be "
                                            "deleted with ~; set a value instead (e.g. train.steps=6)"),
                           ("~data.shards", "data.shards has no default in code"),
                           ("~model.decoder", "model.decoder has no default in code"),
                           ("~model", "model is a config group the code needs (model=resnet18 by default)")]:
        with pytest.raises(UsageError) as e:
            cfg(override)
        assert says in str(e.value), (override, str(e.value))
    cfg("~experiment")  # no option by default: nothing lost
    cfg("+tracking.tags.team=x", "~tracking.tags.team")
    d = OmegaConf.to_container(cfg(), resolve=False)
    for key in ("train.steps", "data.shards", "optim", "model.decoder.start"):
        e = copy.deepcopy(d)
        *parents, leaf = key.split(".")
        node = e
        for p in parents:
            node = node[p]
        del node[leaf]
        with pytest.raises(UsageError, match=rf"^{key} has no default in code: it cannot be deleted with ~"):
            check_present(e)
        with pytest.raises(UsageError, match=rf"^{key} has no default in code"):
            validate(e, training=True)
    for objective in ("clp", "clp_flow", "moco", "supervised", "tcl", "simclr"):
        check_present(OmegaConf.to_container(cfg(f"objective={objective}", "deepspeed=zero0", "eval=bp4d"),
                                             resolve=False))


def test_empty_run_dir_is_refused_and_null_keeps_the_default():
    assert refused("run.dir=").startswith("run.dir is empty (an unset shell variable, as in run.dir=$RUN_DIR?)")
    assert refused("run.dir=' '").startswith("run.dir is ' '")
    assert refused("tracking.uri=").startswith("tracking.uri is empty")
    validate(cfg("run.dir=null"))
    validate(cfg())


@pytest.mark.parametrize("uri,says", [
    ("/tmp/some/path", "sqlite:////tmp/some/path/mlflow.db"),
    ("file:///tmp/x", "does not open a folder as its tracking store"),
    ("file:////tmp/x", "tracking.uri=sqlite:////tmp/x/mlflow.db"),
    ("htp://host:5000", "did you mean http://host:5000?"),
    ("http://:5000", "no host in the URL"),
    ("http://host:99999", "not a URL MLflow can read"),
    ("sqlite:////tmp", "/tmp is a folder, not a database file"),
    ("sqlite:////nowhere/at/all/mlflow.db", "the folder /nowhere/at/all does not exist"),
    ("htp://me:secret@host", "http://me:***@host"),
])
def test_tracking_stores_mlflow_cannot_use_are_refused(uri, says, monkeypatch):
    from aupretrain.track.store import check_tracking_uri

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UsageError) as e:
        check_tracking_uri(uri)
    assert str(e.value).startswith("tracking.uri=") and says in str(e.value), str(e.value)
    assert "secret" not in str(e.value)


def test_tracking_stores_mlflow_can_use_pass(tmp_path, monkeypatch):
    from aupretrain.track.store import check_tracking_uri

    for uri in ("http://host:5000", "https://me:pw@host", "sqlite:///mlflow.db", f"sqlite:///{tmp_path}/m.db",
                "postgresql://u@h/db", "postgresql+psycopg2://u@h/db", "mysql+pymysql://u@h/db", "mssql://u@h/db",
                "databricks", "databricks://profile"):
        check_tracking_uri(uri)
    check_tracking_uri(f"sqlite:///{tmp_path}/runs/x/mlflow.db", will_exist=[tmp_path / "runs" / "x"])
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own switch to open a folder
    check_tracking_uri(str(tmp_path))
    with pytest.raises(UsageError, match="is a file"):
        check_tracking_uri(str(dataset(tmp_path / "d") / "manifest.json"))


def test_the_environment_store_is_checked_unless_the_run_records_another(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "htp://host:5000")
    shards = dataset(tmp_path / "shards")
    c = load_config(["experiment=smoke", f"data.shards={shards}"])
    with pytest.raises(UsageError, match=r"^MLFLOW_TRACKING_URI=htp://host:5000 \(environment\)"):
        validate(c, training=True)
    validate(load_config(["experiment=smoke", f"data.shards={shards}", "tracking.enabled=false"]), training=True)
    validate(load_config(["experiment=smoke", f"data.shards={shards}", "tracking.uri=http://h:5000"]), training=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "tracking.json").write_text(json.dumps({"uri": "http://h:5000", "experiment": "x", "run_id": "1"}))
    validate(load_config(["experiment=smoke", f"data.shards={shards}", f"run.dir={run}"]), training=True)


def test_plus_overrides_name_themselves_and_add_no_key_nothing_reads():
    with pytest.raises(UsageError) as e:
        cfg("train.steps=1", "+train.steps=3")
    assert str(e.value).startswith("override +train.steps=3: train.steps exists already"), str(e.value)
    for override, says in [("+data.batchsize=8", "did you mean data.batch_size? write data.batch_size=8"),
                           ("++data.batchsize=8", "did you mean data.batch_size? write data.batch_size=8"),
                           ("+objective.queue_size=9", "it is a key of objective=moco: choose that option first"),
                           ("+train.zzz=1", "train takes no new keys")]:
        with pytest.raises(UsageError) as e:
            cfg(override)
        assert str(e.value).startswith(f"override {override}: ") and says in str(e.value), str(e.value)
        assert "write +" not in str(e.value)
    with pytest.raises(UsageError) as e:
        cfg("data.batchsize=8")
    assert "write data.batch_size=8" in str(e.value) and "+data.batchsize" not in str(e.value), str(e.value)
    assert cfg("++data.batch_size=8").data.batch_size == 8  # `++` of a key that is there: a change
    assert cfg("+tracking.tags.team=vision").tracking.tags.team == "vision"  # open mappings take new names
    assert cfg("+eval.splits.pretraining={first_identity: 900000, seed: 1}").eval.splits.pretraining.seed == 1
    assert cfg("+paths.root=/data").paths.root == "/data"  # a new section: variables to interpolate


def test_deepspeed_keys_it_does_not_read_are_refused(tmp_path):
    from omegaconf import OmegaConf

    from aupretrain.settings import check_deepspeed_keys

    for override, says in [("+deepspeed.zero_optimisation.stage=3", "did you mean deepspeed.zero_optimization?"),
                           ("+deepspeed.gradient_clipin=1", "write deepspeed.gradient_clipping=1"),
                           ("+deepspeed.no_such_setting_at_all=1", "not a setting DeepSpeed")]:
        with pytest.raises(UsageError) as e:
            check_deepspeed_keys(OmegaConf.to_container(cfg(override).deepspeed))
        assert says in str(e.value), str(e.value)
    shards = dataset(tmp_path / "shards")
    with pytest.raises(UsageError, match=r"^deepspeed.zero_optimisation: "):
        validate(load_config([f"data.shards={shards}", "+deepspeed.zero_optimisation.stage=3"]), training=True)
    check_deepspeed_keys(OmegaConf.to_container(cfg("+deepspeed.zero_allow_untested_optimizer=true").deepspeed))
    for stage in ("zero0", "zero1", "zero2", "zero3"):
        check_deepspeed_keys(OmegaConf.to_container(cfg(f"deepspeed={stage}").deepspeed))


@pytest.mark.parametrize("field,value,says", [
    ("size", "sixty-four", "field 'size' is \"sixty-four\" (a string), expected a whole number >= 0"),
    ("samples", -1, "field 'samples' is -1"),
    ("clip_len", 8.5, "field 'clip_len' is 8.5 (a number)"),
    ("stride", True, "field 'stride' is true"),
    ("fps", "25", "field 'fps' is \"25\""),
    ("identities", "id0", "field 'identities'"),
    ("stats", [], "field 'stats'"),
    ("shards", [{**GOOD["shards"][0], "samples": -6}], "shard entry 0 field 'samples' is -6"),
])
def test_manifest_fields_of_the_wrong_type_are_one_usage_error(field, value, says):
    with pytest.raises(UsageError) as e:
        Manifest.from_json(json.dumps({**GOOD, field: value}), "ds/manifest.json")
    assert str(e.value).startswith("ds/manifest.json: ") and says in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    m = Manifest.from_json(json.dumps(GOOD))
    assert m.size == 64 and m.shards[0].samples == 6
    legacy = {k: v for k, v in GOOD.items() if k not in ("fps", "videos", "stats")}  # absent: the defaults
    assert Manifest.from_json(json.dumps(legacy)).videos == 0
