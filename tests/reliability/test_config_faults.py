"""Bad configs and overrides Hydra cannot parse: every entry point refuses them with one line naming the argument,
the bad value and the fix (exit 2), before any process group, worker or run folder exists; the quoting the
message suggests works, and values that parse keep every character."""
import shlex
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from aupretrain.config import load_config
from tests.conftest import BIN, run_env
from tests.launch import TRAIN, common

PREFIX = "aupretrain-train: error: "
S3 = "s3://bucket/year=2024/month=01/clips"

# (fault name, override, what the one line must contain)
BAD = [
    ("unknown key", "data.batchsize=8", ["unknown key 'data.batchsize'", "did you mean data.batch_size",
                                          "write data.batch_size=8"]),
    ("unknown key without its section", "batch_size=8", ["unknown key 'batch_size'", "data.batch_size"]),
    ("key of an option not chosen", "objective.queue_size=0", ["it is a key of objective=moco: choose that option"]),
    ("key set with + that exists", "+data.batch_size=8", ["data.batch_size exists already",
                                                          "write data.batch_size=8 (without +)"]),
    ("unknown option of a group", "experiment=smok", ["experiment=smok: no such option", "cpu, quickstart, smoke"]),
    ("wrong type", "data.batch_size=four", ["data.batch_size=four (a str): must be a whole number >= 1",
                                            "set e.g. data.batch_size=16"]),
    ("float where a count goes", "train.steps=2.5", ["train.steps=2.5: must be a whole number >= 1"]),
    ("negative batch size", "data.batch_size=-4", ["data.batch_size=-4: must be a whole number >= 1"]),
    ("negative learning rate", "optim.lr=-1e-3", ["optim.lr=-0.001: must be a number >= 0"]),
    ("unknown choice", "data.loader=dalli", ["data.loader=dalli", "one of auto, dali, torch"]),
    ("unknown geometry", "data.geometry=cv2", ["data.geometry=cv2", "one of auto, dali, opencv"]),
    ("clip/frame count out of range", "objective.cir.frames=-2", ["objective.cir.frames=-2", ">= 0"]),
    ("range given as one number", "data.augment.scale=0.5", ["data.augment.scale=0.5: must be two numbers",
                                                             "data.augment.scale=[0.6,1.0]"]),
    ("empty shards path", "data.shards=", ["data.shards is empty: set data.shards to a folder or s3://bucket/"
                                           "prefix written by aupretrain-pack"]),
    ("shards path unset", "data.shards=null", ["data.shards is not set: set data.shards to a folder"]),
    ("missing shards folder", "data.shards={tmp}/nowhere", ["data.shards={tmp}/nowhere: no such folder"]),
    ("shards folder without a manifest", "data.shards={tmp}", ["holds no manifest.json"]),
    ("unparseable override: '=' in the value", f"data.shards={S3}",
     ["Hydra cannot parse the value ('=' at character 29)", f"quote the value for Hydra: data.shards=\"{S3}\"",
      f"typed in a shell: 'data.shards=\"{S3}\"'"]),
    ("unparseable override: '#' in the value", "data.shards=/data/take #2",
     ["'#' at character 24", "data.shards=\"/data/take #2\""]),
    ("unparseable override: '[' in the value", "data.shards=/data/[v2]", ["'[' at character 19",
                                                                          "data.shards=\"/data/[v2]\""]),
    ("unparseable override: non-ASCII letters", "data.shards=/data/Zoë 数据", ["'ë' at character 21",
                                                                              "data.shards=\"/data/Zoë 数据\""]),
    ("unparseable override: ',' in the value", "data.shards=/data/a,b", ["a value with ',' is ambiguous",
                                                                         "data.shards=\"/data/a,b\""]),
    ("unparseable override: quotes in the value", "run.name=it's", ["\"'\" at character 12",
                                                                    "quote the value for Hydra: run.name=\"it's\""]),
    ("not an override", "steps", ["argument 'steps' is not an override: expected key=value"]),
]


@pytest.mark.parametrize("name,override,expect", BAD, ids=[b[0] for b in BAD])
def test_a_bad_setting_is_one_line_naming_it_before_anything_starts(packed, tmp_path, capfd, fault, name,
                                                                    override, expect):
    """The entry point itself (aupretrain.train.main), in this process: exit 2, one line on stderr, nothing
    started (no process group, no run folder)."""
    import torch.distributed as dist

    from aupretrain.train import main

    override = override.format(tmp=tmp_path)
    args = common(packed, tmp_path, **{"tracking.enabled": "false"}) + [override]
    t0 = time.monotonic()
    rc = main(args)
    took = time.monotonic() - t0
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    fault(f"config: {name}", f"exit {rc} after {took:.1f} s, one line: {lines[-1][len(PREFIX):] if lines else ''}",
          detect_s=took)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(PREFIX), err
    for part in expect:
        assert part.format(tmp=tmp_path) in lines[0], (part, lines[0])
    assert not dist.is_initialized() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("value", [
    "/data/take 2", "s3://bucket/a:b@c%20d+e|f*g", "/data/$HOME", "/data/a\\b", "/data/ends\\",  # parse unquoted
])
def test_values_that_parse_unquoted_keep_every_character(value):
    assert load_config([f"data.shards={value}"]).data.shards == value


def test_the_suggested_quoting_round_trips_the_exact_value(packed, tmp_path, fault):
    """Each unparseable value: the message's suggestion, split as a shell would, given to the real script
    (`--cfg`), puts the exact value into the config; the same quoting in a training run reaches the run."""
    values = [S3, "/data/take #2 [v2]", "/data/Zoë 数据 😀", "/data/a,b", "/data/it's \"x\" = y", "~/data/#ends\\"]
    got = {}
    for v in values:
        r = subprocess.run([sys.executable, TRAIN, f"data.shards={v}"], cwd=tmp_path, env=run_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, r.stderr
        suggestion = r.stderr.split("typed in a shell: ", 1)[1].split(" (a quoted value is taken")[0]
        fixed = shlex.split(suggestion)
        assert len(fixed) == 1, suggestion
        r = subprocess.run([sys.executable, TRAIN, "--cfg", *fixed], cwd=tmp_path, env=run_env(),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        got[v] = OmegaConf.create(r.stdout).data.shards
    same = all(got[v] == v for v in values)
    fault("override with '=', '#', '[', ',', quotes or non-ASCII letters",
          f"refused with a quoting suggestion; the suggested argument gives back {'every' if same else 'NOT every'} "
          f"value exactly ({len(values)} values)", data_lost=not same)
    assert same, got


@pytest.mark.slow
def test_torchrun_ranks_refuse_a_bad_setting_together_before_any_process_group(packed, tmp_path, fault):
    """2 ranks under torchrun: every rank parses the arguments; rank 0 alone prints the line, all exit 2 before
    a process group or run folder exists (no rendezvous of the ranks, no DeepSpeed)."""
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", TRAIN,
           *common(packed, tmp_path, **{"tracking.enabled": "false"}), "data.batch_size=-4"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=180)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    lines = [x for x in out.splitlines() if x.startswith(PREFIX)]
    fault("config: negative batch size under torchrun (2 ranks)",
          f"both ranks exit 2 in {took:.1f} s, {len(lines)} line(s) printed: {lines[0][len(PREFIX):] if lines else ''}",
          detect_s=took)
    assert r.returncode != 0 and len(lines) == 1 and "data.batch_size=-4" in lines[0], out[-3000:]
    assert "Initializing TorchBackend" not in out  # DeepSpeed's process group never started
    assert not (tmp_path / "runs").exists()
    assert took < 60, took


@pytest.mark.parametrize("program,argv,expect", [
    ("aupretrain-pack", ["{corpus}", "{tmp}/out", "--clip-len", "0"], "pack.clip_len=0 (--clip-len): must be"),
    ("aupretrain-pack", ["{corpus}", "{tmp}/out", "pack.align=centre"], "pack.align=centre"),
    ("aupretrain-pack", ["{corpus}", "{tmp}/out", "pack.work_dir={tmp}/a#b"],
     "quote the value for Hydra: pack.work_dir=\""),
    ("aupretrain-synth", ["{tmp}/synth", "--frames", "-1"], "synth.frames=-1 (--frames): must be"),
    ("aupretrain-synth", ["{tmp}/synth", "synth.identities=many"], "synth.identities=many (a str)"),
    ("aupretrain-eval", ["{tmp}/no-encoder", "eval.folds=1"], "eval.folds=1: must be a whole number >= 2"),
    ("aupretrain-eval", ["{tmp}/no-encoder", "eval.protocl=linear"], "unknown key 'eval.protocl'"),
    ("aupretrain-extract", ["{tmp}/in.mp4", "{tmp}/o.csv", "--encoder", "{tmp}/e", "pack.detect_every=0"],
     "pack.detect_every=0: must be a whole number >= 1"),
], ids=["pack flag", "pack choice", "pack unparseable", "synth flag", "synth type", "eval range", "eval unknown key",
        "extract"])
def test_other_entry_points_refuse_bad_settings_in_one_line(corpus, tmp_path, capfd, fault, program, argv, expect):
    from aupretrain.cli import evaluate, extract, pack, synth

    mains = {"aupretrain-pack": pack.main, "aupretrain-synth": synth.main, "aupretrain-eval": evaluate.main,
             "aupretrain-extract": extract.main}
    argv = [a.format(corpus=corpus, tmp=tmp_path) for a in argv]
    if program in ("aupretrain-pack", "aupretrain-synth", "aupretrain-extract") and any("=" in a for a in argv):
        argv = [a for a in argv if "=" not in a] + ["--"] + [a for a in argv if "=" in a]
    t0 = time.monotonic()
    rc = mains[program](argv)
    took = time.monotonic() - t0
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith(f"{program}: error: ")]
    fault(f"config: bad setting given to {program}", f"exit {rc} after {took:.1f} s, {len(lines)} line(s): "
          f"{lines[0][len(program) + 9:] if lines else err[-200:]}", detect_s=took)
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "synth").exists()
