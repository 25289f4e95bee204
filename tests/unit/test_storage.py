"""storage's classification of S3 errors (botocore's own ClientError, as boto3 raises it) and its settings."""
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from aupretrain.data import storage
from aupretrain.errors import UsageError


def client_error(code: str, status: int, op: str = "GetObject") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status,
                                                                                      "RetryAttempts": 2}}, op)


@pytest.mark.parametrize("code,status,input_fault", [
    ("NoSuchKey", 404, True), ("404", 404, True), ("AccessDenied", 403, True), ("403", 403, True),
    ("ExpiredToken", 400, False), ("InvalidAccessKeyId", 403, False), ("SignatureDoesNotMatch", 403, False),
    ("RequestTimeTooSkewed", 403, False), ("SlowDown", 503, False), ("InternalError", 500, False)])
def test_only_a_missing_or_denied_object_is_the_inputs_fault(code, status, input_fault):
    assert storage.is_input_fault(client_error(code, status)) is input_fault


def test_s3_error_names_the_url_the_operation_the_cause_and_the_attempts():
    e = storage.s3_error("s3://b/k.tar", "upload", client_error("SlowDown", 503, "PutObject"))
    assert isinstance(e, storage.EnvironmentFault)
    assert str(e).startswith("s3://b/k.tar: S3 upload failed after 3 attempts: ClientError: ") and "SlowDown" in str(e)
    e = storage.s3_error("s3://b/k", "read", EndpointConnectionError(endpoint_url="http://127.0.0.1:1/b/k"))
    assert f"after up to {storage.S3_SETTINGS['max_attempts']} attempts (storage.s3.max_attempts)" in str(e)


def test_settings_are_checked(monkeypatch):
    monkeypatch.setattr(storage, "S3_SETTINGS", dict(storage.S3_SETTINGS))
    for k in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(UsageError, match=r"storage.s3.max_attempts=0 \(at least 1\)"):
        storage.configure({"max_attempts": 0})
    with pytest.raises(UsageError, match="storage.s3.retry_mode=fast"):
        storage.configure({"retry_mode": "fast"})
    storage.configure({"max_attempts": 5, "retry_mode": "standard"})
    cfg = storage.s3_client().meta.config
    assert cfg.retries == {"total_max_attempts": 5, "mode": "standard"}
    assert (storage.os.environ["AWS_MAX_ATTEMPTS"], storage.os.environ["AWS_RETRY_MODE"]) == ("5", "standard")
    storage.s3_client.cache_clear()
