"""`engine.vetting.vet`: checkpoint files are admitted only when loading them cannot run code — including the
`getattr(EnumClass, "MEMBER")` form in which some Python 3.11 releases pickle DeepSpeed's ZeroStageEnum, and
nothing else that getattr could reach."""
import pickle

import pytest
import torch

from aupretrain.errors import UsageError


class GetattrPickle:
    """Pickles as getattr(owner, name), as Debian's Python 3.11.2 pickles an enum member."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return getattr, (self.owner, self.name)


def saved(tmp_path, obj, name="optim_states.pt"):
    torch.save({"ds_config": {"zero_stage": obj}, "state": torch.zeros(2)}, tmp_path / name)
    return tmp_path


def test_enum_members_pickled_by_name_are_admitted(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from aupretrain.engine.checkpoint import vet

    two = [GetattrPickle(ZeroStageEnum, "optimizer_states"), GetattrPickle(ZeroStageEnum, "weights")]
    vet(saved(tmp_path, two))  # the second getattr and enum class come from the pickle memo
    back = torch.load(tmp_path / "optim_states.pt", weights_only=False)  # what DeepSpeed then does
    assert back["ds_config"]["zero_stage"] == [ZeroStageEnum.optimizer_states, ZeroStageEnum.weights]


@pytest.mark.parametrize("owner, name", [("enum", "__init__"), ("enum", "__class__"), ("scaler", "update_scale"),
                                         ("enum", "disabled_but_not_a_member")])
def test_getattr_reaching_anything_but_an_enum_member_is_refused(tmp_path, owner, name):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from aupretrain.engine.checkpoint import vet

    cls = ZeroStageEnum if owner == "enum" else LossScaler
    with pytest.raises(UsageError, match="would call builtins.getattr"):
        vet(saved(tmp_path, GetattrPickle(cls, name)))


def test_a_good_getattr_does_not_cover_a_later_bad_one(tmp_path):
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from aupretrain.engine.checkpoint import vet

    with pytest.raises(UsageError, match="would call builtins.getattr"):
        vet(saved(tmp_path, [GetattrPickle(ZeroStageEnum, "weights"), GetattrPickle(ZeroStageEnum, "__reduce__")]))


class CallPickle:
    """Pickles as a call of fn(): any other global a file could name."""

    def __init__(self, fn):
        self.fn = fn

    def __reduce__(self):
        return self.fn, ()


def test_other_globals_beside_getattr_are_refused(tmp_path):
    import os

    from deepspeed.runtime.zero.config import ZeroStageEnum

    from aupretrain.engine.checkpoint import vet

    with pytest.raises(UsageError, match=r"builtins.getattr, (posix|os).getcwd"):
        vet(saved(tmp_path, [GetattrPickle(ZeroStageEnum, "weights"), CallPickle(os.getcwd)]))


@pytest.mark.parametrize("protocol", [2, 4])
def test_the_shape_is_read_in_both_pickle_protocols(tmp_path, protocol):
    """Protocol 2 (torch.save's default) names globals with GLOBAL and memoizes with BINPUT; protocol 4 with
    STACK_GLOBAL over memoized strings, MEMOIZE and FRAME."""
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from aupretrain.engine.vetting import getattr_only_reads_enum_members

    good = [GetattrPickle(ZeroStageEnum, "weights"), GetattrPickle(ZeroStageEnum, "gradients"),
            GetattrPickle(ZeroStageEnum, "weights")]  # the repeated name string comes back from the memo
    bad = [GetattrPickle(ZeroStageEnum, "weights"), GetattrPickle(ZeroStageEnum, "__init__")]
    assert getattr_only_reads_enum_members(pickle.dumps(good, protocol=protocol))
    assert not getattr_only_reads_enum_members(pickle.dumps(bad, protocol=protocol))
