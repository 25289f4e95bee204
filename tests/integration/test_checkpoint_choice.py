"""Rank 0 decides which checkpoint a job resumes from and every rank loads that one, whatever its own view of
the run folder (NFS attribute caches, node-local disks); a refusal on rank 0 is raised on every rank. A checkpoint
marked COMPLETE that lost a file DeepSpeed opens is passed over (auto) or refused by name (named as PATH)."""
from __future__ import annotations

import json

from tests.conftest import on_two_ranks


def _choose(rank, run_dir, resume):
    from aupretrain.engine import checkpoint, choice
    from aupretrain.errors import UsageError

    if rank == 1:  # a stale view: this rank believes step 6 is the newest complete checkpoint
        real = checkpoint.latest
        checkpoint.latest = lambda d: (6, checkpoint.root(d) / "step_6") if real(d) else None
    try:
        found = choice.choose(run_dir, resume, rank == 0, rank)
        return found[0] if found else None
    except UsageError as e:
        return f"UsageError: {e}"


def choices(run_dir, resume):
    return on_two_ranks(_choose, str(run_dir), resume)


def fake_checkpoint(d, complete=True, stage=1, world=2):
    """A checkpoint folder with the files DeepSpeed's load_checkpoint opens (tiny torch.save archives)."""
    import torch

    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"step": int(d.name.split("_")[1]), "world_size": world,
                                             "config": {"deepspeed": {"zero_optimization": {"stage": stage}}}}))
    models = ([f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)] if stage == 3
              else ["mp_rank_00_model_states.pt"])
    optims = [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)] if stage else []
    for name in models + optims:
        torch.save({"x": torch.zeros(2)}, d / name)
    if complete:
        (d / "COMPLETE").write_text("ok\n")
    return d


def test_ranks_agree_on_resume_step(tmp_path):
    run = tmp_path / "run"
    for step, complete in ((2, True), (4, True), (6, False)):  # step 6 was cut off mid-write
        fake_checkpoint(run / "checkpoints" / f"step_{step}", complete)
    assert choices(run, "auto") == {0: 4, 1: 4}  # rank 1's stale view of step 6 is not used
    never = choices(run, "never")  # a run's checkpoints are never pruned away by a new run in the same folder
    assert never[0] == never[1] and "train.resume=never" in never[0] and "already holds" in never[0]
    assert choices(tmp_path / "fresh", "never") == {0: None, 1: None}
    other = fake_checkpoint(tmp_path / "other" / "checkpoints" / "step_8")
    assert choices(tmp_path / "fresh", str(other)) == {0: 8, 1: 8}  # a run's first job starts from PATH ...
    assert choices(run, str(other)) == {0: 4, 1: 4}  # ... and once the run has its own, relaunches continue them
    assert choices(run, str(run / "checkpoints" / "step_2")) == {0: 2, 1: 2}  # its own older one: as given
    bad = choices(run, str(tmp_path / "elsewhere"))  # refused on rank 0: the same error on both ranks
    assert bad[0] == bad[1] and bad[0].startswith("UsageError: train.resume=") and "no such file or folder" in bad[0]


def test_a_checkpoint_that_lost_a_file_is_passed_over_or_refused_by_name(tmp_path):
    from aupretrain.engine import choice

    run = tmp_path / "run"
    for step in (2, 4):
        fake_checkpoint(run / "checkpoints" / f"step_{step}")
    damaged = run / "checkpoints" / "step_4"
    (damaged / "mp_rank_00_model_states.pt").unlink()  # a partial copy, a clean-up script
    assert choice.problems(run / "checkpoints" / "step_2") == []
    assert choice.problems(damaged) == ["mp_rank_00_model_states.pt is missing"]
    assert choices(run, "auto") == {0: 2, 1: 2}  # the newest whole one, not a DeepSpeed assertion
    named = choices(tmp_path / "fresh", str(damaged))
    assert named[0] == named[1] and "cannot be loaded: mp_rank_00_model_states.pt is missing" in named[0]
    assert choices(tmp_path / "fresh", str(run)) == {0: 2, 1: 2}  # a run folder as PATH: its newest whole one
    # an optimizer partition truncated (a copy cut short), empty, or missing for one rank
    (run / "checkpoints" / "step_2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"PK\x03\x04trunc")
    assert choice.problems(run / "checkpoints" / "step_2")[0].startswith(
        "zero_pp_rank_1_mp_rank_00_optim_states.pt is damaged")
    every = choices(run, "auto")  # nothing loadable: refused, so a new run does not prune what may be restored
    assert every[0] == every[1] and "no checkpoint there can be loaded" in every[0] and "step_4" in every[0]
    z3 = fake_checkpoint(tmp_path / "z3" / "checkpoints" / "step_3", stage=3)
    (z3 / "zero_pp_rank_1_mp_rank_00_model_states.pt").write_bytes(b"")
    (z3 / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    assert choice.problems(z3) == ["zero_pp_rank_1_mp_rank_00_model_states.pt is empty",
                                   "zero_pp_rank_0_mp_rank_00_optim_states.pt (or bf16_zero_pp_rank_0_mp_rank_00_"
                                   "optim_states.pt) is missing"]
    (z3 / "meta.json").write_text("{")
    assert choice.problems(z3)[0].startswith("meta.json is unreadable")


def test_resume_paths_that_are_not_checkpoints_each_get_their_own_message(tmp_path):
    from aupretrain.engine import choice
    from aupretrain.errors import UsageError

    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoints" / "step_2")
    half = fake_checkpoint(run / "checkpoints" / "step_4", complete=False)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    only_half = tmp_path / "halfrun"
    fake_checkpoint(only_half / "checkpoints" / "step_1", complete=False)
    for path, said in ((tmp_path / "nothing", "no such file or folder"),
                       (tmp_path / "afile", "is a file; expected a run folder"),
                       (half, f"a half-written checkpoint (no COMPLETE marker: the job writing it stopped before it "
                              f"finished); the newest complete one of that run is {run / 'checkpoints' / 'step_2'}"),
                       (tmp_path / "empty", "no checkpoints/ folder there"),
                       (only_half, "no complete checkpoint there (only half-written ones")):
        try:
            choice.resolve(tmp_path / "new", str(path))
            raise AssertionError(f"{path} was accepted")
        except UsageError as e:
            assert said in str(e) and str(e).startswith(f"train.resume={path}"), str(e)


def test_newest_whole_above_a_step_counts_only_later_checkpoints(tmp_path):
    """`aupretrain-export` asks for a checkpoint newer than the run's encoder.pt: only later steps count, and only
    those are reported when passed over."""
    from aupretrain.engine import choice

    run = tmp_path / "run"
    for step in (2, 4, 6):
        fake_checkpoint(run / "checkpoints" / f"step_{step}")
    (run / "checkpoints" / "step_6" / "mp_rank_00_model_states.pt").unlink()
    assert choice.newest_whole(run)[0] == (4, run / "checkpoints" / "step_4")
    assert choice.newest_whole(run, above=2)[0] == (4, run / "checkpoints" / "step_4")
    found, skipped = choice.newest_whole(run, above=4)
    assert found is None and skipped == [f"{run / 'checkpoints' / 'step_6'}: mp_rank_00_model_states.pt is missing"]
    assert choice.newest_whole(run, above=6) == (None, [])
