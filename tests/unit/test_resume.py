"""What a resumed job may change (engine/resume.py), decided before anything is loaded."""
import pytest
from omegaconf import OmegaConf

from aupretrain.config import load_config
from aupretrain.engine.resume import check_resume
from aupretrain.errors import UsageError


def cfg(*overrides) -> dict:
    return OmegaConf.to_container(load_config(list(overrides)), resolve=True)


def test_applicable_changes_are_returned_and_others_refused_naming_each_key():
    old = {"world_size": 2, "config": cfg()}
    changes = check_resume(old, cfg("optim.lr=1e-4", "train.steps=50"), 2, "ck")
    assert changes == {"optim.lr": ("0.002", "0.0001"), "train.steps": ("1000", "50")}
    with pytest.raises(UsageError, match=r"model.au_dim \(256 -> 128\).*run.seed \(0 -> 3\)"):
        check_resume(old, cfg("model.au_dim=128", "run.seed=3"), 2, "ck")


def test_world_size_change_goes_through_universal_checkpoints_for_zero_1_2_only():
    assert check_resume({"world_size": 2, "config": cfg()}, cfg(), 1, "ck") == {"world_size": ("2", "1"),
                                                                                "global_batch": ("32", "16")}
    scaled = cfg("optim.lr_scaling=linear", "deepspeed.gradient_accumulation_steps=2")
    assert check_resume({"world_size": 1, "config": scaled}, scaled, 2, "ck")[
        "global_batch (optim.lr_scaling=linear: the peak LR follows it)"] == ("32", "64")
    z3 = cfg("deepspeed=zero3")
    with pytest.raises(UsageError, match="written by 2 ranks and this job has 1.*not stage 3"):
        check_resume({"world_size": 2, "config": z3}, z3, 1, "ck")


def test_checkpoint_of_an_older_version_is_refused_as_such():
    old = cfg()
    del old["optim"]["name"]
    with pytest.raises(UsageError, match="older aupretrain without the settings optim.name"):
        check_resume({"world_size": 1, "config": old}, cfg(), 1, "ck")


def test_a_stop_at_not_beyond_the_checkpoint_is_refused_before_anything_is_loaded():
    """Field report: train.stop_at=8 on a run checkpointed at step 10 wrote "stopped at step 8" and a stop record
    behind the newest checkpoint (after converting it for another world size)."""
    c = cfg("train.steps=60", "train.stop_at=8")
    with pytest.raises(UsageError, match=r"ck is at step 10 and train.stop_at=8 is not beyond it: .*raise "
                                         r"train.stop_at above 10, or drop it \(train.stop_at=null\)"):
        check_resume({"world_size": 1, "step": 10, "config": c}, c, 1, "ck")
    with pytest.raises(UsageError, match="train.stop_at=10 is not beyond it"):
        check_resume({"world_size": 1, "step": 10, "config": c}, cfg("train.steps=60", "train.stop_at=10"), 1, "ck")
    assert check_resume({"world_size": 1, "step": 10, "config": c}, cfg("train.steps=60", "train.stop_at=12"), 1,
                        "ck") == {"train.stop_at": ("8", "12")}
    with pytest.raises(UsageError, match="at step 60 and train.stop_at=8"):  # a finished run: no stop record at 8
        check_resume({"world_size": 1, "step": 60, "config": c}, c, 1, "ck")
    assert "train.stop_at" in check_resume({"world_size": 1, "step": 60, "config": c},
                                           cfg("train.steps=60", "train.stop_at=60"), 1, "ck")
