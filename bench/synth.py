"""Renderer speed: frames/s per core at 112x112 (render only, and render + H.264 encode to mp4).

    python bench/synth.py --frames 2000 --json bench/results/synth.json
Goal: >= 150 frames/s per core at 112x112.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import report  # noqa: E402

from aupretrain.synth.corpus import VideoJob, render_video  # noqa: E402
from aupretrain.synth.identity import AUS, sample_identity, sample_scene  # noqa: E402
from aupretrain.synth.render import render  # noqa: E402
from aupretrain.synth.tracks import sample_au_track, sample_pose_track  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    rng = np.random.default_rng(0)
    for size in a.size:
        idents = [sample_identity(i) for i in range(50)]
        scenes = [sample_scene(i) for i in range(50)]
        aus = sample_au_track(rng, a.frames, 25.0)
        poses = sample_pose_track(rng, a.frames, 25.0)
        render(idents[0], aus[0], poses[0], scenes[0], 0, size)  # warm the backdrop cache path
        t = time.perf_counter()
        for f in range(a.frames):
            render(idents[f % 50], aus[f], poses[f], scenes[f % 50], f, size)
        dt = time.perf_counter() - t
        rows.append({"what": "render", "size": size, "frames": a.frames, "frames_per_s_per_core": a.frames / dt})
        with tempfile.TemporaryDirectory() as d:
            n = min(a.frames, 500)
            t = time.perf_counter()
            for v in range(max(1, a.frames // n)):
                render_video(VideoJob(d, v, 0, n, 25.0, size, 1))
            dt = time.perf_counter() - t
            rows.append({"what": "render + H.264 + labels", "size": size, "frames": n * max(1, a.frames // n),
                         "frames_per_s_per_core": n * max(1, a.frames // n) / dt})
    report("Synthetic renderer speed (one process, one core)", rows, a.json, {"aus": list(AUS), "goal": 150})


if __name__ == "__main__":
    main()
