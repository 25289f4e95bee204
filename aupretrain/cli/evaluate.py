"""aupretrain-eval ENCODER_OR_RUN [hydra overrides]: AU detection protocol of an encoder (and reference rows).

    aupretrain-eval runs/quickstart-.../encoder.pt eval.folds=3                    # synthetic identities
    aupretrain-eval runs/x dataset=bp4d eval.root=/data/BP4D --save-head heads/bp4d   # BP4D, standard 3 folds
    aupretrain-eval exports/x dataset=disfa eval.root=/data/DISFA protocol=finetune --parent-run RUN_ID
    aupretrain-eval runs/x/encoder.pt --config runs/x/config.yaml --mlflow-run RUN_ID   # what training runs
ENCODER_OR_RUN: a run folder (its encoder.pt), an export folder (model.safetensors + config.json) or an
encoder file. `dataset=NAME` is short for `eval=NAME`, `protocol=P` for `eval.protocol=P`. Results print as a
table and are written to eval.json (+ eval_f1.png, eval_pca.png) in that folder (the encoder file's folder).

MLflow: an evaluation of a run folder (which records its MLflow run in tracking.json) is logged as its own run,
`eval-<dataset>-<protocol>`, nested under the pretraining run in its store and experiment and tagged
`eval.pretraining_run`, `eval.dataset`, `eval.protocol`; `--parent-run RUN_ID` does the same for an export
folder or encoder file (store: tracking.uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db); `--no-mlflow` logs
nothing; a `--parent-run` the store does not have (or a deleted one, or one of another experiment than
tracking.experiment) is refused before anything is evaluated. `--mlflow-run RUN_ID` logs into that run itself, as training's end-of-run evaluation does, and is refused
when the run already holds the results of another dataset or protocol. Datasets, folds and protocol:
docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path


def resolve_encoder(path: str) -> tuple[Path, Path, Path | None]:
    """(what load_encoder reads, the folder outputs go to, the run folder if it is one). Raises
    FileNotFoundError naming the path when it holds no encoder."""
    p = Path(path)
    if p.is_dir():
        if (p / "encoder.pt").is_file():
            return p / "encoder.pt", p, p
        if (p / "model.safetensors").is_file() and (p / "config.json").is_file():
            return p, p, p if (p / "tracking.json").exists() else None
        raise FileNotFoundError(f"{path}: neither a run folder (encoder.pt) nor an export folder "
                                "(model.safetensors + config.json)")
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder")
    folder = p.parent
    return p, folder, folder if (folder / "tracking.json").exists() else None


SHORTHANDS = {"dataset": "eval", "protocol": "eval.protocol"}  # the issue-style names for the eval group's keys


def expand_shorthands(overrides: list[str]) -> list[str]:
    """`dataset=NAME` -> `eval=NAME` (the config group), `protocol=P` -> `eval.protocol=P`; others unchanged."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        out.append(f"{SHORTHANDS[key]}={value}" if eq and key in SHORTHANDS else o)
    return out


@contextlib.contextmanager
def _answer_now():
    """MLflow's HTTP retries off inside (`MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`: a server that is down answers now,
    not after minutes of retries), the variable as it was after."""
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if retries is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = retries


def check_target_run(uri: str, run_id: str, dataset: str, protocol: str) -> None:
    """Refuse (UsageError) to log an evaluation into MLflow run `run_id` that already holds the results of another
    dataset or protocol (tags `eval.dataset`, `eval.protocol`): MLflow shows each metric's value at its highest
    step, so two evaluations in one run would read as one mixed row. A store that cannot be read now is not a
    refusal (the tracker retries in the background)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ..errors import UsageError

    try:
        with _answer_now():
            tags = mlflow.tracking.MlflowClient(uri).get_run(run_id).data.tags
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise UsageError(f"--mlflow-run {run_id}: no such run in the store") from None
        return
    except Exception:  # noqa: BLE001 - an unreachable store: the tracker says so and retries
        return
    held = (tags.get("eval.dataset"), tags.get("eval.protocol", "linear"))
    if held[0] is not None and held != (dataset, protocol):
        raise UsageError(f"--mlflow-run {run_id} already holds the {held[0]} / {held[1]} evaluation; drop "
                         f"--mlflow-run to log this {dataset} / {protocol} one as its own run nested under it "
                         "(--parent-run RUN_ID where the encoder is not in a run folder)")


def check_parent_run(uri: str, run_id: str, experiment: str | None) -> None:
    """Refuse (UsageError, before any evaluation work) to nest an evaluation under `--parent-run run_id` where the
    store at `uri` has no such run: no store there (a sqlite file or folder that does not exist; it is not created),
    no run of that id, a deleted run or a run of a deleted experiment, or, where `experiment` is given (set with
    tracking.experiment, or recorded by the run folder), a run of another experiment. A store that does not answer
    now is not a refusal (the tracker retries in the background)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ..errors import UsageError
    from ..track.store import redact, store_missing

    shown = redact(uri)
    missing = store_missing(uri)
    if missing:
        raise UsageError(f"--parent-run {run_id}: {missing}, so no such run (store: tracking.uri, else "
                         "$MLFLOW_TRACKING_URI, else ./mlflow.db)")
    try:
        with _answer_now():
            client = mlflow.tracking.MlflowClient(uri)
            run = client.get_run(run_id)
            exp = client.get_experiment(run.info.experiment_id)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise UsageError(f"--parent-run {run_id}: no run with this id in {shown}") from None
        return
    except Exception:  # noqa: BLE001 - an unreachable store: the tracker says so and retries
        return
    name = f"run {run_id} ({run.info.run_name or 'no name'}) of experiment {exp.name!r} in {shown}"
    if run.info.lifecycle_stage == "deleted" or exp.lifecycle_stage == "deleted":
        raise UsageError(f"--parent-run {run_id}: the {name} is deleted (its "
                         f"{'run' if run.info.lifecycle_stage == 'deleted' else 'experiment'}); restore it "
                         "(`mlflow runs restore` / `mlflow experiments restore`) or give another run")
    if experiment and exp.name != experiment:
        raise UsageError(f"--parent-run {run_id}: the {name}, not of experiment {experiment!r} "
                         "(tracking.experiment or the run folder's record); give a run of that experiment, or "
                         "drop the experiment setting to log under the run's own")


def eval_tracker(a, cfg, run_dir: Path | None, record: dict | None):
    """The MLflow tracker of this evaluation (see the module docstring), or None for no tracking."""
    from omegaconf import OmegaConf

    from ..track.store import tracking_uri
    from ..track.tracker import Tracker

    if a.no_mlflow:
        return None
    from ..track.store import check_tracking_uri

    check_tracking_uri(tracking_uri(cfg, run_dir), "tracking.uri" if cfg.tracking.uri else "MLFLOW_TRACKING_URI")
    dataset, protocol = str(cfg.eval.get("dataset", "synthetic")), str(cfg.eval.get("protocol", "linear"))
    if a.mlflow_run:
        check_target_run(tracking_uri(cfg, run_dir), a.mlflow_run, dataset, protocol)
        return Tracker(cfg, True, "eval", run_id=a.mlflow_run, run_dir=run_dir)
    parent = a.parent_run or (record or {}).get("run_id")
    if not parent:
        return None
    if a.parent_run:  # refused here, before any frame is read, where the store has no such run
        explicit = [o.split("=", 1)[1] for o in a.overrides if o.lstrip("+").startswith("tracking.experiment=")]
        check_parent_run(tracking_uri(cfg, run_dir), a.parent_run,
                         explicit[-1] if explicit else (record or {}).get("experiment"))
    # a run of its own: eval.* as its params (the pretraining run holds the rest), nothing written to the run folder
    own = OmegaConf.create({"eval": cfg.eval, "tracking": cfg.tracking, "run": {"seed": cfg.run.seed}})
    return Tracker(own, True, f"eval-{dataset}-{protocol}", uri=tracking_uri(cfg, run_dir), parent_run_id=parent,
                   experiment=(record or {}).get("experiment"))


def _threads(value: str) -> int:
    """`--threads`: a whole number >= 1 (argparse's error names the flag and the value otherwise)."""
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number >= 1")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="aupretrain-eval", description=__doc__.splitlines()[0])
    ap.add_argument("encoder", help="run folder, export folder or encoder.pt")
    ap.add_argument("--mlflow-run", help="log eval metrics into this MLflow run itself (training's end-of-run "
                    "evaluation); refused when it holds another dataset's or protocol's results")
    ap.add_argument("--parent-run", help="log this evaluation as its own MLflow run nested under this pretraining "
                    "run (default for a run folder: the run it recorded)")
    ap.add_argument("--no-mlflow", action="store_true", help="log nothing to MLflow")
    ap.add_argument("--config", help="a run's saved config (<run>/config.yaml) instead of configs/; overrides apply on top")
    ap.add_argument("--step", type=int, default=0, help="MLflow step of the eval metrics (training's last step)")
    ap.add_argument("--save-head", metavar="PATH", help="keep a head trained on every frame: PATH/head.safetensors + head.json")
    ap.add_argument("--head", metavar="PATH", help="also score this saved linear AU head as it is, no fitting (a supervised "
                    "run's <run>/au_head, or a --save-head folder): row 'pretrained (saved head)'")
    ap.add_argument("--threads", type=_threads, help="torch CPU threads (default: $OMP_NUM_THREADS, else the CPUs this "
                    "process may use)")
    ap.add_argument("--out", help="folder for eval.json and the plots (default: the encoder's folder)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of configs/ (dataset=bp4d, protocol=finetune, "
                    "eval.root=..., eval.*)")
    a = ap.parse_intermixed_args(argv)  # flags before or after the positionals, then `-- OVERRIDES`
    a.overrides = expand_shorthands(a.overrides)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    from ..config import load_config
    from ..settings import validate
    from ..track.store import read_record
    from ..errors import UsageError
    from ..eval.run import evaluate
    from ..models.encoder import load_encoder
    from ..engine.threads import cpu_threads

    torch.set_num_threads(cpu_threads(a.threads))
    try:
        if a.config:
            from omegaconf import OmegaConf

            try:
                cfg = OmegaConf.merge(OmegaConf.load(a.config), OmegaConf.from_dotlist(a.overrides))
            except Exception as e:  # noqa: BLE001 - omegaconf's errors: an override or the file does not parse
                raise UsageError(f"--config {a.config} with {' '.join(a.overrides) or 'no overrides'}: "
                                 f"{' '.join(str(e).split())}") from None
        else:
            cfg = load_config(a.overrides)
        validate(cfg, ["eval", "model"])
    except UsageError as e:
        print(f"aupretrain-eval: error: {e}", file=sys.stderr)
        return 2
    try:
        enc_path, folder, run_dir = resolve_encoder(a.encoder)
        encoder = load_encoder(enc_path)
        if a.head:  # refused before the frames are read
            from ..eval.head import open_linear_head

            open_linear_head(a.head, encoder.au_dim, encoder, a.encoder)
    except (FileNotFoundError, ValueError) as e:
        print(f"aupretrain-eval: error: {e}", file=sys.stderr)
        return 2
    record = read_record(run_dir) if run_dir is not None else None
    pretraining_run = a.mlflow_run or a.parent_run or (record or {}).get("run_id")
    try:
        tracker = eval_tracker(a, cfg, run_dir, record)
    except UsageError as e:
        print(f"aupretrain-eval: error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out else folder
    out.mkdir(parents=True, exist_ok=True)
    try:
        summary = evaluate(cfg, encoder, tracker, out, step=a.step, save_head=a.save_head,
                           pretraining_run=pretraining_run, head=a.head)
    except BaseException as e:
        if tracker:  # an evaluation run of its own failed; training's run (--mlflow-run) keeps its status
            tracker.finish("FINISHED" if a.mlflow_run else "FAILED")
        if isinstance(e, UsageError):
            print(f"aupretrain-eval: error: {e}", file=sys.stderr)
            return 2
        raise
    if tracker:
        tracker.finish()
    print(json.dumps({"eval": str(out / "eval.json"), "dataset": summary["dataset"], "protocol": summary["protocol"],
                      "f1_mean": next(iter(summary["results"].values()))["f1_mean"],
                      **({"head": summary["head"]} if "head" in summary else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
