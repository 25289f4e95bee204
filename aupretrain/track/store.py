"""The MLflow tracking store itself: a URI this MLflow can use (`check_tracking_uri`, `check_tracking_store`, checked
with the settings before any run folder or worker), a local store that does not exist or is no MLflow store
(`store_missing`: read-only commands never create one), and one line for a store that cannot be read
(`StoreError`, `store_error`; `quick_http` lowers MLflow's HTTP retries for a read-only look); where a job tracks to
(`tracking_uri`, the run folder's record `tracking.json`: `read_record`) and a URI as it may be shown (`redact`)."""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from omegaconf import DictConfig

from ..errors import UsageError

RECORD = "tracking.json"  # in a run folder: the store and run it is tracked to (`read_record`)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<password>[^/\s@]+)@")


def redact(text: str) -> str:
    """`text` with the password of every URL's user-info replaced by `***` (`http://user:***@host`): what is
    logged or written about a store never holds the password that $MLFLOW_TRACKING_URI may carry."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(text))


def tracking_uri(cfg: DictConfig, run_dir: str | Path | None = None) -> str:
    """Where the run is tracked: `tracking.uri`, else the store the run folder recorded (a resumed job),
    else $MLFLOW_TRACKING_URI, else a sqlite store in the folder the first job started from (a relative sqlite
    path is made absolute: `absolute_uri`). The record holds
    the URI without its password (`redact`); the password comes back from $MLFLOW_TRACKING_URI when that names
    the same store."""
    if cfg.tracking.uri:
        return absolute_uri(str(cfg.tracking.uri))
    rec = read_record(run_dir) if run_dir else None
    env = absolute_uri(os.environ.get("MLFLOW_TRACKING_URI") or "") or None
    if rec and rec.get("uri"):
        return env if env and redact(env) == rec["uri"] else rec["uri"]
    return env or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def absolute_uri(uri: str) -> str:
    """A sqlite URI with a relative path (`sqlite:///mlflow.db`: relative to the working directory, SQLAlchemy's
    convention) made absolute against this job's working directory, so a job resumed from another folder finds
    the same store through `tracking.json`; other URIs unchanged."""
    head = "sqlite:///"
    if uri.startswith(head) and not uri[len(head):].startswith(("/", ":memory:")) and uri[len(head):]:
        return head + str(Path.cwd() / uri[len(head):])
    return uri


def read_record(run_dir: str | Path) -> dict | None:
    """`<run>/tracking.json` ({"uri", "experiment", "run_id"}) if the run folder has one."""
    p = Path(run_dir) / RECORD
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError):  # missing, unreadable, not UTF-8, not JSON
        return None
    return rec if isinstance(rec, dict) else None


# MLflow's HTTP defaults (7 retries with backoff, 120 s timeout) keep a read-only look at a server that is down
# silent for minutes; within `quick_http` (aupretrain-compare, aupretrain-eval's checks) a command fails within about
# a minute instead, unless the user set these variables.
QUICK_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


class StoreError(Exception):
    """The tracking store cannot be read: `status` is the exit status (1: the server does not answer or fails,
    2: the URI or a request is wrong), the message is the one line to print."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def quick_http():
    """Within: MLflow's HTTP retries and timeout lowered to QUICK_HTTP where the environment does not set them
    (MLflow reads them at each request); the environment as it was afterwards."""
    added = [k for k in QUICK_HTTP if k not in os.environ]
    os.environ.update({k: QUICK_HTTP[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def unreachable(e: BaseException) -> BaseException | None:
    """The failure to reach an HTTP server (connection refused or reset, unknown host, timeout, retries used up)
    that `e` is, or was raised from or during; None when it is none."""
    import requests

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          requests.exceptions.RetryError)):
            return e
        e = e.__cause__ or e.__context__
    return None


def why_unreachable(e: BaseException) -> str:
    """A few words on why the server did not answer: the OS's reason (`Connection refused`, `Name or service not
    known`), `timed out`, else the requests exception's name."""
    import requests

    cause = unreachable(e) or e
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", f"{e} {cause}")
    if found:
        return found[1].strip()
    if isinstance(cause, requests.exceptions.Timeout):
        return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '?')} s"
    return type(cause).__name__


def store_error(e: Exception, uri: str) -> StoreError:
    """The one-line StoreError for an exception raised while reading the store at `uri` (password redacted); the
    message names aupretrain-compare's `--tracking-uri` flag and $MLFLOW_TRACKING_URI."""
    shown = redact(uri)
    if unreachable(e):
        return StoreError(f"the tracking server at {shown} does not answer ({why_unreachable(e)}); check "
                          "--tracking-uri / $MLFLOW_TRACKING_URI and that the server is running", 1)
    code = getattr(e, "error_code", "")
    what = " ".join(redact(getattr(e, "message", None) or str(e)).split())[:600]
    usage = code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "ENDPOINT_NOT_FOUND")
    if type(e).__name__.startswith("Unsupported"):  # an unknown URI scheme
        usage = True
    return StoreError(f"tracking store {shown}: {what}", 2 if usage else 1)


def store_missing(uri: str) -> str | None:
    """Why `uri`, a local store (sqlite:///FILE, file:// or a folder), is no MLflow store to read: the file or
    folder does not exist, or the file is no MLflow database; None when it is one, or is not local. Opening a store
    that does not exist with MLflow's client would create it (an empty database at a mistyped path)."""
    import sqlite3
    from urllib.parse import urlparse

    db = re.fullmatch(r"sqlite(?:\+\w+)?://(/?)(.*)", uri, re.IGNORECASE | re.DOTALL)
    if db:
        name = db[2].split("?", 1)[0]
        if not db[1] or not name or name == ":memory:":
            return "an in-memory sqlite database holds no runs"
        f = Path(name)
        if not f.exists():
            return f"no MLflow store at {f.absolute()} (no such file)"
        if f.is_dir():
            return f"no MLflow store at {f.absolute()} (a folder, not a database file)"
        try:
            with contextlib.closing(sqlite3.connect(f"{f.absolute().as_uri()}?mode=ro", uri=True)) as c:
                tables = {t for (t,) in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.Error as e:
            return f"{f.absolute()} is not an MLflow store ({e})"
        if not {"experiments", "runs"} <= tables:
            return f"{f.absolute()} is not an MLflow store (it has no experiments and runs tables)"
        return None
    p = urlparse(uri)
    if uri.split(":", 1)[0].lower() in ("databricks", "databricks-uc", "uc"):  # remote stores, as check_tracking_uri
        return None
    if p.scheme.lower() in ("", "file") or (len(p.scheme) == 1 and p.scheme.isalpha()):  # C: is a drive
        local = Path(p.path if p.scheme.lower() == "file" else uri).expanduser()
        if not local.is_dir():
            return f"no MLflow store at {local.absolute()} (no such folder)"
    return None


_STORE_FIX = "sqlite:///<path>/mlflow.db (a local store) or http(s)://host:port (a tracking server)"


def _file_store_allowed() -> bool:
    """Whether the installed MLflow opens a folder as its store: its file store refuses to start (it is "in
    maintenance mode") unless $MLFLOW_ALLOW_FILE_STORE is true; read from its source, without importing it."""
    from ..settings_checks import _package_root

    root = _package_root("mlflow")
    if root is None:
        return True
    f = root / "store" / "tracking" / "file_store.py"
    try:
        gated = "MLFLOW_ALLOW_FILE_STORE" in f.read_text(errors="ignore")
    except OSError:
        return True
    return not gated or os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1")


def _mlflow_schemes() -> list[str]:
    """The URI schemes the installed MLflow has a tracking store for (plugins included); imports MLflow (~2 s)."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        return [s for s in _tracking_store_registry._registry if s]
    except Exception:  # noqa: BLE001 - a private registry: the schemes MLflow documents
        return ["file", "databricks", "databricks-uc", "uc", "http", "https", "postgresql", "mysql", "sqlite", "mssql"]


def check_tracking_uri(uri: str, key: str = "tracking.uri", will_exist: Sequence[str | Path] = ()) -> None:
    """`uri` is an MLflow tracking store this MLflow can use: http(s)://host[:port], databricks, a database URL
    (sqlite, postgresql, mysql, mssql, each with an optional +driver) whose sqlite file can be created, or another
    scheme an installed MLflow plugin registers; a folder (or file://) only where MLflow still opens one. `key`:
    where the URI was set (`tracking.uri`, `MLFLOW_TRACKING_URI`); `will_exist`: folders the job creates before
    tracking starts (the run folder), where a sqlite file may be.

    Raises:
        UsageError: one line naming `key`, the URI (its password hidden) and a store that works."""
    import importlib.metadata
    from urllib.parse import urlparse

    
    from ..settings_schema import _show

    shown = f"{key}={_show(redact(uri))}" + (" (environment)" if key.isupper() else "")
    where = f"set {key}{' (or tracking.uri)' if key.isupper() else ''} to {_STORE_FIX}"
    try:
        p = urlparse(uri)
        if p.scheme.lower() in ("http", "https"):
            p.port  # noqa: B018 - raises ValueError on a port that is not a number in 0..65535
    except ValueError as e:
        raise UsageError(f"{shown}: not a URL MLflow can read ({e}); {where}") from None
    scheme = p.scheme.lower()
    if uri in ("databricks", "databricks-uc", "uc"):  # MLflow takes these names whole (no "://")
        return
    if scheme in ("http", "https"):
        if not p.hostname:
            raise UsageError(f"{shown}: no host in the URL; {where}")
        return
    if scheme in ("databricks", "databricks-uc", "uc"):
        return
    db = re.fullmatch(r"(postgresql|mysql|mssql|sqlite)(\+[a-z0-9_]+)?", scheme)
    if db:
        if db.group(1) == "sqlite" and uri.lower().startswith("sqlite:///") and len(uri) > len("sqlite:///"):
            f = Path(uri[len("sqlite:///"):].split("?", 1)[0])
            later = any(f.absolute().parent == Path(w).absolute() or Path(w).absolute() in f.absolute().parents
                        for w in will_exist if w)
            if f.is_dir():
                raise UsageError(f"{shown}: {f} is a folder, not a database file; set e.g. {key}=sqlite:///"
                                 f"{f.absolute() / 'mlflow.db'}")
            if not f.absolute().parent.is_dir() and not later:
                raise UsageError(f"{shown}: the folder {f.absolute().parent} does not exist (sqlite cannot create the "
                                 f"database file there); create it, or {where}")
        return
    try:
        version = importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    if scheme in ("", "file") or (len(scheme) == 1 and scheme.isalpha()):  # a folder (C: is a drive, not a scheme)
        local = "/" + p.path.lstrip("/") if scheme == "file" and p.path.startswith("/") else p.path if scheme else uri
        path = Path(local).expanduser().absolute()
        if path.is_file():
            db_file = path.suffix in (".db", ".sqlite", ".sqlite3")
            raise UsageError(f"{shown}: {path} is a file, not a store folder; set e.g. {key}=sqlite:///"
                             f"{path if db_file else path.parent / 'mlflow.db'}"
                             f"{'' if db_file else ' (a database file in that folder)'} or http(s)://host:port")
        if _file_store_allowed():
            return
        raise UsageError(f"{shown}: MLflow {version} does not open a folder as its tracking store (its file store "
                         "is in maintenance mode and refuses to start without MLFLOW_ALLOW_FILE_STORE=true); set e.g. "
                         f"{key}=sqlite:///{path / 'mlflow.db'} (a database file in that folder) or "
                         "http(s)://host:port (a tracking server)")
    schemes = _mlflow_schemes()
    if scheme in schemes:
        return
    import difflib

    known = [s for s in ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks") if s in schemes]
    near = difflib.get_close_matches(scheme, known, n=1, cutoff=0.6)
    hint = f"did you mean {redact(near[0] + uri[len(p.scheme):])}? " if near else ""
    raise UsageError(f"{shown}: MLflow {version} has no tracking store for the scheme '{p.scheme}:' (it knows "
                     f"{', '.join(s for s in schemes if s != 'file')}); {hint}{where}")


def check_tracking_store(d: dict) -> None:
    """The store a training run will track to is one MLflow can use (`check_tracking_uri`): `tracking.uri`, else
    $MLFLOW_TRACKING_URI when the run folder has no record of another store (a resumed run keeps its own; see
    `tracking_uri`); the default sqlite store in the working folder is not checked. Raises
    UsageError."""
    from ..settings_checks import _get

    uri = _get(d, "tracking.uri", None)
    run_dir, root = _get(d, "run.dir", None), _get(d, "run.root", None)
    will_exist = [x for x in (run_dir, root) if isinstance(x, str) and x.strip()]
    if uri is not None and str(uri).strip():
        check_tracking_uri(str(uri), "tracking.uri", will_exist)
        return
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if not env:
        return
    if isinstance(run_dir, str) and run_dir.strip():
        rec = read_record(run_dir)
        if rec and rec.get("uri") and redact(env) != rec["uri"]:
            return  # the run's recorded store is used, not the environment's
    check_tracking_uri(env, "MLFLOW_TRACKING_URI", will_exist)
