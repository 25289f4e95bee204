"""Quality benchmark: every method pretrained with the same budget, probed on the *test* identities.

    python bench/quality.py --json bench/results/quality.json                   # CPU preset, 1 seed
    python bench/quality.py --json bench/results/quality.json --seeds 3 --ablations
    python bench/quality.py --methods clp --ablations margin ranking --json bench/results/abl.json  # some ablations
    python bench/quality.py --protocol still-head --methods clp_hog_basis --ablate clp_hog_basis --ablations \
        --json bench/results/abl_basis.json -- eval.split=validation       # the headline preset's terms, one by one
    python bench/quality.py --device cuda --json bench/results/quality_gpu.json  # ResNet-18, 112 px, bf16
    python bench/quality.py --methods tcl clp --seeds 1 -- objective.margin=0.1  # extra Hydra overrides
    python bench/quality.py --methods clp clp_hog clp_hog_basis --seeds 3   # CLP's other presets beside it
    python bench/quality.py --protocol still-head --methods clp_hog_basis simclr supervised --seeds 3

Each method runs the real entry point (`torchrun ... aupretrain/train.py experiment=cpu
objective=<method> run.seed=<s>`: DALI, DeepSpeed, the run's own end-of-training probe) on the synthetic
pretraining corpus of `configs/synth/` (rendered and packed first if missing); its `eval.json` (linear AU
probe, subject-exclusive folds, on `eval.split=test` unless overridden) is read back. Reference rows on the
same test identities: random-init encoder, HOG, always-positive. Tuning belongs on `eval.split=validation`.

`--protocol` picks the pretraining corpus and budget (`PROTOCOLS`): `quickstart` (the default: `configs/synth/`'s
corpus, 600 identities x 32 frames with head motion, clips of 8 frames 2 apart, and the CPU preset's 150 steps —
the README job until session 39; folders `data/synthetic-motion`, `shards/synthetic-motion`) or `still-head` (the
control of docs/benchmarks.md where CLP's headline rows were measured, and the README job's corpus since session 39:
800 identities x 1 video x 40 frames with the head held still, clips of 4 frames 12 apart, 1,500 steps of 16 clips
per rank; the CLP presets with HOG terms read both views with one geometry) or `still-head-80` (the same corpus,
shards and budget read from 80-px frames instead of the CPU preset's 64, HOG cells of 10 px; CPU only). Each
protocol keeps its own corpus and shard folders (`still-head-80` shares `still-head`'s), so one never overwrites
another or the README job's (`data/synthetic`, `shards/synthetic`).
`--identities N` renders the protocol's corpus with N pretraining identities instead (same budget in steps;
folders suffixed `-<N>ids`): how a method scales with the unlabelled data it sees.

JSON: {"mean_f1": {method: mean over seeds}, "mean_f1_std": {...}, "identity_acc": {...},
"per_au_f1": {method: {AU: F1}}, "ablations": {variant: {...}}, "runs": [...]} (values in [0, 1]). The key
`supervised_own_head` is the supervised run's own classifier (fitted on the pretraining identities' labels,
`<run>/au_head`) applied as it is to the test identities — the bound without the probe's 16 identities per fold.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import report  # noqa: E402

from aupretrain.config import load_config  # noqa: E402

METHODS = ("simclr", "moco", "tcl", "clp", "supervised")
CLP_PRESETS = ("clp_flow", "clp_hog", "clp_hog_basis")  # CLP's other presets (configs/objective/), on request
ABLATIONS = {  # per CLP preset (--ablate): the preset with one part removed (objective overrides)
    "clp": {
        "clp without CIR (= TCL)": ["objective=tcl"],
        "clp, margin 0": ["objective.margin=0"],
        "clp, no ranking term": ["objective.rank_weight=0"],
        "clp, same-view negatives": ["objective.same_view_negatives=true"],
        "clp, no self-reconstruction": ["objective.cir.self_weight=0"],
        "clp, no cycle reconstruction": ["objective.cir.cycle_weight=0"],
        "clp, no AU consistency": ["objective.cir.au_weight=0"],
        "clp, no identity consistency": ["objective.cir.id_weight=0"],
    },
    "clp_hog_basis": {  # the headline preset: TCL (own-clip negatives) + ranking term + flow CIR + HOG-change term +
        # HOG-basis term + between-clip share term
        "no HOG-basis term": ["objective.cir.hog_basis_weight=0"],
        "no between-clip share term": ["objective.cir.between_clip_weight=0"],
        "TCL negatives from other clips too": ["objective.cross_clip_weight=1"],
        "no HOG-change term": ["objective.cir.hog_weight=0"],
        "no TCL term": ["objective.tcl_weight=0"],
        "no ranking term": ["objective.rank_weight=0"],
        "margin 0": ["objective.margin=0"],
        "no self-reconstruction": ["objective.cir.self_weight=0"],
        "no cycle reconstruction": ["objective.cir.cycle_weight=0"],
        "no AU consistency": ["objective.cir.au_weight=0"],
        "no identity consistency": ["objective.cir.id_weight=0"],
        "HOG-basis term alone": ["objective.tcl_weight=0", "objective.rank_weight=0", "objective.cir.self_weight=0",
                                 "objective.cir.cycle_weight=0", "objective.cir.au_weight=0",
                                 "objective.cir.id_weight=0", "objective.cir.hog_weight=0",
                                 "objective.cir.between_clip_weight=0"],
    },
}
PROTOCOLS = {  # corpus (aupretrain-synth flags), clips (aupretrain-pack flags), budget and per-method overrides
    "quickstart": {"synth": [], "pack": ["--align", "center"], "train": [], "method": {},
                   "synth_dir": "data/synthetic-motion", "shards": "shards/synthetic-motion"},
    "still-head": {"synth": ["--identities", "800", "--videos-per-identity", "1", "--frames", "40", "--",
                             "synth.head_motion=0"],
                   "pack": ["--align", "center", "--clip-len", "4", "--stride", "12", "--clip-step", "1"],
                   "train": ["train.steps=1500", "data.batch_size=16"],
                   "method": {m: ["data.augment.shared_geometry=true"] for m in ("clp_flow", "clp_hog", "clp_hog_basis")},
                   "synth_dir": "data/synthetic-still", "shards": "shards/synthetic-still-T4s12"},
}
# the still-head control read from 80-px frames on the CPU preset (64 px): the same corpus, shards and budget; the HOG
# terms' cells scaled with the face (10 px, 8 at 64 px), as the GPU preset scales them to 14 at 112 px
# (docs/benchmarks.md, "An 80-px input for the HOG-basis preset", sessions 46-47); CPU only (cuda reads 112 px)
PROTOCOLS["still-head-80"] = {
    **PROTOCOLS["still-head"], "train": [*PROTOCOLS["still-head"]["train"], "data.input_size=80"], "devices": ("cpu",),
    "method": {"clp": ["objective.cir.hog_cell=10"],
               **{m: [*PROTOCOLS["still-head"]["method"][m], "objective.cir.hog_cell=10"] for m in CLP_PRESETS}}}
DEVICE_PRESETS = {"cpu": ["experiment=cpu"],
                  "cuda": ["experiment=cpu", "model=resnet18", "data.input_size=112", "data.batch_size=64",
                           "data.num_threads=4", "deepspeed.bf16.enabled=true"]}
# per device, per method (the CLP objectives, which have objective.cir): at 112 px the HOG terms' cells are scaled
# with the face (8 px at 64 px): 8-px cells at 112 px read 0.363 label-free against 0.411 for 14-px ones
# (docs/benchmarks.md, session 26)
DEVICE_METHOD_PRESETS = {"cpu": {}, "cuda": {m: ["objective.cir.hog_cell=14"]
                                             for m in ("clp", *CLP_PRESETS)}}


def synth_flags(protocol: dict) -> tuple[list[str], list[str]]:
    """The protocol's `aupretrain-synth` words split into its flags and its Hydra overrides (from "--" on), as new
    lists."""
    synth = list(protocol["synth"])
    return (synth[:synth.index("--")], synth[synth.index("--"):]) if "--" in synth else (synth, [])


def ensure_shards(protocol: dict, synth_dir: Path, shards_dir: Path) -> None:
    """Render the protocol's pretraining corpus (configs/synth + its flags) and pack it with its clip settings,
    unless already there and up to date (the renderer itself skips videos already rendered with these settings)."""
    bin_ = Path(sys.executable).parent
    flags, overrides = synth_flags(protocol)
    subprocess.run([str(bin_ / "aupretrain-synth"), str(synth_dir), "--overwrite", *flags, *overrides], check=True)
    manifest = shards_dir / "manifest.json"
    if not manifest.exists() or manifest.stat().st_mtime < (synth_dir / "corpus.json").stat().st_mtime:
        subprocess.run([str(bin_ / "aupretrain-pack"), str(synth_dir), str(shards_dir), *protocol["pack"]], check=True)


def with_identities(protocol: dict, identities: int) -> dict:
    """The protocol with `identities` pretraining identities (`aupretrain-synth --identities`) and corpus and shard
    folders of their own (`<folder>-<N>ids`), the rest unchanged. Raises SystemExit when `identities` < 1."""
    if identities < 1:
        raise SystemExit(f"--identities {identities}: must be >= 1")
    flags, overrides = synth_flags(protocol)
    if "--identities" in flags:
        flags[flags.index("--identities") + 1] = str(identities)
    else:
        flags += ["--identities", str(identities)]
    return {**protocol, "synth": flags + overrides, "synth_dir": f"{protocol['synth_dir']}-{identities}ids",
            "shards": f"{protocol['shards']}-{identities}ids"}


def checked_config(protocol: dict, preset: list[str], overrides: list[str]):
    """The config every run composes (`preset` + `overrides`), with the protocol's pretraining identity count
    (its `--identities` flag) as `synth.identities`, after `check_identity_sets`: raises ValueError naming the two
    sets when the pretraining identities reach the validation or test ones (e.g. `--identities 100001`)."""
    from aupretrain.eval.datasets import check_identity_sets

    flags, _ = synth_flags(protocol)
    count = [f"synth.identities={flags[flags.index('--identities') + 1]}"] if "--identities" in flags else []
    cfg = load_config([*preset, *count, *overrides])
    check_identity_sets(cfg)
    return cfg


def pretrain_and_probe(method: str, seed: int, run_dir: Path, shards: Path, labels: Path, preset: list[str],
                       extra: list[str], nproc: int, log_dir: Path) -> dict:
    """One real training run (torchrun, `nproc` ranks) + its end-of-run probe; returns its eval.json."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    args = [*preset, f"objective={method}", f"run.seed={seed}", f"run.dir={run_dir}",
            f"data.shards={shards}", *([f"data.labels={labels}"] if method == "supervised" else []),
            "eval.random_baseline=false", "eval.baselines=[]",
            "tracking.experiment=bench-quality", f"run.name=quality-{method}", *extra]
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(nproc),
           str(ROOT / "aupretrain" / "train.py"), *args]
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{run_dir.name}.log"
    t0 = time.time()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed (exit {r.returncode}); log: {log}")
    res = json.loads((run_dir / "eval.json").read_text())["results"]
    out = res["pretrained"]
    out["seconds"] = time.time() - t0
    if "pretrained (saved head)" in res:  # supervised: its own classifier (<run>/au_head), applied as it is
        out["own_head"] = res["pretrained (saved head)"]
    return out


def references(cfg, seeds: list[int]) -> dict[str, list[dict]]:
    """random-init encoder and HOG (one per seed: the seed draws the subject folds, as in each run's own probe)
    and always-positive on the configured eval split."""
    import torch
    from omegaconf import OmegaConf

    from aupretrain.eval.baselines import always_positive, hog_features
    from aupretrain.eval.datasets import ensure_synthetic, load_synthetic
    from aupretrain.eval.report import evaluate_codes, evaluate_encoders
    from aupretrain.models.encoder import AUEncoder

    data = load_synthetic(ensure_synthetic(cfg.eval), float(cfg.eval.au_threshold), int(cfg.eval.frame_stride))
    hog = hog_features(data.frames)
    out: dict[str, list[dict]] = {"random": [], "hog": [evaluate_codes(hog, data, cfg.eval, seed=s) for s in seeds],
                                  "always_positive": [always_positive(data)]}
    for s in seeds:  # each seed also draws the probe's subject folds: HOG on the folds of every seed
        torch.manual_seed(s + 1)
        enc = AUEncoder(OmegaConf.to_container(cfg.model, resolve=True), int(cfg.data.input_size))
        out["random"].append(evaluate_encoders({"r": enc}, data, cfg.eval, seed=s)["r"])
    return out


def summarise(results: dict[str, list[dict]]) -> dict:
    js: dict = {"mean_f1": {}, "mean_f1_std": {}, "identity_acc": {}, "per_au_f1": {}}
    for name, rs in results.items():
        f1 = [r["f1_mean"] for r in rs]
        js["mean_f1"][name] = float(np.mean(f1))
        js["mean_f1_std"][name] = float(np.std(f1))
        ids = [r["identity_acc"] for r in rs if "identity_acc" in r]
        js["identity_acc"][name] = float(np.mean(ids)) if ids else None
        js["per_au_f1"][name] = {a: (float(np.mean(v)) if (v := [r["f1"][a] for r in rs if r["f1"].get(a) is not None])
                                     else None) for a in rs[0]["f1"]}  # null: no frame had the AU (eval.json)
    return js


def rows_of(js: dict, results: dict[str, list[dict]]) -> list[dict]:
    return [{"method": n, "seeds": len(results[n]), "mean F1": js["mean_f1"][n], "± std": js["mean_f1_std"][n],
             "identity acc": js["identity_acc"][n] if js["identity_acc"][n] is not None else float("nan"),
             "train s / run": float(np.mean([r.get("seconds", 0.0) for r in results[n]]))} for n in results]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS + CLP_PRESETS,
                    help="methods to pretrain (none: only the reference rows, and --ablations if given)")
    ap.add_argument("--seeds", type=int, default=1, help="pretraining seeds per method (headline: 3)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first-seed .. first-seed + seeds - 1 (to add seeds to an earlier bench)")
    ap.add_argument("--ablations", nargs="*", default=None, metavar="WORD",
                    help="also run the ablations of --ablate (first seed only); with words, only those whose name has "
                         "one (e.g. --ablations margin ranking 'AU consistency')")
    ap.add_argument("--ablate", default="clp", choices=sorted(ABLATIONS),
                    help="the CLP preset whose ablations --ablations runs (its full row: from --methods, if there)")
    ap.add_argument("--device", default="cpu", choices=sorted(DEVICE_PRESETS))
    ap.add_argument("--protocol", default="quickstart", choices=sorted(PROTOCOLS),
                    help="pretraining corpus and budget (see PROTOCOLS)")
    ap.add_argument("--nproc", type=int, default=None, help="ranks per run (default: 2 on CPU, GPUs on cuda)")
    ap.add_argument("--identities", type=int, default=None,
                    help="pretraining identities instead of the protocol's (its corpus and shards then get their "
                         "own folders, suffixed -<N>ids)")
    ap.add_argument("--synth-dir", help="pretraining corpus folder (default: the protocol's)")
    ap.add_argument("--shards", help="its shards (default: the protocol's)")
    ap.add_argument("--work", default="bench/results/quality-runs", help="run folders and logs")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    a = ap.parse_args()
    os.chdir(ROOT)
    protocol = PROTOCOLS[a.protocol]
    if a.device not in protocol.get("devices", DEVICE_PRESETS):
        ap.error(f"--protocol {a.protocol} is measured on {', '.join(protocol['devices'])} only (--device {a.device} "
                 "has its own input size: DEVICE_PRESETS)")
    if a.identities is not None:
        protocol = with_identities(protocol, a.identities)
    preset = [*DEVICE_PRESETS[a.device], *protocol["train"]]
    nproc = a.nproc or (2 if a.device == "cpu" else max(1, __import__("torch").cuda.device_count()))
    try:
        cfg = checked_config(protocol, preset, a.overrides)
    except ValueError as e:  # overlapping identity sets, or a bad override: one line naming it, no traceback
        ap.error(str(e))
    synth_dir = Path(a.synth_dir or protocol["synth_dir"]).resolve()
    shards, work = Path(a.shards or protocol["shards"]).resolve(), Path(a.work).resolve()
    ensure_shards(protocol, synth_dir, shards)
    seeds = list(range(a.first_seed, a.first_seed + a.seeds))
    t0 = time.time()
    results = references(cfg, seeds)
    for m in a.methods:
        extra = [*DEVICE_METHOD_PRESETS[a.device].get(m, []), *protocol["method"].get(m, []), *a.overrides]
        results[m] = [pretrain_and_probe(m, s, work / f"{a.protocol}-{m}-s{s}", shards, synth_dir, preset, extra,
                                         nproc, work / "logs") for s in seeds]
        if all("own_head" in r for r in results[m]):  # the supervised bound through its own classifier
            results[f"{m}_own_head"] = [{**r.pop("own_head"), "seconds": r["seconds"]} for r in results[m]]
        print(f"{m}: mean F1 {np.mean([r['f1_mean'] for r in results[m]]):.3f} ({time.time() - t0:.0f} s so far)",
              flush=True)
    js = summarise(results)
    split = str(cfg.eval.split)
    report(f"AU quality on the {split} identities ({cfg.eval.identities}), {a.device} preset, {a.protocol} protocol, "
           f"{cfg.train.steps} steps per run", rows_of(js, results), None)
    if a.ablations is not None:
        base = a.ablate
        abl: dict[str, list[dict]] = {base: results[base][:1]} if base in results else {}
        chosen = {n: ov for n, ov in ABLATIONS[base].items() if not a.ablations or any(w in n for w in a.ablations)}
        for name, ov in chosen.items():
            method = next((o.split("=", 1)[1] for o in ov if o.startswith("objective=")), base)
            rest = [o for o in ov if not o.startswith("objective=")]
            tag = "".join(c if c.isalnum() else "_" for c in f"{base} {name}").strip("_")
            extra = [*DEVICE_METHOD_PRESETS[a.device].get(method, []), *protocol["method"].get(method, []),
                     *a.overrides, *rest]
            abl[name] = [pretrain_and_probe(method, seeds[0], work / f"abl-{a.protocol}-{tag}", shards, synth_dir,
                                            preset, extra, nproc, work / "logs")]
        js["ablations"] = summarise(abl)
        report(f"{base} ablations (first seed)", rows_of(js["ablations"], abl), None)
    js.update({"split": split, "identities": int(cfg.eval.identities), "steps": int(cfg.train.steps),
               "device": a.device, "protocol": a.protocol, "seeds": seeds, "total_s": time.time() - t0,
               "runs": {k: v for k, v in results.items()}})
    report("summary", [{"method": k, "mean F1": v} for k, v in js["mean_f1"].items()], a.json,
           {k: v for k, v in js.items() if k != "rows"})


if __name__ == "__main__":
    main()
