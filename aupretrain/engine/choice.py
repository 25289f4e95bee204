"""Which checkpoint a job resumes from (`train.resume`), and whether a checkpoint holds what loading it needs.

A checkpoint folder `<run>/checkpoints/step_<N>/` counts once its COMPLETE marker is there (written last, by rank 0,
`checkpoint.save`). A COMPLETE checkpoint can still lose a file afterwards — a partial copy or sync between file
systems, a clean-up script, a damaged disk — and DeepSpeed's `load_checkpoint` then fails deep inside with an
assertion that names neither the checkpoint nor the file. `problems` checks the files DeepSpeed will open before
anything is loaded: a job resuming on its own (`train.resume=auto`, a run folder as PATH) falls back to the newest
whole checkpoint with a warning naming what the newer one lacks; a checkpoint named as PATH that is not whole is
refused with one line naming the file.
"""
from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

from ..errors import UsageError
from .checkpoint import COMPLETE, latest, root
from .distributed import broadcast_object

log = logging.getLogger("aupretrain.train")

STEP = re.compile(r"step_(\d+)")


def _archive_problem(f: Path) -> str | None:
    """Why `f` is not a `torch.save` file DeepSpeed can open (missing, empty, not a readable zip archive), or None.
    Opening the archive reads its central directory, at the end of the file: a truncated copy fails here."""
    if not f.is_file():
        return f"{f.name} is missing"
    if f.stat().st_size == 0:
        return f"{f.name} is empty"
    try:
        with zipfile.ZipFile(f):
            return None
    except (zipfile.BadZipFile, OSError) as e:
        return f"{f.name} is damaged ({e})"


def problems(ckpt_dir: str | Path) -> list[str]:
    """What keeps a COMPLETE checkpoint folder from loading, one phrase each; [] for a whole one.

    Checked: meta.json (present, JSON, with the run's config); the model-states and optimizer-states files
    DeepSpeed 0.19's `load_checkpoint` opens, by its names (`DeepSpeedEngine._get_ckpt_name`,
    `_get_rank_zero_ckpt_name`): ZeRO stages 0–2 `mp_rank_00_model_states.pt`, stage 3
    `zero_pp_rank_<r>_mp_rank_00_model_states.pt` for every rank r < world_size; stages 1–3 (and any run that wrote
    optimizer partitions, as bf16 does) `[bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt` for every r — each
    present, non-empty and a readable zip archive. The tensors are not read (a checkpoint of many GB is checked in
    milliseconds); `vetting.vet` then checks what each file would run.
    """
    d = Path(ckpt_dir)
    try:
        meta = json.loads((d / "meta.json").read_text())
        stage = int(meta["config"]["deepspeed"]["zero_optimization"]["stage"])
        world = int(meta.get("world_size", 1))
    except FileNotFoundError:
        return ["meta.json is missing"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [f"meta.json is unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})"]
    found = []
    models = ([f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)] if stage == 3
              else ["mp_rank_00_model_states.pt"])
    found += [p for name in models if (p := _archive_problem(d / name))]
    if stage >= 1 or any(d.glob("*zero_pp_rank_*_optim_states.pt")):
        for r in range(world):
            names = [f"{pre}zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for pre in ("", "bf16_")]
            f = next((d / n for n in names if (d / n).exists()), d / names[0])
            if p := _archive_problem(f):
                found.append(p if f.exists() else f"{names[0]} (or {names[1]}) is missing")
    return found


def newest_whole(run_dir: str | Path, above: int | None = None) -> tuple[tuple[int, Path] | None, list[str]]:
    """The newest COMPLETE checkpoint of a run folder that `problems` finds whole (or None), and one line for each
    newer COMPLETE one passed over ("<folder>: <what is wrong>"). `above`: only checkpoints of a later step count
    (`aupretrain-export`: those newer than the run's encoder.pt)."""
    done = sorted(((int(m.group(1)), p) for p in root(run_dir).glob("step_*")
                   if (m := STEP.fullmatch(p.name)) and (above is None or int(m.group(1)) > above)
                   and (p / COMPLETE).exists()), reverse=True)
    skipped = []
    for step, p in done:
        wrong = problems(p)
        if not wrong:
            return (step, p), skipped
        skipped.append(f"{p}: {'; '.join(wrong)}")
    return None, skipped


def _whole_or_refuse(run_dir: str | Path, what: str) -> tuple[int, Path] | None:
    """`newest_whole`, with a warning for each checkpoint passed over (a COMPLETE one that lost a file; a newer
    half-written one, without its COMPLETE marker); UsageError when checkpoints exist and none is whole (starting
    over there would prune them)."""
    found, skipped = newest_whole(run_dir)
    half = sorted((int(m.group(1)), p) for p in root(run_dir).glob("step_*")
                  if (m := STEP.fullmatch(p.name)) and not (p / COMPLETE).exists())
    newer = [p.name for step, p in half if found is None or step > found[0]]
    if newer:
        log.warning("%s: %s %s no %s marker (a job stopped while writing %s): not resumed from; %s", root(run_dir),
                    ", ".join(newer), "has" if len(newer) == 1 else "have", COMPLETE,
                    "it" if len(newer) == 1 else "them",
                    f"resuming from {found[1].name}" if found else "no complete checkpoint: starting from step 0")
    if skipped and found is None:
        raise UsageError(f"{what}: no checkpoint there can be loaded — {' | '.join(skipped)}; restore the missing "
                         f"files (a copy of the run folder, the sync that cut them short), or move "
                         f"{root(run_dir)} away to start over")
    for s in skipped:
        log.warning("skipping checkpoint %s (marked COMPLETE, but it cannot be loaded); resuming from the newest "
                    "whole one, %s", s, found[1])
    return found


def _named(resume) -> tuple[int, Path]:
    """The checkpoint a `train.resume=PATH` names: a checkpoint folder, or the newest whole one of a run folder."""
    p = Path(str(resume))
    if not p.exists():
        raise UsageError(f"train.resume={resume}: no such file or folder (expected a run folder or its "
                         "checkpoints/step_<N> folder)")
    if not p.is_dir():
        raise UsageError(f"train.resume={resume} is a file; expected a run folder or its checkpoints/step_<N> folder")
    if STEP.fullmatch(p.name) and not (p / "checkpoints").is_dir():
        if not (p / COMPLETE).exists():
            newest = latest(p.parent.parent)
            raise UsageError(f"train.resume={resume}: a half-written checkpoint (no {COMPLETE} marker: the job "
                             "writing it stopped before it finished)"
                             + (f"; the newest complete one of that run is {newest[1]}" if newest else ""))
        if wrong := problems(p):
            raise UsageError(f"train.resume={resume}: this checkpoint cannot be loaded: {'; '.join(wrong)}")
        return int(STEP.fullmatch(p.name).group(1)), p.resolve()
    if not root(p).is_dir():
        raise UsageError(f"train.resume={resume}: no checkpoints/ folder there (expected a run folder or its "
                         "checkpoints/step_<N> folder)")
    found = _whole_or_refuse(p, f"train.resume={resume}")
    if found is None:
        raise UsageError(f"train.resume={resume}: no complete checkpoint there (only half-written ones, without a "
                         f"{COMPLETE} marker)")
    return found[0], found[1].resolve()


def resolve(run_dir: str | Path, resume) -> tuple[int, Path] | None:
    """The checkpoint to resume from for `train.resume`: `auto` (or true) = the newest whole checkpoint in run_dir
    (a newer COMPLETE one that `problems` rejects is passed over with a warning), if any; `never` (or false) = none,
    and run_dir must hold no complete checkpoint; a path = that checkpoint folder (`.../step_<N>`, which must be
    complete and whole) or the newest whole checkpoint of that run folder — for a run's first job: once run_dir
    holds checkpoints of its own, a path outside run_dir gives way to them (the same command, relaunched,
    continues the run, as torchtitan's `initial_load_path`), while a path inside run_dir (one of its own, older
    checkpoints) is taken as given.

    Raises:
        UsageError: a path that does not exist, is a file, is a half-written or damaged checkpoint, or a run
            folder with no loadable checkpoint; `never` in a run folder that holds checkpoints (starting over
            there would prune and replace them with another run's); `auto` where every checkpoint is damaged.
    """
    if resume in (False, None, "never", "false"):
        own = latest(run_dir)
        if own is not None:
            raise UsageError(f"train.resume=never: run.dir={run_dir} already holds a run's checkpoints (newest: "
                             f"{own[1].name}); a new run there would prune them and be mixed up with them on the "
                             f"next relaunch — give a new run.dir, or remove {root(run_dir)} first")
        return None
    if resume in (True, "auto", "true"):
        return _whole_or_refuse(run_dir, f"run.dir={run_dir}")
    found = _named(resume)
    inside = root(run_dir).resolve() in found[1].parents
    if not inside and latest(run_dir) is not None:
        own = _whole_or_refuse(run_dir, f"run.dir={run_dir}")
        log.info("train.resume=%s: run.dir holds its own checkpoints; continuing from %s (step %d)", resume, own[1],
                 own[0])
        return own
    return found


def choose(run_dir: str | Path, resume, is_main: bool, rank: int) -> tuple[int, Path] | None:
    """`resolve` on rank 0, broadcast to every rank (NFS caches and node-local views differ between ranks), so
    all ranks load the same checkpoint; a UsageError is raised on every rank alike.

    Raises:
        UsageError: `resolve` refused the setting, or this rank cannot see the chosen checkpoint.
    """
    choice = None
    if is_main:
        try:
            choice = ("ok", resolve(run_dir, resume))
        except UsageError as e:
            choice = ("error", str(e))
    kind, found = broadcast_object(choice)
    if kind == "error":
        raise UsageError(found)
    if found and not (found[1] / COMPLETE).exists():
        raise UsageError(f"rank {rank} cannot see {found[1]}, the checkpoint rank 0 resumes from: run.dir must be "
                         "on storage every rank shares")
    return found
