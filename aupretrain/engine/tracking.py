"""MLflow tracking from rank 0 (DeepSpeed has no MLflow monitor); other ranks get the run id."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..config import flatten

log = logging.getLogger(__name__)


def tracking_uri(cfg: DictConfig) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else a sqlite store in the folder the run started from."""
    return cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


class Tracker:
    """Thin wrapper: a no-op on ranks other than 0 and when tracking is disabled."""

    def __init__(self, cfg: DictConfig, active: bool, run_name: str, run_id: str | None = None):
        self.active = bool(active and cfg.tracking.enabled)
        self.run_id: str | None = None
        if not self.active:
            return
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri(cfg))
        mlflow.set_experiment(cfg.tracking.experiment)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        self.run_id = run.info.run_id
        if run_id is None:
            params = flatten(cfg)
            items = list(params.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i:i + 100]))
            mlflow.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            mlflow.set_tags({"objective": cfg.objective.name, **{str(k): str(v) for k, v in cfg.tracking.tags.items()}})
        log.info("MLflow run %s at %s", self.run_id, mlflow.get_tracking_uri())

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.active and metrics:
            self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_params(self, params: dict) -> None:
        if self.active:
            self.mlflow.log_params({k: str(v) for k, v in params.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.mlflow.log_artifact(str(path), artifact_path)

    def log_figure(self, fig, name: str) -> None:
        if self.active:
            self.mlflow.log_figure(fig, name)

    def log_text(self, text: str, name: str) -> None:
        if self.active:
            self.mlflow.log_text(text, name)

    def finish(self, status: str = "FINISHED") -> None:
        if self.active:
            self.mlflow.end_run(status=status)
            self.active = False
