"""Packing speed against decoding, and detection rate, with the default detector (configs/pack/default.yaml).

    python bench/pack.py --json bench/results/pack.json --grid bench/results/pack_grid.png

Videos: the astronaut animation (a real face; pan, zoom, small rotation) at 640x360, 25 fps, one camera
path per video — or your own folder with --input <identity>/<video>.mp4. Both measurements use one
process per core over the same videos:
- decode-only: PyAV decode to RGB arrays (what the packer's decoder does), nothing else;
- pack: the whole `aupretrain-pack` run (decode, detect, track, align, cut, JPEG, spill, shards, wds2idx,
  sha256, manifest) from its start to its manifest.
pack_vs_decode = (source frames/s of pack) / (frames/s of decode-only), medians of `--repeat` alternated
rounds (so both see the same background load); pack_vs_decode_cpu_time is the same ratio in CPU seconds
(this process and its worker pools), which background load does not skew. Goal: >= 0.30 on 2 cores.
`--compare-detectors` also measures each detector alone (one thread) on the astronaut frames and on
synthetic-corpus frames; `--alignment` the alignment error (rotation, centre shift, scale, frame-to-frame
jitter) of the astronaut animation against the aligned still photo, with and without smoothing.
`--grid` saves aligned crops of one packed video (rows: clips, columns: frames).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import report  # noqa: E402

from aupretrain.cli.pack import settings_from  # noqa: E402
from aupretrain.config import load_config  # noqa: E402
from aupretrain.data import shards  # noqa: E402
from aupretrain.pack.inputs import discover  # noqa: E402
from aupretrain.pack.packer import pack  # noqa: E402
from aupretrain.pack.parallel import parallel_map  # noqa: E402
from aupretrain.pack.video import iter_frames  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pools), user + system."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def decode_count(path: str) -> int:
    return sum(1 for _ in iter_frames(path))


def make_videos(root: Path, n: int, frames: int, width: int, height: int) -> None:
    from aupretrain.synth import astronaut

    for k in range(n):
        astronaut.write(root / f"id{k % 4:02d}" / f"v{k:03d}.mp4", frames=frames, width=width, height=height,
                        phase=0.7 * k, degrees=6.0, zoom=0.15, pan=0.08)


def compare_detectors(frames_real: np.ndarray, frames_synth: np.ndarray, s) -> list[dict]:
    import torch

    from aupretrain.pack.faces import Detector

    torch.set_num_threads(1)
    rows = []
    for kind in ("mtcnn", "haar"):
        det = Detector(kind, s.min_face, s.thresholds)
        for name, frames in (("astronaut 640x360", frames_real), ("synthetic corpus 112x112", frames_synth)):
            t = time.perf_counter()
            found = sum(len(det.detect(f)[0]) > 0 for f in frames)
            dt = time.perf_counter() - t
            rows.append({"detector": kind, "frames": name, "n": len(frames), "detection_rate": found / len(frames),
                         "ms_per_frame_1_thread": 1000 * dt / len(frames)})
    return rows


def alignment(s, frames: int, width: int, height: int) -> list[dict]:
    """Alignment error of the astronaut animation against the aligned still photo (ECC registration), for
    the default motion and a fast one, with and without temporal smoothing; one thread."""
    import torch

    from aupretrain.pack import alignment, faces
    from aupretrain.pack.clips import track
    from aupretrain.synth import astronaut

    torch.set_num_threads(1)
    ref = astronaut.reference_crop(s.template, s.size)
    rows = []
    for motion, kw, n in (("slow (bench videos)", dict(degrees=6.0, zoom=0.15, pan=0.08), frames),
                          ("fast (tests)", dict(degrees=8.0, zoom=0.2, pan=0.12), 64)):
        video, _ = astronaut.render(n, width, height, **kw)
        det = faces.Detector(s.detector, s.min_face, s.thresholds)
        t = time.perf_counter()
        tracked = list(track(enumerate(video), det, s))
        track_ms = 1000 * (time.perf_counter() - t) / n
        for sigma in (0.0, s.smooth_sigma):
            crops = [a.crop for a in alignment.align(iter(tracked), np.asarray(s.template), s.size, sigma)]
            e = np.array([astronaut.misalignment(c, ref) for c in crops])
            shift = np.hypot(e[:, 1], e[:, 2])
            rows.append({"motion": motion, "smooth_sigma": sigma, "frames_with_face": len(crops) / n,
                         "track_ms_per_frame": track_ms, "angle_max_deg": float(np.abs(e[:, 0]).max()),
                         "shift_mean_px": float(shift.mean()), "shift_max_px": float(shift.max()),
                         "scale_dev_max": float(np.abs(e[:, 3] - 1).max()),
                         "jitter_px_per_frame": float(np.hypot(*np.diff(e[:, 1:3], axis=0).T).mean())})
    return rows


def grid(out: Path, png: str, clips: int = 6) -> None:
    m = shards.load_manifest(str(out))
    samples = [s for info in m.shards for s in shards.read_samples(str(out / info.name))]
    first = sorted({s.meta.video for s in samples})[0]
    mine = sorted((s for s in samples if s.meta.video == first), key=lambda s: s.meta.frames[0])[:clips]
    rows = [np.concatenate([cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in s.jpegs], 1) for s in mine]
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(png, np.concatenate(rows, 0))
    print(f"wrote {png} ({first}: {len(mine)} clips x {len(mine[0].jpegs)} frames)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", help="a folder <identity>/<video>.mp4 to use instead of the astronaut videos")
    ap.add_argument("--videos", type=int, default=8)
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--workers", type=int, default=0, help="0: one per core (as the packer)")
    ap.add_argument("--repeat", type=int, default=3, help="decode/pack rounds, alternated; medians reported")
    ap.add_argument("--compare-detectors", action="store_true")
    ap.add_argument("--alignment", action="store_true", help="also measure alignment error and jitter")
    ap.add_argument("--grid", help="PNG of aligned crops from one packed video")
    ap.add_argument("--json")
    ap.add_argument("overrides", nargs="*", help="pack.* Hydra overrides, e.g. pack.detect_every=5")
    a = ap.parse_args()
    s = settings_from(load_config(a.overrides).pack)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pack-"))
    src = Path(a.input) if a.input else tmp / "videos"
    if not a.input:
        make_videos(src, a.videos, a.frames, a.width, a.height)
    items, _ = discover(str(src))
    workers = a.workers or os.cpu_count() or 1
    decode_count(items[0].path)  # warm the codec libraries
    decode_times, pack_times, decode_cpu, pack_cpu = [], [], [], []
    for _ in range(a.repeat):  # alternate, so both see the same background load; medians are reported
        t, c = time.perf_counter(), cpu_seconds()
        decoded = sum(parallel_map(decode_count, [it.path for it in items], workers))
        decode_times.append(time.perf_counter() - t)
        decode_cpu.append(cpu_seconds() - c)
        shutil.rmtree(tmp / "shards", ignore_errors=True)
        t, c = time.perf_counter(), cpu_seconds()
        m = pack(str(src), str(tmp / "shards"), s.__class__(**{**s.__dict__, "workers": workers}))
        pack_times.append(time.perf_counter() - t)
        pack_cpu.append(cpu_seconds() - c)
    decode_s, pack_s = float(np.median(decode_times)), float(np.median(pack_times))
    st = m.stats
    rate = st["frames_with_face"] / max(1, st["frames_sampled"])
    ratio = (st["frames_decoded"] / pack_s) / (decoded / decode_s)
    rows = [{"what": "decode only (PyAV -> RGB)", "source_frames": decoded, "seconds": decode_s,
             "cpu_seconds": float(np.median(decode_cpu)), "source_frames_per_s": decoded / decode_s, "clip_frames_per_s": 0.0},
            {"what": f"pack ({s.align}, {s.detector}, every {s.detect_every})", "source_frames": st["frames_decoded"],
             "seconds": pack_s, "cpu_seconds": float(np.median(pack_cpu)), "source_frames_per_s": st["frames_decoded"] / pack_s,
             "clip_frames_per_s": m.frames / pack_s}]
    cpu_ratio = float(np.median(decode_cpu)) / float(np.median(pack_cpu))
    extra = {"ratios": {"pack_vs_decode": ratio, "pack_vs_decode_cpu_time": cpu_ratio}, "detection_rate": rate,
             "workers": workers, "decode_seconds": decode_times, "pack_seconds": pack_times,
             "decode_cpu_seconds": decode_cpu, "pack_cpu_seconds": pack_cpu, "load_average": os.getloadavg(),
             "videos": len(items), "samples": m.samples, "rejects": m.rejects, "stats": st, "settings": s.content()}
    if a.compare_detectors:
        from aupretrain.synth.corpus import write_corpus
        from aupretrain.pack.video import read_video

        real = np.concatenate([read_video(it.path)[::5] for it in items[:2]])
        write_corpus(tmp / "synth", identities=3, videos_per_identity=1, frames=40, seed=0, workers=1)
        synth = np.concatenate([read_video(p)[::2] for p in sorted((tmp / "synth").glob("*/*.mp4"))])
        det_rows = compare_detectors(real, synth, s)
        extra["detectors"] = det_rows
        report("Detectors alone (one thread)", det_rows, None)
    if a.alignment:
        al_rows = alignment(s, a.frames, a.width, a.height)
        extra["alignment"] = al_rows
        report("Alignment error vs the aligned still photo (112 px crops)", al_rows, None)
    if a.grid:
        grid(tmp / "shards", a.grid)
    report(f"Packing vs decoding, {len(items)} videos, {workers} workers: ratio {ratio:.2f} (CPU time {cpu_ratio:.2f}), "
           f"detection rate {rate:.3f}",
           rows, a.json, extra)


if __name__ == "__main__":
    main()
