"""Names and secrets through the whole pipeline, on real servers (moto_server for S3, `mlflow server`).

One run serves both tests: the synthetic corpus's videos renamed to identity and video names of every length
and script (200-character names, CJK, Arabic, emoji, spaces, quotes, `=`, `#`, brackets) are uploaded to S3,
packed from S3 to an S3 prefix that Hydra cannot take unquoted, and trained on (DALI reading S3, with the
MLflow tracking) under an environment holding planted credentials: AWS keys and session token, an MLflow
token, username and password, and a password inside MLFLOW_TRACKING_URI. Then:
- names: the manifest, every shard's sample metadata, the DALI reader's batches and the MLflow run's dataset
  input and manifest artifact hold every name exactly;
- secrets: none of the planted values appears in any output — the run folder (checkpoints, metrics.jsonl,
  config records, tracking.json), the MLflow store and its artifacts, the run's params, tags and
  metrics as the MLflow client returns them, stdout/stderr of pack and training, the shards, the manifest, the
  pack work folder and the DALI cache.
(Keys with `#`/`?` and `=` in S3 prefixes are test_s3.py's; keys that differ only in separators
test_pack_faults.py's.)
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import _stop, free_port, run_env, start_mlflow_server
from tests.launch import TRAIN

pytestmark = pytest.mark.slow

# (identity, video) names; the fourth and fifth are ~200 characters
NAMES = [
    ("Zoë O'Brien-Müller \"the 2nd\" = #1", "interview [take 2] 😀"),
    ("محمد بن عبد الله", "مقابلة رقم ٣ #final"),
    ("王小明" * 33 + " (北京)", "采访 第一部分 " * 12),
    ("x" * 199 + "!", "v=" + "y" * 198),
    ("Ωμέγα 🙂👩‍🔬 名前 = [a, b]", "clip #7 ; rm -rf / ; echo 'hi'"),
]
OUT = "s3://names-out/year=2024/数据 [v1] Zoë"  # Hydra needs it quoted


def planted() -> dict[str, str]:
    tag = secrets.token_hex(6)
    return {"AWS_ACCESS_KEY_ID": f"AKIAPLANTED{tag.upper()}", "AWS_SECRET_ACCESS_KEY": f"plantedSecretKey{tag}",
            "AWS_SESSION_TOKEN": f"plantedSessionToken{tag}", "MLFLOW_TRACKING_TOKEN": f"plantedMlflowToken{tag}",
            "MLFLOW_TRACKING_USERNAME": f"planteduser{tag}", "MLFLOW_TRACKING_PASSWORD": f"plantedMlflowPw{tag}",
            "URI_PASSWORD": f"plantedUriPw{tag}"}


@pytest.fixture(scope="module")
def hostile_run(corpus, s3_server, tmp_path_factory):
    """Pack (S3 -> S3) and train on names of every script with planted credentials; yields what they produced."""
    from aupretrain.data import storage

    tmp = tmp_path_factory.mktemp("names")
    s3 = storage.s3_client()
    for b in ("names-in", "names-out"):
        s3.create_bucket(Bucket=b)
    videos = sorted(corpus.glob("*/*.mp4"))
    for (ident, video), src in zip(NAMES, videos):
        storage.put_file(src, f"s3://names-in/corpus/{ident}/{video}.mp4")
    secret = planted()
    mlflow_dir, port = tmp / "mlflow", free_port()
    server = start_mlflow_server(mlflow_dir, port)
    try:
        env = {k: v for k, v in secret.items() if k != "URI_PASSWORD"}
        env["MLFLOW_TRACKING_URI"] = f"http://aupretrain:{secret['URI_PASSWORD']}@127.0.0.1:{port}"
        env["XDG_CACHE_HOME"] = str(tmp / "cache")
        env["AWS_ENDPOINT_URL"] = s3_server["AWS_ENDPOINT_URL"]
        outputs = {}
        t0 = time.monotonic()
        pack = subprocess.run([sys.executable, "-m", "aupretrain.cli.pack", "s3://names-in/corpus", OUT, "--align",
                               "center", "--clip-len", "8", "--stride", "2", "--size", "64", "--samples-per-shard",
                               "4", "--workers", "1", "--work-dir", str(tmp / "work")], cwd=tmp,
                              env=run_env(**env), capture_output=True, text=True, timeout=600)
        outputs["pack"] = pack.stdout + pack.stderr
        assert pack.returncode == 0, outputs["pack"][-4000:]
        pack_s, t0 = time.monotonic() - t0, time.monotonic()
        run_dir = tmp / "runs" / "hostile"
        train = subprocess.run([sys.executable, TRAIN, "experiment=smoke", f'data.shards="{OUT}"', "objective=tcl",
                                f"run.dir={run_dir}", "train.steps=3", "train.checkpoint_every=2",
                                "train.eval_at_end=false", "tracking.system_metrics_every_s=1"],
                               cwd=tmp, env=run_env(**env), capture_output=True, text=True, timeout=600)
        outputs["train"] = train.stdout + train.stderr
        assert train.returncode == 0, outputs["train"][-4000:]
        took = f"pack {pack_s:.0f} s, training {time.monotonic() - t0:.0f} s"
        yield {"took": took, "tmp": tmp, "run_dir": run_dir, "mlflow_dir": mlflow_dir, "uri": f"http://127.0.0.1:{port}",
               "secret": secret, "outputs": outputs, "work": tmp / "work", "cache": tmp / "cache"}
    finally:
        _stop(server)


def run_of(h):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(h["uri"])
    run_id = json.loads((h["run_dir"] / "tracking.json").read_text())["run_id"]
    return client, client.get_run(run_id)


def test_names_of_any_length_and_script_survive_pack_shards_reader_and_mlflow(hostile_run, fault):
    from aupretrain.data import shards, storage
    from aupretrain.data.dali_reader import ClipLoader, ReaderSettings

    h = hostile_run
    want_ids = sorted(i for i, _ in NAMES)
    want_videos = {f"{i}/{v}" for i, v in NAMES}
    m = shards.load_manifest(OUT)
    in_manifest = m.identities == want_ids and m.rejects == [] and m.videos == len(NAMES)
    local = h["tmp"] / "shards-copy"
    metas = []
    for info in m.shards:
        storage.get_file(storage.join(OUT, info.name), local / info.name)
        metas += [s.meta for s in shards.read_samples(str(local / info.name))]
    in_shards = {x.video for x in metas} == want_videos and {x.identity for x in metas} == set(want_ids)
    loader = ClipLoader(ReaderSettings(root=OUT, batch_size=m.samples, input_size=32, device="cpu", num_threads=1,
                                       shuffle_buffer=4))  # one batch: every clip
    it = iter(loader)
    seen = [x for _ in range(loader.steps_per_epoch) for x in next(it)["meta"]]
    in_reader = {x["video"] for x in seen} == want_videos and {x["identity"] for x in seen} == set(want_ids)
    client, run = run_of(h)
    ds = run.inputs.dataset_inputs[0].dataset
    art = Path(client.download_artifacts(run.info.run_id, "dataset/manifest.json", str(h["tmp"] / "art")))
    logged = json.loads(art.read_text())
    source = json.loads(ds.source).get("uri")
    in_mlflow = logged["identities"] == want_ids and source == OUT and ds.name == OUT.rsplit("/")[-1]
    longest = max(len(i) for i, _ in NAMES)
    fault("identity/video names of any length and script (CJK, Arabic, emoji, quotes, = # [ ;, 200 chars)",
          f"{len(NAMES)} identities (longest {longest} chars) packed S3 -> S3 under {OUT!r} and trained on: names "
          f"exact in the manifest {in_manifest}, shard metadata {in_shards}, DALI batches {in_reader}, MLflow dataset "
          f"input + manifest artifact {bool(in_mlflow)} ({h['took']})", data_lost=not (in_manifest and in_shards and in_reader
                                                                         and in_mlflow))
    assert in_manifest, (m.identities, m.rejects)
    assert in_shards, sorted({x.video for x in metas})
    assert in_reader and len(seen) == m.samples, sorted({x["video"] for x in seen})
    assert in_mlflow, (ds.name, source, logged["identities"])
    assert f"shards {OUT}" in h["outputs"]["train"]  # the quoted override reached the run as it was written


def test_planted_credentials_appear_in_no_output(hostile_run, fault):
    """Every file the pipeline wrote (local and S3), the MLflow store and artifacts, the run as the client returns
    it, and the programs' output are searched for each planted value (and for the URI password's key=value
    forms)."""
    from aupretrain.data import storage

    h = hostile_run
    values = {k: v.encode() for k, v in h["secret"].items()}
    found: dict[str, list[str]] = {}

    def search(where: str, data: bytes) -> None:
        for k, v in values.items():
            if v in data:
                found.setdefault(k, []).append(where)

    files = 0
    for root in (h["run_dir"], h["mlflow_dir"], h["work"], h["cache"]):
        for p in (root.rglob("*") if root.exists() else []):
            if p.is_file():
                files += 1
                search(str(p), p.read_bytes())
    objects = 0
    for key, _ in storage.list_files("s3://names-out/"):
        objects += 1
        search(key, storage.read_bytes(key))
    client, run = run_of(h)
    search("mlflow params", json.dumps(run.data.params).encode())
    search("mlflow tags", json.dumps(run.data.tags).encode())
    search("mlflow metrics", json.dumps(run.data.metrics).encode())
    search("mlflow run info", str(run.info).encode())
    search("mlflow inputs", str(run.inputs).encode())
    for name, text in h["outputs"].items():
        search(f"{name} stdout/stderr", text.encode())
    assert files > 20 and objects >= 4 and len(run.data.params) > 50  # the search did cover the outputs
    fault("planted S3 keys, MLflow token/password and a password in MLFLOW_TRACKING_URI",
          f"searched {files} files (run folder with checkpoints, MLflow store and artifacts, pack work folder, DALI "
          f"cache), {objects} S3 objects (shards, manifest), the run's params/tags/metrics/inputs and the programs' "
          f"output: {'found ' + json.dumps(found) if found else 'none of the 7 values anywhere'}",
          data_lost=bool(found))
    assert not found, found
