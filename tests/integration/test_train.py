"""Real launches: deepspeed (2 CPU ranks, gloo, ZeRO-2), torchrun, plain python; MLflow server; eval."""
import json
import math
import re
import subprocess
import sys

import pytest

from tests.conftest import BIN, run_env
from tests.launch import TRAIN, checkpoint_steps, common, launch, only_run

pytestmark = pytest.mark.slow


def test_deepspeed_two_ranks_trains_and_logs_to_mlflow(packed, tmp_path, mlflow_server):
    import mlflow

    from tests.conftest import free_port

    cmd = [str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), TRAIN,
           # TCL: its loss falls visibly within 40 tiny steps (CLP's reconstruction terms are noisier at batch 4;
           # CLP, MoCo and the supervised bound run end to end in test_torchrun_two_ranks)
           *common(packed, tmp_path, **{"objective": "tcl", "train.steps": 40, "train.log_every": 4,
                                        "train.eval_at_end": "false", "tracking.experiment": "ds-test",
                                        "tracking.system_metrics_every_s": 1})]
    launch(cmd, tmp_path, MLFLOW_TRACKING_URI=mlflow_server)
    run_dir = only_run(tmp_path)
    ck = run_dir / "checkpoints" / "step_40"
    assert (ck / "COMPLETE").exists() and (run_dir / "encoder.pt").exists()
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 40

    client = mlflow.tracking.MlflowClient(mlflow_server)
    run = client.get_run(meta["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["objective.name"] == "tcl"
    assert run.data.params["deepspeed.zero_optimization.stage"] == "2"
    loss = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(loss) == 10 and all(math.isfinite(v) for v in loss)
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, f"loss did not go down: {loss}"
    # The pretext task is solvable: retrieval of the positive among the 8 clips x 2 views x 8 frames of the
    # global batch (own view of the own clip masked: 120 candidates, chance 1/120) rises well above chance.
    acc = [m.value for m in client.get_metric_history(run.info.run_id, "train/tcl_acc")]
    assert sum(acc[-3:]) / 3 > 4 / 120, acc  # the mean of the last three logs is above 4x chance
    for key in ("perf/frames_per_s", "perf/step_s", "perf/data_stall_pct", "data/skipped", "train/tcl_acc"):
        assert key in run.data.metrics
    arts = [a.path for a in client.list_artifacts(run.info.run_id)]
    assert "config.yaml" in arts and "dataset" in arts
    # where it ran (every rank's host and device) and what it read (the shards as the run's dataset input)
    assert run.data.tags["nodes"] == "1" and run.data.tags["devices"].startswith("2 x cpu")
    (inp,) = run.inputs.dataset_inputs
    import hashlib

    from aupretrain.data.dataset import manifest_as_read
    from aupretrain.data.shards import Manifest

    manifest = manifest_as_read(Manifest.from_json((packed / "manifest.json").read_text()), [])  # nothing left out
    assert inp.dataset.name == packed.name
    assert inp.dataset.digest == hashlib.sha256(manifest.encode()).hexdigest()[:10]
    assert json.loads(inp.dataset.source)["uri"].endswith(packed.name)
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "train"
    cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")  # sampled every second
    assert cpu and all(0 <= m.value <= 100 for m in cpu)
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0

    from aupretrain import load_encoder
    import torch

    enc = load_encoder(run_dir / "encoder.pt")
    codes = enc.encode(torch.randint(0, 255, (3, 64, 64, 3), dtype=torch.uint8))
    assert codes.shape == (3, enc.au_dim) and torch.isfinite(codes).all()


def test_local_rank_argument_is_accepted_in_one_process(packed, tmp_path):
    cmd = [sys.executable, TRAIN, "--local_rank=0", *common(packed, tmp_path, **{
        "train.steps": 2, "train.online_probe.every": 1, "train.online_probe.identities": 4,
        "train.online_probe.frames": 12})]
    r = launch(cmd, tmp_path)
    run_dir = only_run(tmp_path)
    assert (run_dir / "checkpoints" / "step_2" / "COMPLETE").exists()
    assert (tmp_path / "mlflow.db").exists()  # default store: the folder the run started from
    summary = json.loads((run_dir / "eval.json").read_text())
    assert set(summary["results"]) == {"pretrained", "random-init", "HOG", "always-positive"}
    assert summary["split"] == "test"
    for row in ("mean", "random-init", "HOG", "always-positive"):  # the F1 table is printed with reference rows
        assert row in r.stdout
    # the probe ran as its own process and logged into the training run (the store the run folder recorded)
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.data.metrics["eval/f1_mean"] == pytest.approx(summary["results"]["pretrained"]["f1_mean"])
    assert "eval_hog/f1_mean" in run.data.metrics and run.info.status == "FINISHED"
    # the online probe ran at steps 1 and 2 on validation identities (its own corpus, not the test one)
    online = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(run_id, "online/f1_mean")
    assert sorted(m.step for m in online) == [1, 2] and all(0 <= m.value <= 1 for m in online)
    assert (tmp_path / "synthetic_online-validation-4x1x12-s7").is_dir()
    # aupretrain-compare reads this real run back: one row with its objective, dataset, protocol, F1 and speed
    import csv

    from aupretrain.cli.compare import main as compare

    assert compare(["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--out", str(tmp_path / "cmp")]) == 0
    (row,) = list(csv.DictReader(open(tmp_path / "cmp.csv")))
    assert row["run_id"] == run_id and row["objective"] == run.data.params["objective.name"]
    assert (row["dataset"], row["protocol"]) == ("synthetic", "linear") and float(row["frames_per_s"]) > 0
    assert float(row["f1_mean"]) == pytest.approx(summary["results"]["pretrained"]["f1_mean"])
    assert (tmp_path / "cmp.png").stat().st_size > 0


@pytest.mark.parametrize("objective,accum,term,extra", [
    ("clp", 2, "au_consistency", {}),
    ("moco", 1, "moco_acc", {"deepspeed.torch_autocast.enabled": "true"}),  # bf16 compute, fp32 weights and EMA
    ("supervised", 1, "label_acc", {"deepspeed.bf16.enabled": "true"}),  # bf16 weights: head from the master copy
    ("tcl", 1, "tcl_acc", {"deepspeed.bf16.enabled": "true"}),  # DeepSpeed's bf16 weights: inputs cast to bf16
])
def test_torchrun_two_ranks(packed, corpus, tmp_path, objective, accum, term, extra):
    """torchrun launch; every objective end to end: CLP with feature-cache accumulation, MoCo with its queue
    under autocast, the supervised bound with labels under DeepSpeed's bf16 weights (its own classifier kept as an
    AU head from the fp32 master weights and scored by the end-of-run evaluation), TCL with DeepSpeed's bf16
    weights."""
    sup = objective == "supervised"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", TRAIN,
           *common(packed, tmp_path, **{"objective": objective, "deepspeed.gradient_accumulation_steps": accum,
                                        "data.labels": str(corpus), **extra,
                                        "train.steps": 3, "train.eval_at_end": str(sup).lower(),
                                        "eval.random_baseline": "false", "eval.baselines": "[]",
                                        "tracking.enabled": "false"})]
    r = launch(cmd, tmp_path)
    run_dir = only_run(tmp_path)
    meta = json.loads((run_dir / "checkpoints" / "step_3" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["config"]["objective"]["name"] == objective
    assert f" {term} " in r.stderr  # the objective's own terms are logged every step
    assert (run_dir / "au_head").exists() == sup  # only a method with its own AU classifier writes one
    if sup:
        import torch

        from aupretrain import load_encoder
        from aupretrain.eval.head import load_head

        head = json.loads((run_dir / "au_head" / "head.json").read_text())
        assert head["aus"] == json.loads((corpus / "corpus.json").read_text())["aus"] and head["steps"] == 3
        probs = load_head(run_dir / "au_head", load_encoder(run_dir / "encoder.pt"))(
            torch.randint(0, 255, (3, 48, 48, 3), dtype=torch.uint8))
        assert probs.shape == (3, len(head["aus"])) and ((probs >= 0) & (probs <= 1)).all()
        # bf16 weights in training; the head and the encoder hold the last checkpoint's fp32 master weights
        from safetensors.torch import load_file

        from aupretrain.engine.checkpoint import full_weights

        master = full_weights(run_dir / "checkpoints" / "step_3")
        assert torch.equal(load_file(run_dir / "au_head" / "head.safetensors")["linear.weight"],
                           master["classifier.weight"])
        assert master["classifier.weight"].dtype == torch.float32
        assert not torch.equal(master["classifier.weight"], master["classifier.weight"].bfloat16().float())
        enc = torch.load(run_dir / "encoder.pt", weights_only=True)["state_dict"]
        weights = {k: v for k, v in enc.items() if not k.endswith(("mean", "std"))}  # (input normalisation buffers)
        assert weights and all(torch.equal(v, master[f"encoder.{k}"]) for k, v in weights.items())
        results = json.loads((run_dir / "eval.json").read_text())["results"]
        assert list(results) == ["pretrained", "pretrained (saved head)"]
        assert results["pretrained (saved head)"]["head"] == str(run_dir / "au_head")


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stages(packed, tmp_path, stage):
    """ZeRO stages 0-3 on 2 ranks: trains, checkpoints (stage 3 also stops and resumes; stage 2, every other test's
    default, is resumed there), and exports a full fp32 encoder (gathered from the partitions). Stage 0 runs LARS;
    stage 1 trains CLP with its HOG terms (`clp_hog`) in DeepSpeed's bf16 mode (bf16 weights: encoder.pt holds the
    fp32 master weights, as the export of the checkpoint does)."""
    import torch

    from aupretrain import load_encoder

    run_dir = tmp_path / "runs" / f"zero{stage}"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", TRAIN,
           *common(packed, tmp_path, **{"deepspeed": f"zero{stage}", "objective": "tcl", "run.dir": str(run_dir),
                                        **({"optim.name": "lars"} if stage == 0 else {}),  # LARS needs per-layer tensors
                                        **({"objective": "clp_hog", "deepspeed.bf16.enabled": "true"} if stage == 1 else {}),
                                        "train.steps": 4, "train.eval_at_end": "false", "tracking.enabled": "false"})]
    if stage == 3:  # partitioned weights: stop and resume too (stages 0-2 share stage 2's resume path)
        launch([*cmd, "train.stop_at=2"], tmp_path)
    r = launch(cmd, tmp_path)
    assert stage != 3 or "at step 2 (data stream continues where it stopped)" in r.stderr
    meta = json.loads((run_dir / "checkpoints" / "step_4" / "meta.json").read_text())
    assert meta["config"]["deepspeed"]["zero_optimization"]["stage"] == stage
    from aupretrain.engine.choice import problems  # the files DeepSpeed's load_checkpoint opens, by its names

    assert problems(run_dir / "checkpoints" / "step_4") == [], sorted(p.name for p in (run_dir / "checkpoints" / "step_4").iterdir())
    enc = load_encoder(run_dir / "encoder.pt")
    sd = torch.load(run_dir / "encoder.pt", weights_only=True)["state_dict"]
    assert all(v.numel() > 0 and v.dtype in (torch.float32, torch.int64) for v in sd.values())
    codes = enc.encode(torch.randint(0, 255, (2, 48, 48, 3), dtype=torch.uint8))
    assert codes.shape == (2, enc.au_dim) and torch.isfinite(codes).all()
    # aupretrain-export gathers the same fp32 encoder from the checkpoint's partitions, as safetensors + JSON
    from aupretrain.cli.export import main as export_main

    assert export_main([str(run_dir / "checkpoints" / "step_4"), str(tmp_path / "export")]) == 0
    assert json.loads((tmp_path / "export" / "config.json").read_text())["step"] == 4
    exported = load_encoder(tmp_path / "export")
    crops = torch.randint(0, 255, (2, 3, 40, 40), dtype=torch.uint8)  # uint8 NCHW, resized inside
    assert torch.allclose(exported(crops), enc(crops), atol=1e-5)
    assert torch.allclose(exported(crops.float() / 255), enc(crops), atol=1e-5)  # float in [0, 1] alike
    if stage == 2:  # an encoder.pt file named directly exports that file
        assert export_main([str(run_dir / "encoder.pt"), str(tmp_path / "export_pt")]) == 0
        assert json.loads((tmp_path / "export_pt" / "config.json").read_text())["source"] == str(run_dir / "encoder.pt")
    if stage == 3:  # another number of ranks under ZeRO-3 (no universal conversion here): refused, one line
        one = subprocess.run([sys.executable, TRAIN, *cmd[5:], "train.steps=6"], cwd=tmp_path, env=run_env(),
                             capture_output=True, text=True, timeout=300)
        err = [x for x in one.stderr.splitlines() if x.startswith("aupretrain-train: error:")]
        assert one.returncode == 2 and "Traceback" not in one.stderr and len(err) == 1, one.stderr[-3000:]
        assert "written by 2 ranks and this job has 1" in err[0] and "not stage 3" in err[0]


def test_checkpoints_are_pruned_and_resume_takes_auto_never_or_a_path(packed, tmp_path):
    """train.keep_checkpoints keeps the newest k complete checkpoints; train.resume=PATH starts a new run folder
    from another run's checkpoint, and the same command relaunched continues the run's own; never starts a fresh
    folder and is refused in a used one; train.steps below the checkpoint's step and a path without a checkpoint
    are one-line errors; a COMPLETE checkpoint that lost a file is passed over for the newest whole one."""
    first = tmp_path / "runs" / "first"
    base = common(packed, tmp_path, **{"train.eval_at_end": "false", "tracking.enabled": "false", "train.steps": 5})
    launch([sys.executable, TRAIN, *base, f"run.dir={first}", "train.checkpoint_every=1", "train.keep_checkpoints=2"],
           tmp_path)
    assert checkpoint_steps(first) == [4, 5] and not (first / "checkpoints" / "step_3").exists()
    second = tmp_path / "runs" / "second"
    r = launch([sys.executable, TRAIN, *base, f"run.dir={second}", "train.steps=6",
                f"train.resume={first / 'checkpoints' / 'step_4'}"], tmp_path)
    assert f"resumed from {first / 'checkpoints' / 'step_4'} at step 4" in r.stderr
    assert checkpoint_steps(second) == [6] and (second / "config.yaml").exists() and (second / "encoder.pt").exists()
    # the same command relaunched continues the run's own checkpoint, not PATH again (chained jobs)
    r = launch([sys.executable, TRAIN, *base, f"run.dir={second}", "train.steps=7",
                f"train.resume={first / 'checkpoints' / 'step_4'}"], tmp_path)
    assert "at step 6" in r.stderr and "step 7/7" in r.stderr and checkpoint_steps(second) == [6, 7]
    never = subprocess.run([sys.executable, TRAIN, *base, f"run.dir={second}", "train.resume=never"], cwd=tmp_path,
                           env=run_env(), capture_output=True, text=True, timeout=300)
    assert never.returncode == 2 and "already holds" in never.stderr and checkpoint_steps(second) == [6, 7]
    third = tmp_path / "runs" / "third"
    r = launch([sys.executable, TRAIN, *base, f"run.dir={third}", "train.steps=2", "train.resume=never"], tmp_path)
    assert "resumed from" not in r.stderr and "step 2/2" in r.stderr
    back = subprocess.run([sys.executable, TRAIN, *base, f"run.dir={second}", "train.steps=5"], cwd=tmp_path,
                          env=run_env(), capture_output=True, text=True, timeout=300)  # step 7 cannot go back to 5
    assert back.returncode == 2 and "cannot go back" in back.stderr and "Traceback" not in back.stderr
    bad = subprocess.run([sys.executable, TRAIN, *base, f"run.dir={second}", f"train.resume={tmp_path / 'nothing'}"],
                         cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no such file or folder" in bad.stderr and "Traceback" not in bad.stderr
    # step 7 marked COMPLETE but its model states lost (a partial copy): the relaunch passes it over, by name
    (second / "checkpoints" / "step_7" / "mp_rank_00_model_states.pt").unlink()
    r = launch([sys.executable, TRAIN, *base, f"run.dir={second}", "train.steps=8"], tmp_path)
    assert "step_7: mp_rank_00_model_states.pt is missing" in r.stderr and "at step 6" in r.stderr, r.stderr[-3000:]
    assert "step 8/8" in r.stderr and checkpoint_steps(second) == [6, 7, 8]  # the damaged one is left as it is


def test_universal_checkpoint_resize(packed, tmp_path):
    """A job ends at train.stop_at with a checkpoint and its reason recorded; then 2 ranks -> 1 rank -> 2 ranks
    under ZeRO-2 through DeepSpeed universal checkpoints. The weights arrive intact
    (a resumed step at lr 0 leaves them equal to the 2-rank checkpoint's), the data stream restarts its epoch
    with a warning, and the run finishes on the new number of ranks."""
    import torch

    from aupretrain.engine.export import encoder_from_checkpoint

    run_dir = tmp_path / "runs" / "resize"
    base = common(packed, tmp_path, **{"run.dir": str(run_dir), "train.eval_at_end": "false", "train.steps": 6,
                                       "tracking.enabled": "false", "objective": "tcl"})
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", TRAIN]
    r = launch([*torchrun, *base, "train.stop_at=2"], tmp_path)
    # a job that ends at train.stop_at says so, keeps no encoder yet and records why it stopped
    assert "stopped at step 2 of 6" in r.stderr and not (run_dir / "encoder.pt").exists()
    stop = json.loads((run_dir / "last_stop.json").read_text())
    assert (stop["reason"], stop["step"], stop["steps"], stop["world_size"]) == ("train.stop_at", 2, 6, 2)
    assert {p.name for p in (run_dir / "checkpoints" / "step_2").glob("reader_rank*.json")} == \
        {"reader_rank0.json", "reader_rank1.json"}
    r = launch([sys.executable, TRAIN, *base, "train.stop_at=3", "optim.lr=0"], tmp_path)
    assert "world_size: 2 -> 1" in r.stderr and "data stream restarts its epoch" in r.stderr, r.stderr[-3000:]
    assert "global_batch: " in r.stderr  # a world-size change changes the clips per optimizer step: said
    two, _ = encoder_from_checkpoint(run_dir / "checkpoints" / "step_2")
    one, meta = encoder_from_checkpoint(run_dir / "checkpoints" / "step_3")
    assert meta["world_size"] == 1
    for (k, a), b in zip(two.state_dict().items(), one.state_dict().values()):
        assert torch.equal(a, b), k  # loaded from the 2-rank partitions, unchanged by a step at lr 0
    r = launch([*torchrun, *base], tmp_path)
    assert "world_size: 1 -> 2" in r.stderr and (run_dir / "encoder.pt").exists()
    assert json.loads((run_dir / "checkpoints" / "step_6" / "meta.json").read_text())["world_size"] == 2
    # another run's checkpoint (train.resume=PATH) on another number of ranks: converted into this job's own folder,
    # nothing written into the other run's (which may be read-only or shared)
    other = tmp_path / "runs" / "other"
    r = launch([sys.executable, TRAIN, *base, f"run.dir={other}", "train.steps=7",
                f"train.resume={run_dir / 'checkpoints' / 'step_6'}"], tmp_path)
    assert "world_size: 2 -> 1" in r.stderr and (other / "encoder.pt").exists(), r.stderr[-3000:]
    assert "to a DeepSpeed universal checkpoint" in r.stderr  # converted ...
    assert (other / "universal").is_dir() and not list((other / "universal").glob("step_6-*"))  # ... here, then freed
    assert not (run_dir / "checkpoints" / "step_6" / "universal").exists()


def test_hog_basis_is_fitted_on_clean_clips_before_step_one(packed, tmp_path):
    """`objective.cir.hog_basis_fit=prefit`: before step 1 the engine reads the shards once more with every
    augmentation off (`engine.prefit`), gathers both ranks' clips, and the basis is fitted then — the term is live
    from step 1 (not zero through the fit steps) — on both ranks alike, and it is the basis one process fits from
    both ranks' un-augmented batches (the training views, rotated and cropped, would give another). The targets are
    read off the loader's clean view (`objective.cir.hog_basis_frames=clean`, `data.clean_view`), through
    DeepSpeed's engine."""
    import torch
    from omegaconf import OmegaConf

    from aupretrain.data.dataset import build_loader
    from aupretrain.engine.checkpoint import full_weights
    from aupretrain.methods import build_method
    from aupretrain.methods.hog_basis import WithinClipHOGBasis

    fit_steps = 2
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", TRAIN,
           *common(packed, tmp_path, **{"objective": "clp_hog_basis", "objective.cir.hog_basis_fit": "prefit",
                                        "objective.cir.hog_basis_frames": "clean", "data.clean_view": "true",
                                        # the plain fit: 128 frames leave the preset's 64-dim whitened one ill-posed
                                        "objective.cir.hog_basis_whiten": 0,
                                        "objective.cir.hog_basis_fit_steps": fit_steps, "train.steps": 1,
                                        "data.augment.rotate": 15.0, "train.eval_at_end": "false",
                                        "tracking.enabled": "false"})]
    r = launch(cmd, tmp_path)
    assert f"fitted the method's label-free targets on {fit_steps} steps of un-augmented clips" in r.stderr
    run_dir = only_run(tmp_path)
    first = re.search(r"step 1/1 .* hog_basis (\S+) ", r.stderr)
    assert first and float(first[1]) > 0.1  # whitened targets: ~1 at the start, not the unfitted 0
    weights = full_weights(run_dir / "checkpoints" / "step_1")
    assert bool(weights["hog_basis.fitted"])

    cfg = OmegaConf.load(run_dir / "config.yaml")
    method = build_method(cfg.objective, cfg.model, int(cfg.data.input_size))
    basis = WithinClipHOGBasis(method.hog_basis.dim, method.hog_basis.k, fit_steps, method.hog_basis.whiten)
    rank_batches = [iter(build_loader(cfg, rank, 2, plain=True)) for rank in (0, 1)]
    for _ in range(fit_steps):
        basis.accumulate(torch.cat([method.clean_fit_inputs(next(b)["view1"]) for b in rank_batches]))
    assert torch.allclose(weights["hog_basis.basis"].float(), basis.basis, atol=1e-4)
    assert torch.allclose(weights["hog_basis.mean"].float(), basis.mean, atol=1e-5)
    augmented = WithinClipHOGBasis(method.hog_basis.dim, method.hog_basis.k, fit_steps, method.hog_basis.whiten)
    views = [iter(build_loader(cfg, rank, 2)) for rank in (0, 1)]
    for _ in range(fit_steps):
        augmented.accumulate(torch.cat([method.clean_fit_inputs(next(b)["view1"]) for b in views]))
    assert not torch.allclose(weights["hog_basis.mean"].float(), augmented.mean, atol=1e-3)
