"""S3 faults against a real moto_server behind a fault-injecting proxy (tests/s3_proxy.py): the endpoint cut in
the middle of an upload (connections reset, port closed) and back, throttling (503 SlowDown), and the training
reader (DALI reading s3:// shards) facing S3 errors at start.

What must hold: boto3 retries (storage.s3.* in configs/config.yaml: attempts, retry mode); past the retries the
run stops with ONE error naming the s3:// URL and the cause — no input rejected for the storage's fault, no
manifest published; running the same command again completes the dataset, byte-identical to a local pack."""
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aupretrain.data import storage
from tests.conftest import BIN, free_port, run_env
from tests.launch import TRAIN, common
from tests.s3_proxy import S3Proxy

pytestmark = pytest.mark.slow
FLAGS = ["--align", "center", "--clip-len", "8", "--stride", "2", "--size", "64", "--samples-per-shard", "6",
         "--workers", "1"]


@pytest.fixture
def s3_proxy(s3_server, monkeypatch):
    """The fault-injecting proxy in front of the session's moto_server; this process's clients and the
    subprocesses a test starts (run_env) reach S3 through it."""
    proxy = S3Proxy(s3_server["AWS_ENDPOINT_URL"], free_port())
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    for k in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):  # storage.configure exports them: restored after the test
        monkeypatch.delenv(k, raising=False)
    saved = dict(storage.S3_SETTINGS)
    storage.s3_client.cache_clear()
    yield proxy
    proxy.close()
    storage.S3_SETTINGS.update(saved)
    storage.s3_client.cache_clear()


@pytest.fixture
def direct(s3_server):
    """A boto3 client straight to moto_server (not through the proxy): what is really stored."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"])


@pytest.fixture(scope="module")
def local_pack(corpus, tmp_path_factory) -> Path:
    """The same corpus packed with the same flags to a local folder: the bytes an S3 pack must have."""
    out = tmp_path_factory.mktemp("local") / "ds"
    r, _ = pack_cli(corpus, out, out.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def pack_cli(src, out, cwd: Path, *overrides: str, timeout: int = 300):
    """`aupretrain-pack SRC OUT FLAGS --work-dir cwd/work [-- OVERRIDES]` as a user runs it: (result, seconds)."""
    cmd = [str(BIN / "aupretrain-pack"), str(src), str(out), *FLAGS, "--work-dir", str(cwd / "work"),
           *(["--", *overrides] if overrides else [])]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, env=run_env(), capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


def error_lines(stderr: str, prog: str = "aupretrain-pack") -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith(f"{prog}: error")]


def stored(direct, url: str) -> dict[str, bytes]:
    """{file name: bytes} of every object under an s3:// dataset prefix, read straight from the server."""
    bucket, prefix = storage.split_s3(url)
    listed = direct.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1:]: direct.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def compare(objects: dict[str, bytes], ref: Path) -> tuple[bool, str]:
    """(identical, description) of a stored dataset against the local pack: same file names, same bytes."""
    local = {p.name: p.read_bytes() for p in ref.iterdir() if p.is_file()}
    if sorted(objects) != sorted(local):
        return False, f"files {sorted(objects)} != local {sorted(local)}"
    differ = [n for n in local if objects[n] != local[n]]
    m = json.loads(local["manifest.json"])
    return not differ, (f"manifest + {len(m['shards'])} shards ({m['samples']} clips) byte-identical to a local pack"
                        if not differ else f"differ from the local pack: {differ}")


def intact(objects: dict[str, bytes], ref: Path) -> bool:
    """Whether every stored object is the local pack's file of that name, byte for byte (what a failed run left
    is a correct part of the dataset, or nothing)."""
    return all((ref / n).is_file() and (ref / n).read_bytes() == b for n, b in objects.items())


def journal(cwd: Path) -> list[dict]:
    lines = [json.loads(x) for p in (cwd / "work").glob("*/journal.jsonl") for x in p.read_text().splitlines()]
    return [x for x in lines if "video" in x]


def test_s3_endpoint_cut_mid_upload_then_back(corpus, local_pack, s3_proxy, direct, tmp_path, fault):
    """The endpoint dies in the middle of a shard upload (the server has the request head and part of the body;
    then every connection is reset and the port refuses) and stays down past boto3's retries: the packer stops
    with one error naming the object and the cause, rejects nothing, publishes no manifest. Back up, the same
    command resumes; this time the endpoint dies again mid-upload and is back 1 s later, within the retries: the
    run completes, and the dataset is byte-identical to a local pack."""
    url = "s3://pack-cut/ds"
    direct.create_bucket(Bucket="pack-cut")
    s3_proxy.cut_on(r"^PUT /pack-cut/ds/shard-000001\.tar")
    r, took = pack_cli(corpus, url, tmp_path, "storage.s3.max_attempts=3")
    assert s3_proxy.cut_at is not None, r.stderr[-3000:]
    detect = time.monotonic() - s3_proxy.cut_at
    errors, objects = error_lines(r.stderr), stored(direct, url)
    rejected = [x for x in journal(tmp_path) if x["reason"]]
    cause = re.search(r"upload failed after [^:]+: (\w+)", errors[0]).group(1) if errors else None
    fault("S3 endpoint dies mid-upload (pack), down past the retries",
          f"connections reset, port closed: exit {r.returncode} {detect:.1f} s later, {len(errors)} error line naming "
          f"{url}/shard-000001.tar ({cause}, up to 3 attempts); {len(rejected)} inputs rejected; stored "
          f"{sorted(objects)}, {'each' if intact(objects, local_pack) else 'NOT each'} equal to the local pack's",
          data_lost=not intact(objects, local_pack), detect_s=detect)
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{url}/shard-000001.tar: S3 upload failed after up to 3 attempts" in errors[0], errors
    assert "run the same command again to resume" in errors[0]
    assert not rejected and len(journal(tmp_path)) == 8 and "rejected" not in r.stderr
    assert "manifest.json" not in objects and "shard-000000.tar" in objects and "shard-000001.tar" not in objects
    assert intact(objects, local_pack)

    s3_proxy.restore()
    s3_proxy.cut_at = None
    s3_proxy.cut_on(r"^PUT /pack-cut/ds/shard-000002\.tar")

    def back_after_one_second():
        while s3_proxy.cut_at is None:
            time.sleep(0.05)
        time.sleep(1.0)
        s3_proxy.restore()

    watcher = threading.Thread(target=back_after_one_second, daemon=True)
    watcher.start()
    r, took = pack_cli(corpus, url, tmp_path)  # default storage.s3 settings: 12 attempts, adaptive
    watcher.join(5)
    same, what = compare(stored(direct, url), local_pack)
    fault("S3 endpoint dies mid-upload (pack), back 1 s later", f"boto3 retried through the outage; the rerun resumed "
          f"and exited {r.returncode} in {took:.1f} s: {what}", data_lost=not same, detect_s=None)
    assert r.returncode == 0, r.stderr[-3000:]
    assert s3_proxy.cut_at is not None and not s3_proxy.is_down  # the second cut happened, and the endpoint came back
    assert "resuming: 8 of 8 videos and 1 shards already done" in r.stderr, r.stderr[-3000:]
    assert same, what


def test_s3_throttling_pack(corpus, local_pack, s3_proxy, direct, tmp_path, fault):
    """503 SlowDown: more throttled uploads than the retry budget -> one error naming the object, SlowDown and the
    attempts, nothing published; inputs on S3 throttled the same way -> one error naming the video, no input
    rejected; a few throttled requests -> boto3 retries and the dataset is complete and correct."""
    url = "s3://pack-slow/ds"
    for b in ("pack-slow", "pack-slow-in"):
        direct.create_bucket(Bucket=b)
    s3_proxy.throttle(10**6, r"^PUT /pack-slow/")
    r, took = pack_cli(corpus, url, tmp_path, "storage.s3.max_attempts=3")
    errors, objects = error_lines(r.stderr), stored(direct, url)
    fault("S3 throttling (503 SlowDown) of every upload, past the retries",
          f"exit {r.returncode} after {took:.1f} s, {len(s3_proxy.throttled)} requests throttled, {len(errors)} error "
          f"line: {errors[0][len('aupretrain-pack: error: '):][:200] if errors else None}; stored {sorted(objects)}",
          data_lost=not intact(objects, local_pack), detect_s=took)
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{url}/shard-000000.idx: S3 upload failed after 3 attempts: ClientError" in errors[0], errors
    assert "SlowDown" in errors[0] and "Failed to upload" not in errors[0]  # boto3's wrapper, with a temp file name
    assert len(s3_proxy.throttled) == 3 and not objects

    # the inputs on S3, their downloads throttled past the retries: the environment's fault, not the videos'
    for p in sorted(corpus.rglob("*.mp4")):
        direct.upload_file(str(p), "pack-slow-in", f"in/{p.relative_to(corpus).as_posix()}")
    s3_proxy.throttle(10**6, r"^GET /pack-slow-in/in/\S+\.mp4")
    (tmp_path / "in").mkdir()
    r, took = pack_cli("s3://pack-slow-in/in", "s3://pack-slow-in/out", tmp_path / "in", "storage.s3.max_attempts=3")
    errors, rejected = error_lines(r.stderr), [x for x in journal(tmp_path / "in") if x["reason"]]
    fault("S3 throttling (503 SlowDown) of input downloads, past the retries",
          f"exit {r.returncode} after {took:.1f} s, {len(errors)} error line naming the video "
          f"({errors[0].split(': S3', 1)[0].split()[-1] if errors else None}); {len(rejected)} inputs rejected",
          data_lost=bool(rejected), detect_s=took)
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert re.search(r"s3://pack-slow-in/in/\S+\.mp4: S3 download failed after 3 attempts: \w+: .*SlowDown", errors[0])
    assert not rejected and "rejected" not in r.stderr

    s3_proxy.throttle(4)  # the next 4 requests, whatever they are
    r, took = pack_cli(corpus, url, tmp_path)
    same, what = compare(stored(direct, url), local_pack)
    fault("S3 throttling (503 SlowDown) of 4 requests", f"boto3 retried them; the rerun exited {r.returncode} in "
          f"{took:.1f} s: {what}", data_lost=not same)
    assert r.returncode == 0 and len(s3_proxy.throttled) == 4 + 3 + 3, r.stderr[-3000:]
    assert same, what


def read_one_batch(root: str, timeout: int = 180) -> dict:
    """A reader process (DALI's S3 client must not share a process with the proxy's threads: DALI holds the GIL
    while it opens its files) building a ClipLoader on `root` and taking one batch: {"ok"} or {"error", "type"}."""
    code = ("import json, sys\nfrom aupretrain.data import storage\nfrom aupretrain.data.dali_reader import "
            "ClipLoader, ReaderSettings\nstorage.configure({'max_attempts': 3})\ntry:\n"
            "    b = next(iter(ClipLoader(ReaderSettings(root=sys.argv[1], batch_size=4, input_size=32, device='cpu', "
            "num_threads=1, shuffle_buffer=4))))\n    print(json.dumps({'ok': list(b['view1'].shape)}))\n"
            "except Exception as e:\n    print(json.dumps({'error': str(e), 'type': type(e).__name__}))\n")
    r = subprocess.run([sys.executable, "-c", code, root], env=run_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.stdout.strip(), r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_s3_errors_reading_at_start(packed, s3_proxy, tmp_path, fault):
    """The training reader on s3:// shards: a few throttled requests (boto3's and DALI's) are retried and the
    batches come; the endpoint down -> one error naming the manifest's URL, at once; DALI's own requests throttled
    past AWS_MAX_ATTEMPTS -> aupretrain-train exits 1 with one line naming the shard's URL, no hang."""
    url = "s3://reads/ds"
    storage.s3_client().create_bucket(Bucket="reads")
    for f in sorted(packed.iterdir()):
        storage.put_file(f, f"{url}/{f.name}")

    s3_proxy.throttle(2, r"^user-agent: aws-sdk-cpp")  # DALI's first 2 requests: 503 SlowDown (3 attempts each)
    t0 = time.monotonic()
    got = read_one_batch(url)
    took = time.monotonic() - t0
    fault("S3 throttling (503 SlowDown) of the reader's first requests",
          f"DALI's S3 client retried {len(s3_proxy.throttled)} throttled requests; first batch "
          f"{got.get('ok') or got} after {took:.1f} s", data_lost=False)
    assert got.get("ok") == [4, 8, 3, 32, 32] and len(s3_proxy.throttled) == 2, got

    s3_proxy.down()
    storage.configure({"max_attempts": 3})
    from aupretrain.data.dali_reader import ClipLoader, ReaderSettings

    t0 = time.monotonic()
    with pytest.raises(storage.S3Error) as e:
        ClipLoader(ReaderSettings(root=url, batch_size=4, input_size=32, device="cpu", num_threads=1))
    took = time.monotonic() - t0
    fault("S3 endpoint down when training starts", f"{took:.1f} s: {e.value}", data_lost=False, detect_s=took)
    assert str(e.value).startswith(f"{url}/manifest.json: S3 read failed after up to 3 attempts") and took < 60

    s3_proxy.restore()
    s3_proxy.throttle(10**6, r"^user-agent: aws-sdk-cpp")  # every request of DALI's: 503 SlowDown
    before = len(s3_proxy.throttled)
    cmd = [sys.executable, TRAIN, *common(url, tmp_path, **{
        "run.dir": str(tmp_path / "run"), "train.steps": 2, "tracking.enabled": "false", "storage.s3.max_attempts": 3})]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    errors = error_lines(r.stderr, "aupretrain-train")
    fault("S3 throttling (503 SlowDown) of every DALI request at start",
          f"aupretrain-train exit {r.returncode} after {took:.1f} s (process start included), "
          f"{len(s3_proxy.throttled) - before} requests throttled, {len(errors)} error line: "
          f"{errors[0].split(': ', 2)[-1][:320] if errors else None}", data_lost=False, detect_s=took)
    assert r.returncode == 1 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert re.search(rf"{url}/shard-00000\d\.(tar|idx): DALI's S3 reader failed on it after up to 3 attempts",
                     errors[0]), errors
    assert "boto3 reads it" in errors[0] and len(s3_proxy.throttled) - before == 3
