"""Kubernetes launch files: manifests validated offline (core kinds against Kubernetes' own schemas with
kubernetes-validate, the PyTorchJob against its CRD schema kept in the repo, its pod templates against
PodTemplateSpec), and the image's entrypoint run as two simulated pods — two processes given the environment
the training-operator or the Indexed Job gives a pod — doing a real 2-node c10d rendezvous and training."""
from __future__ import annotations

import copy
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, free_port, run_env, run_together, tracked_runs

K8S = ROOT / "launchers" / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest version the manifests target (backoffLimitPerIndex is GA in 1.33, beta 1.29+)


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def pod_template_errors(template: dict) -> list[str]:
    """Errors of a pod template against Kubernetes' PodTemplateSpec schema (strict: unknown fields are errors)."""
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    folder = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    versions = sorted((p.name for p in folder.glob(f"v{KUBERNETES_VERSION}.*-local-strict")))
    schema = json.loads((folder / versions[-1] / "podtemplatespec-v1.json").read_text())
    defs = json.loads((folder / versions[-1] / "_definitions.json").read_text())
    registry = Resource.from_contents(schema) @ (Resource.from_contents(defs) @ Registry())
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(template)]


def validate(doc: dict) -> list[str]:
    """Validation errors of one manifest document ([] when valid)."""
    import jsonschema
    import kubernetes_validate

    if doc["kind"] == "PyTorchJob":
        schema = json.loads((K8S / "schema" / "pytorchjob-v1.schema.json").read_text())
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}"
                  for e in jsonschema.Draft202012Validator(schema).iter_errors(doc)]
        for role, spec in doc["spec"]["pytorchReplicaSpecs"].items():
            errors += [f"{role}.template.{e}" for e in pod_template_errors(spec["template"])]
        return errors
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path))}: {e.message}"]
    return []


def pod_specs() -> dict[str, dict]:
    job = next(d for d in documents("indexed-job.yaml") if d["kind"] == "Job")
    ptj = documents("pytorchjob.yaml")[0]
    return {"indexed-job": job["spec"]["template"]["spec"],
            **{f"pytorchjob-{r}": s["template"]["spec"] for r, s in ptj["spec"]["pytorchReplicaSpecs"].items()}}


def test_manifests_validate_against_their_schemas():
    files = ["common.yaml", "pytorchjob.yaml", "indexed-job.yaml"]
    kinds = []
    for name in files:
        for doc in documents(name):
            kinds.append(doc["kind"])
            assert validate(doc) == [], (name, doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "Job", "PersistentVolumeClaim", "PyTorchJob", "Secret", "Service"]
    # the validators do catch mistakes (a test that cannot fail proves nothing)
    bad = copy.deepcopy(documents("pytorchjob.yaml")[0])
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resource"] = {}
    bad["spec"]["pytorchReplicaSpecs"]["Launcher"] = bad["spec"]["pytorchReplicaSpecs"]["Worker"]
    errors = validate(bad)
    assert any("resource" in e for e in errors) and any("Launcher" in e for e in errors), errors
    job = copy.deepcopy(next(d for d in documents("indexed-job.yaml") if d["kind"] == "Job"))
    job["spec"]["completions"] = "two"
    assert validate(job)


def test_manifests_carry_what_a_multi_node_job_needs():
    common = {d["kind"]: d for d in documents("common.yaml")}
    assert "ReadWriteMany" in common["PersistentVolumeClaim"]["spec"]["accessModes"]
    assert {"MLFLOW_TRACKING_URI", "AUPRETRAIN_SHARDS", "RUN_DIR"} <= set(common["ConfigMap"]["data"])
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(common["Secret"]["stringData"])
    for name, spec in pod_specs().items():
        c = spec["containers"][0]
        assert spec["terminationGracePeriodSeconds"] >= 300, name  # a step + a checkpoint must fit
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0, name
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
        assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"], name
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
        shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"], name
        assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"]), name
        refs = [next(iter(e.values()))["name"] for e in c["envFrom"]]
        assert refs == ["aupretrain-config", "aupretrain-s3"], name
    job, service = (next(d for d in documents("indexed-job.yaml") if d["kind"] == k) for k in ("Job", "Service"))
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    sub = job["spec"]["template"]["spec"]["subdomain"]
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{sub}" and sub == service["metadata"]["name"]
    assert int(env["NNODES"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "launchers/k8s/entrypoint.sh" in dockerfile and 'ENTRYPOINT ["aupretrain-k8s-entrypoint"]' in dockerfile
    assert "USER 1000" in dockerfile


def pod_env(kind: str, index: int, port: int, run_dir: Path, shards: Path, db: Path) -> dict:
    """The environment the manifest and its controller give pod `index`, with the cluster addresses and sizes
    replaced by this machine's (pod DNS names -> 127.0.0.1, 8 GPUs -> 1 CPU rank)."""
    if kind == "indexed-job":
        job = next(d for d in documents("indexed-job.yaml") if d["kind"] == "Job")
        c = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        env.update(JOB_COMPLETION_INDEX=str(index), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   LOCAL_ADDR="127.0.0.1")  # status.podIP
    else:
        role = "Master" if index == 0 else "Worker"
        c = documents("pytorchjob.yaml")[0]["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        env["LOCAL_ADDR"] = "127.0.0.1"  # status.podIP
        # what the training-operator adds for a pod (v1 PyTorchJob without elasticPolicy)
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(index), WORLD_SIZE="2",
                   PET_MASTER_ADDR="127.0.0.1", PET_MASTER_PORT=str(port), PET_NODE_RANK=str(index))
    env.update(NPROC_PER_NODE="1", PET_NPROC_PER_NODE="1", RUN_DIR=str(run_dir), AUPRETRAIN_SHARDS=str(shards),
               MLFLOW_TRACKING_URI=f"sqlite:///{db}", HOSTNAME=f"pod-{index}", OMP_NUM_THREADS="1",
               RDZV_ID=f"{kind}-{port}")
    return run_env(**env)


def start_pods(kind, tmp_path, packed, port, overrides) -> list[subprocess.Popen]:
    run_dir, db = tmp_path / "runs" / "k8s", tmp_path / "mlflow.db"
    return [subprocess.Popen(["bash", str(K8S / "entrypoint.sh"), *overrides], cwd=tmp_path,
                             env=pod_env(kind, i, port, run_dir, packed, db), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True) for i in range(2)]


def start_pod(kind, tmp_path, packed, overrides, **env) -> subprocess.Popen:
    """One pod alone (its environment with `env` on top: NNODES=1 for a one-node job)."""
    run_dir, db = tmp_path / "runs" / "k8s", tmp_path / "mlflow.db"
    return subprocess.Popen(["bash", str(K8S / "entrypoint.sh"), *overrides], cwd=tmp_path,
                            env={**pod_env(kind, 0, free_port(), run_dir, packed, db), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def exits(procs: list[subprocess.Popen], codes: list[int], timeout: float = 420) -> list[str]:
    """`run_together` for pods expected to exit with `codes`."""
    return run_together(procs, timeout, codes)


def wait_for_steps(run_dir: Path, n: int, procs: list[subprocess.Popen], timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not (run_dir / "metrics.jsonl").exists() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < n:
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.poll() for p in procs]
        time.sleep(0.5)


def test_manifests_act_on_the_entrypoint_exit_status():
    """The entrypoint exits 2 for a refused configuration and 143 for a stop on a signal (launchers/k8s/
    entrypoint.sh): the Indexed Job fails at once on 2 and recreates an index that exited 143 without counting
    it; the PyTorchJob (restartPolicy ExitCode) fails on 2 and recreates on 143, as the training-operator
    classifies exit codes (retryable: >= 128; kubeflow/common: 130, 137, 143, 138)."""
    job = next(d for d in documents("indexed-job.yaml") if d["kind"] == "Job")
    rules = job["spec"]["podFailurePolicy"]["rules"]

    def action(code: int) -> str | None:  # the first rule whose exit codes match (the Job controller's order)
        for r in rules:
            ex = r.get("onExitCodes")
            if ex and ex.get("containerName", "trainer") == "trainer" and (code in ex["values"]) == (ex["operator"] == "In"):
                return r["action"]
        return None

    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert action(2) == "FailJob" and action(143) == "Ignore" and action(1) is None, rules
    assert any(r["action"] == "Ignore" and r.get("onPodConditions") == [{"type": "DisruptionTarget", "status": "True"}]
               for r in rules)
    ptj = documents("pytorchjob.yaml")[0]
    for role, spec in ptj["spec"]["pytorchReplicaSpecs"].items():
        assert spec["restartPolicy"] == "ExitCode", role
        assert spec["template"]["spec"]["containers"][0]["name"] == "pytorch", role  # whose exit code is read
    for retryable in (lambda c: c >= 128, lambda c: c in (130, 137, 143, 138)):
        assert retryable(143) and not retryable(2) and not retryable(1)


@pytest.mark.parametrize("override, where", [("data.batch_size=-4", "before torchrun"),
                                             ("optim.name=lars", "before torchrun"),
                                             ("train.resume=/nonexistent/checkpoint", "in the trainer")])
def test_a_refused_configuration_exits_2_once(override, where, packed, tmp_path):
    """A configuration error fails the pod with exit 2 (the Indexed Job's FailJob rule, the PyTorchJob's
    ExitCode policy) and is said once: not retried by torchrun (whose own exit status would be 1 after
    MAX_RESTARTS restarts of ranks that all refuse again). A bad setting is refused before torchrun starts (LARS
    under ZeRO-2 too: `--check` runs the optimizer's refusal); a refusal met inside the trainer (here: a
    `train.resume` path that is not there — the run's folders are read only when the job starts) stops torchrun
    instead of restarting the ranks."""
    t0 = time.time()
    pod = start_pod("indexed-job", tmp_path, packed, ["experiment=smoke", override], NNODES="1")
    out = exits([pod], [2], timeout=180)[0]
    assert out.count("aupretrain-train: error:") == 1, out[-4000:]
    assert override.split("=")[0] in out and "exit 2, not retried" in out, out[-4000:]
    if where == "before torchrun":
        assert "torch.distributed" not in out, out[-4000:]  # torchrun never started
        assert time.time() - t0 < 60
    else:
        assert "a rank refused the configuration" in out, out[-4000:]


@pytest.mark.slow
def test_a_terminated_pod_exits_143_and_its_rerun_resumes(packed, tmp_path):
    """SIGTERM to the entrypoint (the kubelet's, on a drain or eviction; here the PyTorchJob's environment, one
    node): the ranks checkpoint, last_stop.json says "signal", and the pod exits 143, so that it is recreated
    (exit 0 would complete the pod and end the job as Succeeded mid-run). The same pod started again resumes
    from the checkpoint and exits 0 once the run is finished."""
    steps = 10
    overrides = ["experiment=smoke", f"train.steps={steps}", "train.eval_at_end=false", "train.log_every=1",
                 "train.signal_check_every=1"]
    run_dir = tmp_path / "runs" / "k8s"
    pod = start_pod("pytorchjob", tmp_path, packed, overrides, PET_NNODES="1")
    wait_for_steps(run_dir, 1, [pod])
    pod.send_signal(signal.SIGTERM)
    out = exits([pod], [143])[0]
    stop = json.loads((run_dir / "last_stop.json").read_text())
    assert stop["reason"] == "signal" and stop["step"] < steps, stop
    assert "the ranks stopped on a signal with a checkpoint: exit 143" in out, out[-3000:]
    out = exits([start_pod("pytorchjob", tmp_path, packed, overrides, PET_NNODES="1")], [0])[0]
    assert f"resumed from {run_dir / 'checkpoints' / ('step_%d' % stop['step'])}" in out, out[-3000:]
    stop = json.loads((run_dir / "last_stop.json").read_text())
    assert stop["reason"] == "finished" and stop["step"] == steps, stop


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pytorchjob", "indexed-job"])
def test_two_simulated_pods_rendezvous_and_train(kind, packed, tmp_path):
    """Two pods, one rank each, c10d rendezvous: one run of world size 2 (both pods' ranks take part), one
    MLflow run. The Indexed-Job pods are also terminated mid-run (SIGTERM to pod 1's entrypoint, as the
    kubelet does): both stop at the same step with a checkpoint and both exit 143 (pod 0 too, though it got no
    signal: exit 0 would complete its index), and recreated pods finish the run."""
    steps = 12
    overrides = ["experiment=smoke", f"train.steps={steps}", "train.eval_at_end=false", "train.log_every=1",
                 "train.signal_check_every=1", f"eval.corpus={tmp_path / 'eval'}"]
    port = free_port()
    pods = start_pods(kind, tmp_path, packed, port, overrides)
    run_dir = tmp_path / "runs" / "k8s"
    if kind == "indexed-job":
        wait_for_steps(run_dir, 2, pods)
        pods[1].send_signal(signal.SIGTERM)  # the entrypoint (PID 1 in the container)
        outs = exits(pods, [143, 143])
        stop = json.loads((run_dir / "last_stop.json").read_text())
        assert stop["reason"] == "signal" and stop["step"] < steps, stop
        assert "SIGTERM: asking the ranks to checkpoint" in outs[1]
        assert "received SIGUSR1" in outs[1], outs[1][-3000:]  # pod 1's rank got it; pod 0's followed the agreement
        pods = start_pods(kind, tmp_path, packed, free_port(), overrides)  # the Job recreates the pods
    outs = run_together(pods)
    log = "\n".join(outs)
    assert "run " in log and ": 2 ranks," in log, log[-4000:]
    assert "rendezvous 127.0.0.1:" in outs[0] and "rendezvous 127.0.0.1:" in outs[1]
    stop = json.loads((run_dir / "last_stop.json").read_text())
    assert stop["reason"] == "finished" and stop["step"] == steps and stop["world_size"] == 2, stop
    assert (run_dir / "encoder.pt").exists()
    client, runs = tracked_runs(tmp_path / "mlflow.db")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_id, r.info.status) for r in runs]
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert sorted({m.step for m in history}) == list(range(1, steps + 1))
