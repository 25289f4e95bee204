"""MLflow tracking that never stops training: rank 0 only, every call queued to one background thread.

DeepSpeed has no MLflow monitor, and `mlflow.log_*` blocks on the store (HTTP retries for minutes; a locked
sqlite file raises "database is locked"). Here the training loop only appends to a queue; a worker thread
owns an `MlflowClient` and sends the queue in order. When the store fails (server down or restarting,
sqlite locked, network), the worker warns once, keeps the queue and retries with exponential backoff (1 s
up to `tracking.retry_max_s`), then says how long the gap was and sends what waited. The queue is bounded
(`tracking.max_pending` operations; beyond it the oldest metric batches are dropped and counted). Every
metric is also appended to `<run>/metrics.jsonl`, so nothing is lost whatever the store does.

Also from the worker's queue: system metrics sampled by a daemon thread every `tracking.system_metrics_every_s`
(MLflow's own `system/*` names: CPU, memory, disk, network, per-GPU memory and utilisation), and the shards'
manifest as the run's dataset input (`log_dataset`, MLflow's dataset tracking: name, digest, source URI).

The run folder remembers where its run lives (`<run>/tracking.json`: uri, experiment, run id; read by
`store.tracking_uri`). A resumed job uses that store (unless `tracking.uri` is set) and that run; if the run is
gone from the store, it warns and starts a new run tagged `aupretrain.resumed_from_run_id`. A password in the
store's URL (`http://user:password@host`, e.g. from $MLFLOW_TRACKING_URI) is never logged nor recorded
(`store.redact`): a resumed job takes it from $MLFLOW_TRACKING_URI again.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..config import flatten
from .host import system_metrics
from .store import RECORD, redact, tracking_uri

log = logging.getLogger(__name__)
PERMANENT = {"INVALID_PARAMETER_VALUE", "INVALID_STATE", "BAD_REQUEST"}  # MLflow error codes not worth a retry
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value (longer ones are cut, with a marker)


class Tracker:
    """Asynchronous, best-effort MLflow run of one training run; a no-op on other ranks or when disabled.

    Args:
        cfg: the composed config (`tracking.*`).
        active: True on rank 0.
        run_name: the MLflow run name of a new run.
        run_id: the run to continue (from a checkpoint), or None for a new run.
        run_dir: the run folder (`tracking.json`, `metrics.jsonl`); None: nothing written locally.
        tags: extra tags of a new run (`run_tags`).
        parent_run_id: a new run is created nested under this run (MLflow's `mlflow.parentRunId` tag), in the
            parent's experiment; if the store has no such run, it is created in `experiment` with a warning.
        uri: the store (default: `tracking_uri(cfg, run_dir)`).
        experiment: the experiment of a new run (default: `tracking.experiment`).
    """

    def __init__(self, cfg: DictConfig, active: bool, run_name: str, run_id: str | None = None,
                 run_dir: str | Path | None = None, tags: dict | None = None, parent_run_id: str | None = None,
                 uri: str | None = None, experiment: str | None = None, backfill_until: int = 0):
        self.active = bool(active and cfg.tracking.enabled)
        self.run_id: str | None = None
        self.run_dir = Path(run_dir) if run_dir else None
        self._metrics_failed = False
        # every metric is appended to <run>/metrics.jsonl by rank 0, with MLflow or without it (tracking.enabled)
        self._metrics_file = open(self.run_dir / "metrics.jsonl", "a") if active and self.run_dir else None
        # a resumed training job: what earlier jobs of this run wrote there up to its step, sent where the store
        # lacks it (`_backfill`)
        self._earlier_bytes = self._metrics_file.tell() if self._metrics_file and backfill_until > 0 else 0
        self._backfill_until = int(backfill_until)
        if not self.active:
            return
        t = cfg.tracking
        self.uri = uri or tracking_uri(cfg, run_dir)
        self.shown = redact(self.uri)  # in logs and records
        if self.shown != self.uri:  # MLflow prints "View run ... at: <the URL, password and all>" when a run ends
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        self.retry_max = float(t.get("retry_max_s", 30))
        self.max_pending = int(t.get("max_pending", 10000))
        self.flush_timeout = float(t.get("flush_timeout_s", 60))
        self.dropped = 0
        self._ops: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._busy = False
        self._closed = False
        self._started = threading.Event()
        self._tmp = Path(tempfile.mkdtemp(prefix="aupretrain-mlflow-"))
        params = flatten(cfg) if run_id is None else None
        self._put(lambda c: self._start(c, str(experiment or t.experiment), run_name, run_id, params,
                                        OmegaConf.to_yaml(cfg, resolve=True), tags or {}, parent_run_id))
        threading.Thread(target=self._worker, name="mlflow-tracker", daemon=True).start()
        every = float(t.get("system_metrics_every_s", 0) or 0)
        if every > 0:
            threading.Thread(target=self._sample_system, args=(every,), name="mlflow-system-metrics",
                             daemon=True).start()
        if not self._started.wait(float(t.get("start_timeout_s", 30))):
            log.warning("MLflow at %s did not answer within %s s; training goes on, the run is created (and "
                        "everything logged meanwhile sent) when it does", self.shown, t.get("start_timeout_s", 30))

    # -- what the training loop calls: never blocks on the store, never raises ------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int, local: bool = True) -> None:
        """Queue `metrics` at `step`; `local`: also append them to `<run>/metrics.jsonl`."""
        if not metrics:
            return
        vals, ts = {k: float(v) for k, v in metrics.items()}, int(time.time() * 1000)
        if self._metrics_file and local:
            try:
                self._metrics_file.write(json.dumps({"step": step, "time_ms": ts, **vals}) + "\n")
                self._metrics_file.flush()
            except OSError as e:  # a full disk: training (and MLflow) go on; said once
                if not self._metrics_failed:
                    log.warning("%s: cannot append metrics (%s); they go on to MLflow only", self.run_dir /
                                "metrics.jsonl", e)
                self._metrics_failed = True
        if not self.active:
            return
        from mlflow.entities import Metric

        batch = [Metric(k, v, ts, step) for k, v in vals.items()]
        self._put(lambda c: c.log_batch(self.run_id, metrics=batch), metric=True)

    def log_params(self, params: dict) -> None:
        """Queue `params` (name -> value, values sent as `str`) for the run; a no-op on ranks without a run."""
        if self.active:
            from mlflow.entities import Param

            items = [Param(k, str(v)) for k, v in params.items()]
            self._put(lambda c: c.log_batch(self.run_id, params=items))

    def set_tags(self, tags: dict) -> None:
        """Queue `tags` (name -> value, both sent as `str`) for the run; a no-op on ranks without a run."""
        if self.active:
            from mlflow.entities import RunTag

            items = [RunTag(str(k), str(v)) for k, v in tags.items()]
            self._put(lambda c: c.log_batch(self.run_id, tags=items))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Queue the file `path` as an artifact (under `artifact_path` in the run's artifacts, else at the top).
        The file is copied now, so later changes to it are not sent. Raises OSError if `path` cannot be read."""
        if self.active:  # a snapshot now: the file may change before the worker sends it
            snap = self._tmp / f"{len(os.listdir(self._tmp))}" / Path(path).name
            snap.parent.mkdir()
            snap.write_bytes(Path(path).read_bytes())
            self._put(lambda c: c.log_artifact(self.run_id, str(snap), artifact_path))

    def log_figure(self, fig, name: str) -> None:
        """Queue a matplotlib figure as the artifact `name` (e.g. `eval/per_au_f1.png`: its folder and file name;
        the format follows the suffix, `Figure.savefig`). The figure is rendered now."""
        if self.active:
            snap = self._tmp / f"{len(os.listdir(self._tmp))}" / Path(name).name
            snap.parent.mkdir()
            fig.savefig(snap)
            folder = str(Path(name).parent) if Path(name).parent != Path(".") else None
            self._put(lambda c: c.log_artifact(self.run_id, str(snap), folder))

    def log_text(self, text: str, name: str) -> None:
        """Queue `text` as the text artifact `name` (a path inside the run's artifacts, e.g. `config.yaml`)."""
        if self.active:
            self._put(lambda c: c.log_text(self.run_id, text, name))

    def log_dataset(self, uri: str, manifest_json: str, context: str = "train") -> None:
        """Record the shards a run reads as its MLflow dataset input: source `uri` (a folder or s3:// prefix),
        name = its last path part, digest = the first 10 hex digits of the manifest's sha256 (the same shards
        give the same digest), and the manifest itself as artifact `dataset/manifest.json`."""
        if not self.active:
            return
        import hashlib

        digest = hashlib.sha256(manifest_json.encode()).hexdigest()[:10]
        name = str(uri).rstrip("/").rsplit("/", 1)[-1] or str(uri)

        def op(c):
            import warnings

            from mlflow.data.dataset_source_registry import resolve_dataset_source
            from mlflow.data.meta_dataset import MetaDataset
            from mlflow.entities import DatasetInput, InputTag

            try:
                with warnings.catch_warnings():  # "can be interpreted in multiple ways" for local folders
                    warnings.simplefilter("ignore", UserWarning)
                    source = resolve_dataset_source(str(uri))
            except Exception:  # noqa: BLE001 - a scheme MLflow has no source type for: keep the URI as text
                from mlflow.data.http_dataset_source import HTTPDatasetSource

                source = HTTPDatasetSource(str(uri))
            ds = MetaDataset(source, name=name, digest=digest)
            c.log_inputs(self.run_id, datasets=[DatasetInput(ds._to_mlflow_entity(),
                                                             [InputTag("mlflow.data.context", context)])])

        self._put(op)
        self.log_text(manifest_json, "dataset/manifest.json")

    def finish(self, status: str = "FINISHED") -> None:
        """End the run with `status` and wait up to `tracking.flush_timeout_s` for the queue to drain."""
        if not self.active:
            self._close_metrics()
            return
        self.active = False
        if self.dropped:
            self._put(lambda c: c.set_tag(self.run_id, "aupretrain.dropped_metric_batches", str(self.dropped)))
        self._put(lambda c: c.set_terminated(self.run_id, status))
        timeout = self.flush_timeout
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            done = self._cv.wait_for(lambda: not self._ops and not self._busy, timeout)
            left = len(self._ops)
        self._close_metrics()
        if done:  # artifact snapshots are sent; an unsent queue keeps them until the process ends
            shutil.rmtree(self._tmp, ignore_errors=True)
        if not done:
            where = f"; every metric is in {self.run_dir / 'metrics.jsonl'}" if self.run_dir else ""
            log.warning("MLflow at %s still unreachable: %d tracking operations not sent%s", self.shown, left, where)

    def _close_metrics(self) -> None:
        if self._metrics_file:
            try:
                self._metrics_file.close()
            except OSError:  # what was buffered could not be written (a full disk): said when it happened
                pass
            self._metrics_file = None

    def _backfill(self, client) -> None:
        """A resumed training job (`backfill_until`: the step it resumed from): send what earlier jobs of this run
        folder appended to `<run>/metrics.jsonl` up to that step — the last value of each metric and step, the
        one the checkpoint's history kept — and the store does not hold (`backfill.unsent`): the store was away
        until a job ended (its run continued now), or for all of it (the run is created now). Tagged
        `aupretrain.backfilled_metrics`. A queued operation of its own, after the start; a failure is said once
        and dropped (the file keeps every value)."""
        from .backfill import unsent

        try:
            missing = unsent(client, self.run_id, self.run_dir / "metrics.jsonl", self._backfill_args,
                             self._backfill_until)
            for i in range(0, len(missing), 1000):  # MLflow's log_batch limit
                client.log_batch(self.run_id, metrics=missing[i:i + 1000])
        except Exception as e:  # noqa: BLE001 - never blocks the queue behind it
            log.warning("metrics of earlier jobs not sent to MLflow (%s: %s); they are in %s", type(e).__name__,
                        redact(str(e))[:200], self.run_dir / "metrics.jsonl")
            return
        if missing:
            client.set_tag(self.run_id, "aupretrain.backfilled_metrics", str(len(missing)))
            log.warning("MLflow run %s lacked %d metric values an earlier job logged while the store was away; "
                        "sent now from %s", self.run_id, len(missing), self.run_dir / "metrics.jsonl")

    # -- system metrics ---------------------------------------------------------------------------------------

    def _sample_system(self, every: float) -> None:
        """Every `every` s until the run ends: MLflow's system-metric names (`system/...`), queued like any
        metric (so a store outage delays them, never the training). Step = sample number, as MLflow's own."""
        n = 0
        while self.active:
            time.sleep(every)
            if not self.active:
                return
            try:
                m = system_metrics(self.run_dir)
            except Exception as e:  # noqa: BLE001 - sampling must never hurt training
                log.debug("system metrics: %s", e)
                continue
            self.log_metrics(m, step=n, local=False)
            n += 1

    # -- the worker -----------------------------------------------------------------------------------------

    def _put(self, op, metric: bool = False) -> None:
        with self._cv:
            if len(self._ops) >= self.max_pending:
                for i, (_, is_metric) in enumerate(self._ops):
                    if is_metric and i > 0:  # never the run's creation (first)
                        del self._ops[i]
                        self.dropped += 1
                        break
            self._ops.append((op, metric))
            self._cv.notify_all()

    def _worker(self) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        down_since, delay = None, 1.0
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._ops or self._closed)
                if not self._ops:
                    self._cv.notify_all()
                    return
                op = self._ops[0][0]
                self._busy = True
            try:
                op(client)
            except Exception as e:  # noqa: BLE001 - any store failure: keep the op, back off, retry
                if getattr(e, "error_code", None) in PERMANENT:  # the store answered "never": drop, do not retry
                    log.warning("MLflow refused a tracking operation (%s); skipped",
                                redact(str(e).splitlines()[0][:300]))
                    with self._cv:
                        self._ops.popleft()
                        self._busy = False
                        self._cv.notify_all()
                    continue
                if down_since is None:
                    down_since = time.time()
                    log.warning("MLflow at %s failed (%s: %s); training goes on, tracking retries in the "
                                "background (metrics are kept in the run folder)", self.shown, type(e).__name__,
                                redact(str(e).splitlines()[0])[:200] if str(e) else "")
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
                time.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            if down_since is not None:
                log.warning("MLflow at %s is back after %.0f s; sending %d queued operations", self.shown,
                            time.time() - down_since, len(self._ops))
                down_since, delay = None, 1.0
            with self._cv:
                self._ops.popleft()
                self._busy = False
                self._cv.notify_all()

    def _start(self, client, experiment: str, run_name: str, run_id: str | None, params: dict | None,
               config_yaml: str, tags: dict, parent_run_id: str | None = None) -> None:
        """Continue `run_id` if the store has it, else create a run (params, config, tags; nested under
        `parent_run_id` when the store has that run); record it."""
        from mlflow.exceptions import MlflowException

        resumed_from = None
        if run_id is not None:
            try:
                client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
                self.run_id = run_id
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                log.warning("MLflow run %s not found at %s: starting a new run tagged "
                            "aupretrain.resumed_from_run_id=%s", run_id, self.shown, run_id)
                resumed_from = run_id
        if self.run_id is None:
            exp_id, extra = None, {"aupretrain.resumed_from_run_id": resumed_from} if resumed_from else {}
            if parent_run_id is not None:
                try:
                    exp_id = client.get_run(parent_run_id).info.experiment_id
                    extra["mlflow.parentRunId"] = parent_run_id
                except MlflowException as e:
                    if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
                    log.warning("MLflow run %s not found at %s: this run is created in experiment %r, not nested "
                                "under it", parent_run_id, self.shown, experiment)
            if exp_id is None:
                exp = client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
            run = client.create_run(exp_id, run_name=run_name, tags={**tags, **extra})
            self.run_id = run.info.run_id
            from mlflow.entities import Param

            items = [Param(k, v if len(v) <= MAX_PARAM_LENGTH else v[:MAX_PARAM_LENGTH - 12] + "...[cut]")
                     for k, v in (params or {}).items()]
            for i in range(0, len(items), 100):
                client.log_batch(self.run_id, params=items[i:i + 100])
            client.log_text(self.run_id, config_yaml, "config.yaml")
        if self.run_dir:
            (self.run_dir / RECORD).write_text(json.dumps({"uri": self.shown, "experiment": experiment,
                                                           "run_id": self.run_id}, indent=1))
        log.info("MLflow run %s at %s", self.run_id, self.shown)
        self._started.set()
        if self._earlier_bytes:  # its own operation, next after this one (not blocking the start), once
            with self._cv:
                self._ops.insert(1, (self._backfill, False))
            self._earlier_bytes, self._backfill_args = 0, self._earlier_bytes
