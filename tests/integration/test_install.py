"""A plain (non-editable) install of the package is a working product: configs and detector weights inside."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_carries_configs_and_detector_weights(tmp_path):
    src = tmp_path / "src"  # a copy of the sources: the build leaves nothing in the checkout
    keep = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in keep:
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest, follow_symlinks=False)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("aupretrain-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"aupretrain/configs/config.yaml", "aupretrain/configs/experiment/quickstart.yaml",
            "aupretrain/pack/mtcnn_weights/onet.pt", "aupretrain/pack/mtcnn_weights/pnet.pt",
            "aupretrain/pack/mtcnn_weights/rnet.pt"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    probe = ("import aupretrain, pathlib; assert pathlib.Path(aupretrain.__file__).is_relative_to(pathlib.Path(r'%s')); "
             "from aupretrain.config import load_config; c = load_config(['experiment=smoke']); "
             "from aupretrain.pack.mtcnn import load_nets; load_nets(); print(c.objective.name)" % site)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "clp"
