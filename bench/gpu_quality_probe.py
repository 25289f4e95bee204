"""The quality benchmark's GPU preset, the probe half: score the encoders `bench/gpu_quality.sh` trained on a GPU.

    python bench/gpu_quality_probe.py FILES_DIR [FILES_DIR ...] --json bench/results/quality_gpu.json

Each FILES_DIR (one per device call) holds `encoders.tar.part-*` (the GPU script's output: per method an export folder with its weights
in fp16, the run's config.yaml, its training log and, for the supervised run, its own AU classifier). Each
encoder's weights are cast back to fp32 and scored with `aupretrain-eval` (the run's own config, the linear AU
probe with subject-exclusive folds on `eval.split=test`, seed 0) on this machine — the evaluation videos are
decoded with PyAV, which the GPU image lacks. The CLP run's evaluation also gives the reference rows (random-init
ResNet-18 at 112 px, HOG, always-positive) on the same test identities; the supervised run adds its own
classifier applied as it is (`--head`).

The fp16 round trip changes each weight in fp16's normal range (|w| >= 6.1e-5) by at most 2^-11 of its value
(IEEE half precision, 11-bit significand), smaller ones by at most 2^-25 absolutely; BatchNorm's running
statistics travel the same way.

JSON: {"mean_f1": {row: F1}, "identity_acc": {...}, "per_au_f1": {row: {AU: F1}}, "train": {method:
{"frames_per_s": the last logged training speed}}} (F1 and accuracies in [0, 1]).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import report  # noqa: E402

ROWS = {"pretrained": "{m}", "pretrained (saved head)": "{m}_own_head", "random-init": "random",
        "HOG": "hog", "always-positive": "always_positive"}


def unpack(folders: list[Path], work: Path) -> dict[str, Path]:
    """Join each folder's tar parts, extract them and write fp32 `model.safetensors` beside each fp16 copy;
    {method: folder}."""
    import torch
    from safetensors.torch import load_file, save_file

    for files in folders:
        parts = sorted(files.glob("encoders.tar.part-*"))
        if not parts:
            raise SystemExit(f"{files}: no encoders.tar.part-* (the output of bench/gpu_quality.sh)")
        tar = work / "encoders.tar"
        with open(tar, "wb") as out:
            for p in parts:
                out.write(p.read_bytes())
        with tarfile.open(tar) as t:
            t.extractall(work, filter="data")
        tar.unlink()
    found = {}
    for half in sorted((work / "export").glob("*/model.fp16.safetensors")):
        sd = load_file(half)
        save_file({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()},
                  half.with_name("model.safetensors"))
        found[half.parent.name] = half.parent
    return found


def evaluate(method: str, folder: Path, references: bool) -> dict:
    """`aupretrain-eval` of one exported encoder with its run's config on the test identities; its results."""
    cmd = [sys.executable, "-m", "aupretrain.cli.evaluate", str(folder), "--no-mlflow", "--config",
           str(folder / "run_config.yaml"), "--out", str(folder / "eval"), "eval.split=test", "run.seed=0",
           f"eval.random_baseline={'true' if references else 'false'}",
           "eval.baselines=[always_positive,hog]" if references else "eval.baselines=[]"]
    if (folder / "au_head").is_dir():
        cmd[4:4] = ["--head", str(folder / "au_head")]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return json.loads((folder / "eval" / "eval.json").read_text())["results"]


def train_figures(log: Path) -> dict:
    """The last logged frames/s of a training log (aupretrain.train's step lines)."""
    text = log.read_text(errors="replace")
    fps = re.findall(r"step \d+/\d+ .* (\d+) frames/s", text)
    return {"frames_per_s": float(fps[-1]) if fps else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path, nargs="+", help="folders with encoders.tar.part-* from bench/gpu_quality.sh")
    ap.add_argument("--json")
    ap.add_argument("--work", type=Path, help="where to unpack (default: a temporary folder)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        methods = unpack([f.resolve() for f in a.files], work)
        js: dict = {"mean_f1": {}, "identity_acc": {}, "per_au_f1": {}, "train": {}}
        for i, (m, folder) in enumerate(methods.items()):
            res = evaluate(m, folder, references=(i == 0))
            for key, row in ROWS.items():
                if key in res:
                    name = row.format(m=m)
                    js["mean_f1"][name] = res[key]["f1_mean"]
                    js["identity_acc"][name] = res[key].get("identity_acc")
                    js["per_au_f1"][name] = res[key]["f1"]
            js["train"][m] = train_figures(folder / "train.log")
        rows = [{"row": k, "mean F1": v, "identity acc": js["identity_acc"][k] if js["identity_acc"][k] is not None
                 else float("nan")} for k, v in js["mean_f1"].items()]
        report("AU quality on the test identities, GPU preset (ResNet-18, 112 px, bf16; trained on one GPU)", rows,
               a.json, js)


if __name__ == "__main__":
    main()
