"""Rank 0 decides which checkpoint a job resumes from and every rank loads that one, whatever its own view of
the run folder (NFS attribute caches, node-local disks); a refusal on rank 0 is raised on every rank."""
from __future__ import annotations

from tests.conftest import on_two_ranks


def _choose(rank, run_dir, resume):
    from aupretrain.engine import checkpoint
    from aupretrain.errors import UsageError

    if rank == 1:  # a stale view: this rank believes step 6 is the newest complete checkpoint
        real = checkpoint.latest
        checkpoint.latest = lambda d: (6, checkpoint.root(d) / "step_6") if real(d) else None
    try:
        found = checkpoint.choose(run_dir, resume, rank == 0, rank)
        return found[0] if found else None
    except UsageError as e:
        return f"UsageError: {e}"


def choices(run_dir, resume):
    return on_two_ranks(_choose, str(run_dir), resume)


def test_ranks_agree_on_resume_step(tmp_path):
    run = tmp_path / "run"
    for step, complete in ((2, True), (4, True), (6, False)):  # step 6 was cut off mid-write
        d = run / "checkpoints" / f"step_{step}"
        d.mkdir(parents=True)
        if complete:
            (d / "COMPLETE").write_text("ok\n")
    assert choices(run, "auto") == {0: 4, 1: 4}  # rank 1's stale view of step 6 is not used
    never = choices(run, "never")  # a run's checkpoints are never pruned away by a new run in the same folder
    assert never[0] == never[1] and "train.resume=never" in never[0] and "already holds" in never[0]
    assert choices(tmp_path / "fresh", "never") == {0: None, 1: None}
    other = tmp_path / "other" / "checkpoints" / "step_8"
    other.mkdir(parents=True)
    (other / "COMPLETE").write_text("ok\n")
    assert choices(tmp_path / "fresh", str(other)) == {0: 8, 1: 8}  # a run's first job starts from PATH ...
    assert choices(run, str(other)) == {0: 4, 1: 4}  # ... and once the run has its own, relaunches continue them
    assert choices(run, str(run / "checkpoints" / "step_2")) == {0: 2, 1: 2}  # its own older one: as given
    bad = choices(run, str(tmp_path / "elsewhere"))  # refused on rank 0: the same error on both ranks
    assert bad[0] == bad[1] and bad[0].startswith("UsageError: train.resume=") and "no complete checkpoint" in bad[0]
