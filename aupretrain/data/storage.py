"""Local paths and s3:// URLs behind one small interface (boto3 with its retry modes for S3).

S3 endpoints and credentials come from the usual AWS variables (AWS_ENDPOINT_URL for MinIO/moto, etc.).
Local writes go to a temporary name and are renamed, so a half-written file is never visible.

Retries are boto3's own (`botocore.config.Config(retries=...)`, the transfer manager for uploads and
downloads), set from `storage.s3` in configs/config.yaml through `configure()`: attempts per request, retry mode
(`standard`, or `adaptive`: standard plus client-side rate limiting after throttling), connect and read
timeouts. `configure()` also exports AWS_MAX_ATTEMPTS and AWS_RETRY_MODE, which DALI's S3 reader (the AWS C++
SDK) reads when it first touches S3. A request that still fails raises `S3Error` naming the s3:// URL, what was
done, the cause and the attempts — except a missing or denied object, which stays botocore's `ClientError` so a
caller can count it against that one input (`is_input_fault`).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
from pathlib import Path
from typing import Iterator, Mapping


class EnvironmentFault(OSError):
    """A failure of the machine or the service, not of one input (local disk full, too many open files, out of
    memory, S3 unreachable or credentials expired after boto3's retries): the run stops with nothing recorded
    against the input, and running the same command again resumes."""


class S3Error(EnvironmentFault):
    """An S3 request that failed after boto3's retries for a reason that is not the object's: endpoint
    unreachable or cut mid-transfer, throttled (503 SlowDown) beyond the retry budget, server errors, bad
    credentials, a bucket that does not exist for a write. The message names the s3:// URL, the operation, the
    cause and the attempts."""


ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.EROFS, errno.ENOMEM}
INPUT_S3_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound", "AccessDenied", "403", "InvalidObjectState"}
# 403s that are the credentials' or the clock's, not the object's
CREDENTIAL_S3_CODES = {"ExpiredToken", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                       "TokenRefreshRequired", "RequestTimeTooSkewed", "AccountProblem"}


def is_input_fault(e: BaseException) -> bool:
    """Whether an S3/OS error reading one input is that input's problem (missing, denied) rather than the
    environment's (endpoint down, credentials expired, local disk full)."""
    if isinstance(e, OSError) and not isinstance(e, EnvironmentFault):
        return e.errno not in ENVIRONMENT_ERRNOS
    response = getattr(e, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code not in CREDENTIAL_S3_CODES and (code in INPUT_S3_CODES or status in (403, 404))
    return False


def is_s3(uri: str) -> bool:
    """Whether `uri` is an s3:// URL (else a local path)."""
    return str(uri).startswith("s3://")


def join(base: str, *parts: str) -> str:
    """`base` joined with `parts`: with "/" for an s3:// base (trailing "/" of base dropped), else as a local `Path`."""
    if is_s3(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key), split at the first `/` after the bucket.

    No URL parsing: an S3 key may hold any UTF-8 character, `#`, `?`, `=`, `%`, spaces and `+` included
    (AWS S3 User Guide, "Naming Amazon S3 objects"), and each stands for itself, never a fragment or query.

    Raises:
        ValueError: the URI does not start with `s3://` or names no bucket.
    """
    uri = str(uri)
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket name after s3://")
    return bucket, key


DALI_UNSAFE = "#?"  # DALI's S3 client cuts an s3:// path at these (URL fragment/query); measured with DALI 1.x


def dali_readable(uri: str) -> bool:
    """Whether DALI's readers can open this path as it is (local paths always; s3:// keys without `#`/`?`)."""
    return not is_s3(uri) or not any(c in uri for c in DALI_UNSAFE)


def stage(uris: list[str], cache: str | Path) -> list[str]:
    """Local copies of s3:// files under `cache` (downloaded once: a file of the right size is reused; temp
    name + rename so a half-download is never used); local paths are returned unchanged."""
    out = []
    for uri in uris:
        if not is_s3(uri):
            out.append(uri)
            continue
        bucket, key = split_s3(uri)
        dest = Path(cache, bucket, *key.split("/"))
        if not dest.is_file() or dest.stat().st_size != size(uri):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            get_file(uri, tmp)
            tmp.replace(dest)
        out.append(str(dest))
    return out


# `storage.s3` of configs/config.yaml (the same defaults): see `configure`
S3_SETTINGS = {"max_attempts": 12, "retry_mode": "adaptive", "connect_timeout_s": 10.0, "read_timeout_s": 60.0}
RETRY_MODES = ("standard", "adaptive", "legacy")


def configure(s3: Mapping | None) -> None:
    """Apply `storage.s3` (max_attempts: attempts per request including the first; retry_mode; connect_timeout_s;
    read_timeout_s) to this process's boto3 clients, and export AWS_MAX_ATTEMPTS / AWS_RETRY_MODE for DALI's S3
    reader and child processes. Call before the first S3 request."""
    new = {**S3_SETTINGS, **{k: v for k, v in dict(s3 or {}).items() if k in S3_SETTINGS and v is not None}}
    wrong = ([f"storage.s3.max_attempts={new['max_attempts']} (at least 1)"] if int(new["max_attempts"]) < 1 else []) \
        + ([f"storage.s3.retry_mode={new['retry_mode']} (one of {', '.join(RETRY_MODES)})"]
           if new["retry_mode"] not in RETRY_MODES else [])
    if wrong:
        from ..errors import UsageError

        raise UsageError(f"cannot use {' and '.join(wrong)}")
    S3_SETTINGS.update(max_attempts=int(new["max_attempts"]), retry_mode=str(new["retry_mode"]),
                       connect_timeout_s=float(new["connect_timeout_s"]), read_timeout_s=float(new["read_timeout_s"]))
    os.environ["AWS_MAX_ATTEMPTS"] = str(S3_SETTINGS["max_attempts"])
    os.environ["AWS_RETRY_MODE"] = S3_SETTINGS["retry_mode"]
    _client_for.cache_clear()


@functools.lru_cache(maxsize=4)
def _client_for(pid: int):
    import boto3
    from botocore.config import Config

    cfg = Config(retries={"total_max_attempts": S3_SETTINGS["max_attempts"], "mode": S3_SETTINGS["retry_mode"]},
                 connect_timeout=S3_SETTINGS["connect_timeout_s"], read_timeout=S3_SETTINGS["read_timeout_s"])
    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None, config=cfg)


def s3_client():
    """One boto3 client per process (clients are not fork-safe: pack workers must not share the parent's)."""
    return _client_for(os.getpid())


s3_client.cache_clear = _client_for.cache_clear


def _attempts(e: BaseException) -> str:
    for err in (e, e.__cause__, e.__context__):
        meta = getattr(err, "response", None)
        if isinstance(meta, dict) and "RetryAttempts" in meta.get("ResponseMetadata", {}):
            n = int(meta["ResponseMetadata"]["RetryAttempts"]) + 1
            return f"{n} attempt{'s' if n > 1 else ''}"
    return f"up to {S3_SETTINGS['max_attempts']} attempts (storage.s3.max_attempts)"


def s3_error(uri: str, what: str, e: BaseException) -> S3Error:
    """The S3Error for exception `e` of operation `what` on `uri` (boto3's S3UploadFailedError is reported by the
    ClientError it wraps, without the local temp file's name)."""
    from botocore.exceptions import ClientError

    attempts = _attempts(e)
    if not isinstance(e, ClientError) and isinstance(e.__context__, ClientError):
        e = e.__context__
    cause = " ".join(str(e).split()) or type(e).__name__
    return S3Error(f"{uri}: S3 {what} failed after {attempts}: {type(e).__name__}: {cause}")


@contextlib.contextmanager
def _s3_errors(uri: str, what: str, writing: bool = False) -> Iterator[None]:
    """botocore/boto3 errors of one S3 operation on `uri` -> S3Error, except a missing or denied object on a
    read (left as it is: the caller may count it against that input)."""
    try:
        yield
    except Exception as e:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        if not isinstance(e, (BotoCoreError, ClientError, Boto3Error)) or (not writing and is_input_fault(e)):
            raise
        raise s3_error(uri, what, e) from e


def read_bytes(uri: str) -> bytes:
    """The whole file at `uri` (local path or s3:// object). Raises OSError (e.g. FileNotFoundError) locally; on S3,
    botocore's ClientError for a missing or denied object, S3Error for any other failure after boto3's retries."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "read"):
            return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(uri).read_bytes()


def read_range(uri: str, offset: int, size: int) -> bytes:
    """`size` bytes of a file from `offset` (an S3 ranged GET, or a seek)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        rng = f"bytes={offset}-{offset + size - 1}"
        with _s3_errors(uri, f"read of {rng}"):
            return s3_client().get_object(Bucket=bucket, Key=key, Range=rng)["Body"].read()
    with open(uri, "rb") as f:
        f.seek(offset)
        return f.read(size)


def read_text(uri: str) -> str:
    """The file at `uri` decoded as UTF-8 (`read_bytes`; the same errors, plus UnicodeDecodeError)."""
    return read_bytes(uri).decode("utf-8")


def exists(uri: str) -> bool:
    """Whether the file at `uri` exists (an S3 HEAD: False on 404/NoSuchKey/NotFound). On S3, raises botocore's
    ClientError for another per-object error (e.g. access denied) and S3Error when the request fails after retries."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            with _s3_errors(uri, "HEAD"):
                s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
    return Path(uri).exists()


def check_bucket(uri: str) -> None:
    """Before any work is done for an s3:// output: its bucket exists (an S3 HeadBucket). Local paths pass.

    Raises:
        UsageError: the bucket does not exist (404) — the URL's bucket, the endpoint asked and how to fix it;
            a bucket name S3 rejects.
        S3Error: the endpoint cannot be reached after boto3's retries. (A 403 is not an error here: credentials
            scoped to a prefix may be refused HeadBucket and still write.)
    """
    if not is_s3(uri):
        return
    from botocore.exceptions import ClientError, ParamValidationError

    from ..errors import UsageError

    bucket, _ = split_s3(uri)
    try:
        with _s3_errors(uri, "HeadBucket"):
            s3_client().head_bucket(Bucket=bucket)
    except ParamValidationError as e:
        raise UsageError(f"{uri}: {bucket!r} is not a valid S3 bucket name ({' '.join(str(e).split())})") from None
    except ClientError as e:  # 403 and 404 are left as ClientError by _s3_errors (is_input_fault)
        code = str(e.response.get("Error", {}).get("Code", ""))
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise UsageError(f"{uri}: bucket {bucket!r} does not exist at {endpoint}; create it first (aws s3 mb "
                             f"s3://{bucket}), or check the URL and AWS_ENDPOINT_URL") from None
        # 403: credentials scoped to a prefix may not list the bucket itself — they can still write: go on (a
        # write that is refused is reported by the upload, as before)


def size(uri: str) -> int:
    """Size in bytes of the file at `uri` (an S3 HEAD, or a stat). Raises OSError locally; on S3, ClientError for a
    missing or denied object, S3Error for other failures after retries."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "HEAD"):
            return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
    return Path(uri).stat().st_size


def put_file(local: str | Path, uri: str) -> None:
    """Copy a finished local file to its destination (multipart upload via boto3's transfer manager on S3)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "upload", writing=True):
            s3_client().upload_file(str(local), bucket, key)
        return
    dest = Path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if Path(local).resolve() == dest.resolve():
        return
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(local, tmp)
    tmp.replace(dest)


def write_text(uri: str, text: str) -> None:
    """Write `text` to `uri`: one S3 PUT (UTF-8), or locally a temporary `.<name>.tmp` (UTF-8, as `read_text` reads)
    renamed into place (parent folders created). Raises S3Error when the S3 write fails after retries, OSError
    locally."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "write", writing=True):
            s3_client().put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"))
        return
    dest = Path(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(dest)


def get_file(uri: str, local: str | Path) -> None:
    """Copy a file (s3:// object or local path) to a local path (multipart download on S3)."""
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "download"):
            s3_client().download_file(bucket, key, str(local))
    else:
        shutil.copyfile(uri, local)


def iter_files(folder: str) -> Iterator[tuple[str, int]]:
    """(uri, size) of the files under a local or s3:// folder, lazily: S3 is listed one page (1,000 keys) at a
    time as the caller asks for more, a local folder one directory at a time, so a caller that needs one file
    stops the listing early. An s3:// folder is the keys under `<key>/` (`s3://b/corpus` never lists
    `s3://b/corpus-other/...`); the whole bucket for `s3://b` or `s3://b/`."""
    if is_s3(folder):
        bucket, key = split_s3(folder)
        key = key.rstrip("/") + "/" if key.strip("/") else ""
        prefix = f"s3://{bucket}/{key}"
        with _s3_errors(prefix, "list"):
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for o in page.get("Contents", []):
                    yield f"s3://{bucket}/{o['Key']}", int(o["Size"])
        return
    if not Path(folder).is_dir():
        return
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            p = Path(parent) / name
            if p.is_file():
                yield str(p), p.stat().st_size


def list_files(folder: str) -> list[tuple[str, int]]:
    """(uri, size) of every file under a local or s3:// folder (`iter_files`), sorted by uri."""
    return sorted(iter_files(folder))


def delete(uri: str) -> None:
    """Delete the file at `uri` (an S3 DELETE; locally, nothing happens when it is missing). Raises S3Error when the S3
    request fails after retries, OSError locally."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        with _s3_errors(uri, "delete", writing=True):
            s3_client().delete_object(Bucket=bucket, Key=key)
    else:
        Path(uri).unlink(missing_ok=True)
