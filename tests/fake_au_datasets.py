"""Small fake BP4D / DISFA / GFT folders in the owners' layouts, with faces rendered by the project's synthetic
renderer (placed on a larger backdrop so the packer's detector has a face to find and align)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from aupretrain.synth.identity import AU_INDEX, sample_identity, sample_scene
from aupretrain.synth.render import render
from aupretrain.synth.tracks import sample_au_track, sample_pose_track
from aupretrain.pack.video import write_video
from aupretrain.eval.au_datasets import AUS

PAD = 32  # grey border around the 112 px render: the frame is 176 x 176 and the face must be found


def _findable(seed: int) -> int:
    """The first identity seed from 1000 + 7 x seed whose neutral face MTCNN finds (not every synthetic
    identity is found by the real detector: some are too stylised)."""
    from aupretrain.pack import mtcnn
    from aupretrain.synth.identity import Pose

    s = 1000 + 7 * seed
    while True:
        img = render(sample_identity(s), np.zeros(len(AU_INDEX)), Pose(), sample_scene(s), 0, 112)[0]
        img = np.pad(img, ((PAD, PAD), (PAD, PAD), (0, 0)), constant_values=110)
        if len(mtcnn.detect(img, min_face=35)[0]) == 1:
            return s
        s += 1


def faces(subject_seed: int, n: int, seq_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB frames [n, 176, 176, 3] uint8, synthetic AU intensities [n, 10]) of one person."""
    ident = sample_identity(_findable(subject_seed))
    scene = sample_scene(2000 + subject_seed * 10 + seq_seed)
    rng = np.random.default_rng(subject_seed * 100 + seq_seed)
    aus = sample_au_track(rng, n, 25.0)
    poses = sample_pose_track(rng, n, 25.0)
    frames = [np.pad(render(ident, aus[f], poses[f], scene, f, 112)[0], ((PAD, PAD), (PAD, PAD), (0, 0)),
                     constant_values=110) for f in range(n)]
    return np.stack(frames), aus


def occurrence(aus: np.ndarray, wanted: list[int], rng) -> np.ndarray:
    """[n, A] 0/1: the synthetic AU where the renderer has it (intensity >= 0.5), random otherwise."""
    out = (rng.uniform(size=(len(aus), len(wanted))) < 0.3).astype(int)
    for j, a in enumerate(wanted):
        if f"AU{a}" in AU_INDEX:
            out[:, j] = aus[:, AU_INDEX[f"AU{a}"]] >= 0.5
    return out


def write_bp4d(root: Path, subjects=("F001", "M011", "F007"), tasks=("T1", "T2"), n=12, first_frame=1,
               unknown: dict | None = None) -> dict:
    """Sequences/<s>/<t>/<frame:04d>.jpg + AUCoding/AU_OCC/<s>_<t>.csv. `unknown` {(s, t): [row, ...]} puts
    9 in AU1 of those rows. Returns {(s, t): labels [n, 12]}."""
    rng = np.random.default_rng(0)
    out = {}
    for si, s in enumerate(subjects):
        for ti, t in enumerate(tasks):
            frames, aus = faces(si, n, ti)
            lab = occurrence(aus, AUS["bp4d"], rng)
            for r in (unknown or {}).get((s, t), []):
                lab[r, 0] = 9
            d = root / "Sequences" / s / t
            d.mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(frames):
                cv2.imwrite(str(d / f"{first_frame + i:04d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
            occ = root / "AUCoding" / "AU_OCC"
            occ.mkdir(parents=True, exist_ok=True)
            cols = [1, 2, 3] + AUS["bp4d"][2:]  # an extra AU column (3) as the real files have many
            with open(occ / f"{s}_{t}.csv", "w") as fh:
                fh.write(",".join(["Frame", *map(str, [1, 2, 3, *AUS["bp4d"][2:]])]) + "\n")
                for i in range(n):
                    vals = {a: int(lab[i, AUS["bp4d"].index(a)]) for a in AUS["bp4d"]}
                    fh.write(",".join([str(first_frame + i)] + [str(vals.get(c, 0)) for c in cols]) + "\n")
            out[(s, t)] = lab
    return out


def write_disfa(root: Path, subjects=("SN001", "SN013", "SN003"), n=16) -> dict:
    """Videos_LeftCamera/LeftVideo<s>_comp.avi + ActionUnit_Labels/<s>/<s>_au<k>.txt (frame 1-based,
    intensity 0-5). Returns {s: intensity [n, 8]}."""
    rng = np.random.default_rng(1)
    out = {}
    (root / "Videos_LeftCamera").mkdir(parents=True, exist_ok=True)
    for si, s in enumerate(subjects):
        frames, aus = faces(10 + si, n)
        write_video(root / "Videos_LeftCamera" / f"LeftVideo{s}_comp.avi", frames)
        inten = rng.integers(0, 6, (n, len(AUS["disfa"])))
        d = root / "ActionUnit_Labels" / s
        d.mkdir(parents=True, exist_ok=True)
        for j, a in enumerate(AUS["disfa"]):
            (d / f"{s}_au{a}.txt").write_text("".join(f"{i + 1},{inten[i, j]}\n" for i in range(n)))
        out[s] = inten
    return out


def write_gft(root: Path, subjects=("001A", "002B", "003C"), n=12) -> dict:
    """Videos/<s>.mp4 + AUCoding/<s>.csv (our assumed GFT layout). Returns {s: labels [n, 10]}."""
    rng = np.random.default_rng(2)
    out = {}
    (root / "Videos").mkdir(parents=True, exist_ok=True)
    (root / "AUCoding").mkdir(parents=True, exist_ok=True)
    for si, s in enumerate(subjects):
        frames, aus = faces(20 + si, n)
        write_video(root / "Videos" / f"{s}.mp4", frames)
        lab = occurrence(aus, AUS["gft"], rng)
        with open(root / "AUCoding" / f"{s}.csv", "w") as fh:
            fh.write(",".join(["Frame", *[f"AU{a}" for a in AUS["gft"]]]) + "\n")
            for i in range(n):
                fh.write(",".join([str(i + 1), *map(str, lab[i])]) + "\n")
        out[s] = lab
    return out
