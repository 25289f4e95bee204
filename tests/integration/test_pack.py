"""aupretrain-pack on real footage: detection + alignment of the astronaut video, rejects with reasons,
frame folders, CSV/JSONL lists with face tracks, the CLI's exit codes."""
import io
import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from aupretrain.cli.pack import main as pack_main
from aupretrain.data import shards
from aupretrain.pack.packer import PackSettings, pack
from aupretrain.pack.video import read_video, write_video

FAST = dict(workers=1, samples_per_shard=4)


def all_samples(root) -> list[shards.Sample]:
    m = shards.load_manifest(str(root))
    return [s for info in m.shards for s in shards.read_samples(str(root / info.name))]


def decode(jpg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"))


def test_astronaut_is_detected_and_aligned_in_nearly_every_frame(astronaut_mp4, tmp_path):
    path, _ = astronaut_mp4
    m = pack(str(path.parents[1]), str(tmp_path / "out"), PackSettings(**FAST))
    st = m.stats
    assert st["frames_decoded"] == 64 and st["frames_with_face"] / st["frames_sampled"] >= 0.95
    assert m.rejects == [] and m.identities == ["eileen"] and m.samples == 4  # 64 frames, span 15, step 16
    samples = all_samples(tmp_path / "out")
    crops = np.stack([decode(j) for s in samples for j in s.jpegs]).astype(float)
    assert crops.shape[1:] == (112, 112, 3)
    # every aligned frame shows the same face at the same place: close to the mean crop
    assert np.abs(crops - crops.mean(0)).mean(axis=(1, 2, 3)).max() < 16
    # the face fills the middle: the photo's skin tone in the centre, not the background
    centre = crops[:, 50:62, 50:62].mean(axis=(0, 1, 2))
    assert centre[0] > 150 and centre[0] > centre[2] + 20
    meta = samples[0].meta
    assert meta.video == "eileen/a000" and meta.identity == "eileen" and meta.size == 112 and meta.fps == 25.0
    assert np.diff(meta.frames).tolist() == [2] * 7


def test_bad_inputs_are_rejected_with_reasons_and_the_run_goes_on(astronaut_mp4, tmp_path):
    path, _ = astronaut_mp4
    src = tmp_path / "in"
    (src / "eileen").mkdir(parents=True)
    shutil.copy(path, src / "eileen" / "good.mp4")
    (src / "nobody").mkdir()
    rng = np.random.default_rng(0)
    write_video(src / "nobody" / "wall.mp4", [np.full((96, 128, 3), 100, np.uint8) + rng.integers(0, 20, (96, 128, 3), dtype=np.uint8)
                                              for _ in range(24)])
    data = path.read_bytes()
    (src / "nobody" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (src / "nobody" / "empty.mp4").write_bytes(b"")
    (src / "nobody" / "text.avi").write_text("not a video")
    m = pack(str(src), str(tmp_path / "out"), PackSettings(**FAST))
    reasons = {r["input"].rsplit("/", 1)[-1]: r["reason"] for r in m.rejects}
    assert set(reasons) == {"wall.mp4", "truncated.mp4", "empty.mp4", "text.avi"}
    assert "no face found in 24 frames" in reasons["wall.mp4"]
    assert "cannot open video" in reasons["truncated.mp4"] and "empty file (0 bytes)" in reasons["empty.mp4"]
    assert all(r["reason"].startswith(r["input"]) for r in m.rejects)  # every reason names its file
    assert m.samples == 4 and m.identities == ["eileen"]


def test_frame_folders_and_lists_with_face_tracks(astronaut_mp4, tmp_path):
    path, transforms = astronaut_mp4
    frames = read_video(path)
    folder = tmp_path / "frames" / "eileen" / "clip7"
    folder.mkdir(parents=True)
    for i, f in enumerate(frames[:40]):
        cv2.imwrite(str(folder / f"{i + 1}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))  # 1.jpg ... 40.jpg: natural order
    m = pack(str(tmp_path / "frames"), str(tmp_path / "out1"), PackSettings(**FAST))
    assert m.samples == 2 and m.rejects == [] and all_samples(tmp_path / "out1")[0].meta.video == "eileen/clip7"
    # a JSONL list: the video with a face track (ground-truth boxes for frames 0-29 only: detection is
    # skipped, so frames after 29 have no face), the frame folder by relative path, and a missing file
    side = 115 * np.hypot(transforms[:, 0, 0], transforms[:, 0, 1])
    centre = transforms[:, :, :2] @ np.array([224.0, 116.0]) + transforms[:, :, 2]
    boxes = [[i, *(centre[i] - side[i] / 2), side[i], side[i]] for i in range(30)]
    lst = tmp_path / "list.jsonl"
    lst.write_text("\n".join(json.dumps(r) for r in [
        {"path": str(path), "identity": "eileen", "video": "tracked", "boxes": boxes},
        {"path": "frames/eileen/clip7", "identity": "eileen"},
        {"path": "missing.mp4", "identity": "ghost"},
        {"identity": "nopath"}]) + "\n")
    m = pack(str(lst), str(tmp_path / "out2"), PackSettings(**FAST))
    by_video = {}
    for s in all_samples(tmp_path / "out2"):
        by_video.setdefault(s.meta.video, []).append(s)
    assert sorted(by_video) == ["eileen/clip7", "eileen/tracked"]
    assert len(by_video["eileen/tracked"]) == 1 and max(by_video["eileen/tracked"][0].meta.frames) < 30
    assert {r["input"].rsplit("/", 1)[-1] for r in m.rejects} == {"missing.mp4", "list.jsonl:4"}
    # the same through a CSV list
    csv = tmp_path / "list.csv"
    csv.write_text(f"path,identity,video\n{path},eileen,plain\nframes/eileen/clip7,eileen,\n")
    m = pack(str(csv), str(tmp_path / "out3"), PackSettings(**FAST))
    assert m.videos == 2 and m.samples == 6 and m.rejects == []


def test_cli_exit_codes_and_clear_errors(tmp_path, capsys):
    (tmp_path / "in" / "someone").mkdir(parents=True)
    (tmp_path / "in" / "someone" / "a.mp4").write_bytes(b"not a video")
    assert pack_main([str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nothing could be packed" in err and "a.mp4" in err
    assert not (tmp_path / "out" / "manifest.json").exists() and not (tmp_path / "out" / ".pack-work").exists()
    assert pack_main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "nowhere: input folder does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pack_main([])


def test_settings_dataclass_mirrors_the_config():
    from aupretrain.cli.pack import settings_from
    from aupretrain.config import load_config

    cfg = settings_from(load_config().pack)
    assert cfg == PackSettings() and json.dumps(cfg.content()) == json.dumps(PackSettings().content())
    assert PackSettings(min_face_px=40).content() == PackSettings(min_face_px=40.0).content()


def test_small_and_blurry_clips_are_dropped_with_counts(astronaut_mp4, tmp_path):
    path, _ = astronaut_mp4
    src = path.parents[1]
    m = pack(str(src), str(tmp_path / "a"), PackSettings(min_face_px=60.0, **FAST))
    assert m.samples == 4 and m.stats["clips_dropped_small"] == 0  # faces here are ~70-110 px
    with pytest.raises(RuntimeError, match=r"every clip dropped \(4 face smaller than 200.0 px"):
        pack(str(src), str(tmp_path / "b"), PackSettings(min_face_px=200.0, **FAST))
    video = read_video(path)
    for sigma in (2, 6):  # Gaussian blur of the source frames (sigma in pixels; the face is ~70-110 px)
        blurred = tmp_path / f"blur{sigma}" / "eileen" / "soft.mp4"
        blurred.parent.mkdir(parents=True)
        write_video(blurred, [cv2.GaussianBlur(f, (0, 0), sigma) for f in video])
    assert pack(str(tmp_path / "blur2"), str(tmp_path / "c"), PackSettings(**FAST)).samples == 4
    with pytest.raises(RuntimeError, match=r"every clip dropped \(0 face smaller than 40.0 px, [1-4] blurrier than sharpness 20.0\)"):
        pack(str(tmp_path / "blur6"), str(tmp_path / "d"), PackSettings(**FAST))


def test_odd_sized_yuv444_video_decodes_upright(tmp_path):
    import av

    path = tmp_path / "odd.mkv"
    frames = [np.full((121, 161, 3), (40 * i, 100, 200 - 40 * i), np.uint8) for i in range(4)]
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 161, 121, "yuv444p"
        for f in frames:
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    got = read_video(path)
    assert got.shape == (4, 121, 161, 3) and np.abs(got.astype(int) - np.stack(frames)).mean() < 4


def test_every_container_and_the_voxceleb2_layout_are_packed_or_rejected_by_name(corpus, tmp_path):
    """The same video under container extensions beyond mp4, and in VoxCeleb2's nested layout, is packed;
    every file that is not packed is in `rejects` with its reason; sidecars and root metadata are not inputs."""
    src = next(corpus.glob("*/*.mp4"))
    root = tmp_path / "in"
    exts = [".mp4", ".m4v", ".3gp", ".mpg", ".flv", ".ts", ".mp4v", ".MOV", ".weird"]
    for i, ext in enumerate(exts):
        (root / f"p{i}").mkdir(parents=True)
        shutil.copy(src, root / f"p{i}" / f"clip{ext}")
    (root / "p0" / "clip.labels.json").write_text("{}")  # a sidecar of p0/clip.mp4: not an input
    (root / "vox" / "21Uxsk56VDQ").mkdir(parents=True)
    shutil.copy(src, root / "vox" / "21Uxsk56VDQ" / "00001.mp4")
    (root / "vox" / "21Uxsk56VDQ" / "00001.txt").write_text("FRAME X Y W H\n")  # its VoxCeleb track: a sidecar
    (root / "p1" / "notes.txt").write_text("hello")  # belongs to no video
    (root / "p1" / "broken.avi").write_bytes(b"not a video at all")
    (root / "stray.mp4").write_bytes(src.read_bytes())  # no identity folder
    (root / "p2" / "photo.jpg").write_bytes(b"\xff\xd8")  # an image directly in an identity folder
    (root / "corpus.json").write_text("{}")  # root metadata: not an input
    out = tmp_path / "out"
    assert pack_main([str(root), str(out), "--align", "center", "--clip-len", "8", "--stride", "2", "--size", "32",
                      "--workers", "1"]) == 0
    m = shards.load_manifest(out)
    assert m.videos == len(exts) + 1
    assert m.identities == sorted([f"p{i}" for i in range(len(exts))] + ["vox"])
    assert {s.meta.video for s in all_samples(out)} >= {"vox/21Uxsk56VDQ/00001", "p5/clip", "p8/clip"}
    rejected = {r["input"]: r["reason"] for r in m.rejects}
    assert sorted(rejected) == sorted(str(root / p) for p in ("p1/notes.txt", "p1/broken.avi", "stray.mp4",
                                                              "p2/photo.jpg"))
    assert "cannot open video" in rejected[str(root / "p1/broken.avi")]
    assert "not inside an identity folder" in rejected[str(root / "stray.mp4")]
    assert "not a video" in rejected[str(root / "p1/notes.txt")]


def test_missing_detector_weights_are_one_error_at_start(corpus, tmp_path, monkeypatch, capsys):
    """Without the MTCNN weights the packer stops before any input with one line naming the file (exit 2):
    nothing is rejected, nothing is written."""
    from aupretrain.pack import mtcnn

    mtcnn.load_nets.cache_clear()
    monkeypatch.setenv("AUPRETRAIN_MTCNN_WEIGHTS", str(tmp_path / "nowhere"))
    try:
        assert pack_main([str(corpus), str(tmp_path / "out"), "--workers", "1"]) == 2
    finally:
        mtcnn.load_nets.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MTCNN weights missing" in err[0] and str(tmp_path / "nowhere" / "pnet.pt") in err[0]
    assert not (tmp_path / "out" / "manifest.json").exists()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for n in ("pnet.pt", "rnet.pt", "onet.pt"):
        shutil.copy(mtcnn.Path(mtcnn.__file__).parent / "mtcnn_weights" / n, damaged / n)
    (damaged / "onet.pt").write_bytes(b"truncated")
    monkeypatch.setenv("AUPRETRAIN_MTCNN_WEIGHTS", str(damaged))
    with pytest.raises(mtcnn.DetectorUnavailable, match="onet.pt"):
        mtcnn.weights_dir()


def test_linked_folders_excel_lists_same_named_videos_and_foreign_shards(corpus, tmp_path, caplog):
    """Real users' inputs (a field trial): an identity folder and a frame folder that are links into another disk
    are packed (were skipped without a word); a link loop is read once; an Excel "CSV UTF-8" list (a byte-order
    mark, spaces in the header) is read; two videos with the same file name in different folders are two videos
    (one was dropped as a duplicate id); a bad list row is said as a warning; an output folder holding shard
    files no manifest records is refused, not overwritten."""
    import logging
    import os

    from aupretrain.errors import UsageError

    src = sorted(corpus.glob("*/*.mp4"))
    real = tmp_path / "elsewhere"
    (real / "bob").mkdir(parents=True)
    shutil.copy(src[0], real / "bob" / "v.mp4")
    frames = real / "frames"
    frames.mkdir()
    for i, f in enumerate(read_video(src[1])[:12]):
        cv2.imwrite(str(frames / f"{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    root = tmp_path / "in"
    (root / "carol").mkdir(parents=True)
    shutil.copy(src[2], root / "carol" / "a.mp4")
    os.symlink(real / "bob", root / "bob")  # an identity folder on another disk
    os.symlink(frames, root / "carol" / "seq")  # a frame folder
    os.symlink(root, root / "carol" / "loop")  # a link back up the tree: read once
    args = ["--align", "center", "--clip-len", "4", "--stride", "2", "--size", "32", "--workers", "1"]
    assert pack_main([str(root), str(tmp_path / "out"), *args]) == 0
    m = shards.load_manifest(tmp_path / "out")
    assert {s.meta.video for s in all_samples(tmp_path / "out")} == {"bob/v", "carol/a", "carol/seq"}
    assert m.rejects == [] and "a link to a folder read already" in caplog.text
    other = real / "bob" / src[0].name  # the same file name as src[0], in another folder
    (real / "bob" / "v.mp4").rename(other)
    lst = tmp_path / "list.csv"  # Excel: BOM, CRLF, a space after the comma in the header
    lst.write_bytes(f"\ufeffpath, identity\r\n{src[0]},alice\r\n{other},alice\r\n{src[0]},alice\r\n,nobody\r\n".encode())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert pack_main([str(lst), str(tmp_path / "out_list"), *args]) == 0
    m = shards.load_manifest(tmp_path / "out_list")
    ids = {s.meta.video for s in all_samples(tmp_path / "out_list")}
    assert ids == {f"alice/{src[0].stem}", f"alice/bob/{src[0].stem}"}, ids  # the first keeps its id
    reasons = sorted(r["reason"] for r in m.rejects)
    assert len(reasons) == 2 and "duplicate video id" in reasons[0] and reasons[1].startswith(f"{lst}:5: needs")
    assert f"{lst}:5: needs `path` and `identity` (empty here)" in caplog.text  # said, not only in the manifest
    # a folder holding someone's shard files, no manifest: refused before they are overwritten or removed
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "shard-000007.tar").write_bytes(b"precious")
    with pytest.raises(UsageError, match=r"holds shard files that no manifest.json or pack journal there accounts for \(shard-000007.tar\)"):
        pack(str(root), str(mine), PackSettings(align="center", clip_len=4, stride=2, size=32, workers=1))
    with pytest.raises(UsageError, match="accounts for"):  # and again: the refusal wrote no journal to pass it
        pack(str(root), str(mine), PackSettings(align="center", clip_len=4, stride=2, size=32, workers=1))
    assert (mine / "shard-000007.tar").read_bytes() == b"precious"
    # packing again into a dataset folder replaces it, said as a warning; an extra file there is left alone
    (tmp_path / "out" / "notes.txt").write_text("mine")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert pack_main([str(lst), str(tmp_path / "out"), *args]) == 0
    assert "replacing the dataset there" in caplog.text and (tmp_path / "out" / "notes.txt").exists()


def test_a_video_cut_short_and_a_damaged_frame_image_are_said_and_the_rest_kept(corpus, tmp_path, caplog):
    """A copy cut short ends decoding quietly in FFmpeg: the packer says how many of the frames the file declares
    it decoded (was silent); one damaged JPEG in a frame folder is held over by the frame before it and said (the
    whole folder was rejected, its good frames lost)."""
    import logging

    import av

    from aupretrain.pack.video import iter_timed_frames

    frames = read_video(next(corpus.glob("*/*.mp4")))
    root = tmp_path / "in"
    (root / "p").mkdir(parents=True)
    full = tmp_path / "full.mkv"  # Matroska records its duration in the header: a cut copy still declares it
    with av.open(str(full), "w") as c:
        st = c.add_stream("mjpeg", rate=25)
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuvj420p"
        for f in np.concatenate([frames, frames])[:80]:
            c.mux(st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(st.encode())
    data = full.read_bytes()
    (root / "p" / "cut.mkv").write_bytes(data[: int(len(data) * 0.5)])
    notes = []
    n = sum(1 for _ in iter_timed_frames(root / "p" / "cut.mkv", notes))
    assert 20 < n < 60 and len(notes) == 1 and f"decoded {n} frames, {n / 25:.1f} s of the 3.2 s the video stream " \
        "declares" in notes[0], notes
    assert sum(1 for _ in iter_timed_frames(full, notes)) == 80 and len(notes) == 1  # a whole file says nothing
    # whole files that declare more than they show: an mp4 cut with an edit list (frames before its start are
    # stored but not shown) and an mkv whose audio outlasts its video — neither is "truncated"
    with av.open(str(tmp_path / "edit.mp4"), "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 64, "yuv420p"
        for i in range(100):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 2, np.uint8), format="rgb24")
            f.pts = i - 40
            c.mux(st.encode(f))
        c.mux(st.encode())
    with av.open(str(tmp_path / "audio_longer.mkv"), "w") as c:
        st, au = c.add_stream("libx264", rate=25), c.add_stream("pcm_s16le", rate=8000)
        st.width, st.height, st.pix_fmt, au.layout = 64, 64, "yuv420p", "mono"
        for i in range(50):  # 2 s of video
            c.mux(st.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 4, np.uint8), format="rgb24")))
        c.mux(st.encode())
        for k in range(40):  # 4 s of audio
            af = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
            af.sample_rate, af.pts = 8000, k * 800
            c.mux(au.encode(af))
        c.mux(au.encode())
    for whole in ("edit.mp4", "audio_longer.mkv"):
        assert sum(1 for _ in iter_timed_frames(tmp_path / whole, notes)) > 40 and len(notes) == 1, notes
    seq = root / "p" / "seq"
    seq.mkdir()
    for i, f in enumerate(frames[:24]):
        cv2.imwrite(str(seq / f"{i}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    (seq / "12.jpg").write_bytes((seq / "12.jpg").read_bytes()[:300])  # a damaged file
    args = ["--align", "center", "--clip-len", "4", "--stride", "2", "--size", "32", "--workers", "1"]
    with caplog.at_level(logging.WARNING):
        assert pack_main([str(root), str(tmp_path / "out"), *args]) == 0
    m = shards.load_manifest(tmp_path / "out")
    samples = all_samples(tmp_path / "out")
    assert m.rejects == [] and {s.meta.video for s in samples} == {"p/cut", "p/seq"}
    seq_frames = sorted({f for s in samples if s.meta.video == "p/seq" for f in s.meta.frames})
    assert seq_frames[-1] >= 20  # the frames after the damaged one are packed too
    assert "1 of 24 frame images cannot be decoded, each replaced by the frame before it (12.jpg)" in caplog.text
    assert "s the video stream declares (the file is truncated or damaged)" in caplog.text


def test_a_washed_out_or_dark_face_is_found_and_its_crops_cut_from_the_frame_as_it_is(astronaut_mp4, tmp_path):
    """Over- and under-exposed footage (a window behind the speaker, a dim room): MTCNN finds no face in the frames
    as they are; the detector's second look at exposure-corrected pixels does (both were rejected as "no face
    found"), and the crops keep the video's own pixels."""
    from aupretrain.pack.exposure import badly_exposed
    from aupretrain.pack.faces import Detector

    path, _ = astronaut_mp4
    frames = read_video(path)[:40].astype(np.float32)
    root = tmp_path / "in" / "eileen"
    root.mkdir(parents=True)
    looks = {"bright": np.clip(frames * 1.8 + 40, 0, 255), "dark": frames * 0.06}
    for name, f in looks.items():
        write_video(root / f"{name}.mp4", f.astype(np.uint8))
    det = Detector("mtcnn", 0.1, (0.6, 0.7, 0.7))
    for name, f in looks.items():
        raw = det._detect(f[0].astype(np.uint8))[0]
        boxes = det.detect(f[0].astype(np.uint8))[0]
        assert badly_exposed(f[0].astype(np.uint8)) and len(raw) == 0 and (boxes[:, 2] - boxes[:, 0]).max() > 50
    (root / "dark.mp4").unlink()  # (found, but its crops, 0-15 grey levels, fail the sharpness filter: a reject)
    m = pack(str(tmp_path / "in"), str(tmp_path / "out"), PackSettings(**FAST))
    assert m.rejects == [] and m.videos == 1 and m.stats["frames_with_face"] >= 30, (m.samples, m.stats)
    assert min(decode(s.jpegs[0]).mean() for s in all_samples(tmp_path / "out")) > 150  # the frames' own pixels
    assert not badly_exposed(read_video(path)[0])  # footage exposed as usual is looked at once, as before


def test_no_clip_reaches_across_a_gap_in_a_frame_folders_numbering(corpus, tmp_path):
    """A frame folder with frames deleted (00001-00012 then 00031-00042) was timed by position: clips ran across
    the gap as if the frames were 40 ms apart. Each stretch without a gap is packed on its own; a folder of every
    other frame (step 2 throughout) is one stretch."""
    frames = read_video(next(corpus.glob("*/*.mp4")))
    root = tmp_path / "in"
    for name, numbers in {"gap": [*range(1, 13), *range(31, 43)], "every2": range(2, 50, 2)}.items():
        (root / "p" / name).mkdir(parents=True)
        for k, n in enumerate(numbers):
            cv2.imwrite(str(root / "p" / name / f"{n:05d}.jpg"), cv2.cvtColor(frames[k], cv2.COLOR_RGB2BGR))
    args = ["--align", "center", "--clip-len", "4", "--stride", "1", "--clip-step", "1", "--size", "32",
            "--workers", "1"]
    assert pack_main([str(root), str(tmp_path / "out"), *args]) == 0
    samples = all_samples(tmp_path / "out")
    gap = sorted(s.meta.frames for s in samples if s.meta.video == "p/gap")
    # positions 0-11 are frames 1-12, 12-23 frames 31-42: nine clips in each stretch, none with 11 and 12 both
    assert len(gap) == 18 and all(f == list(range(f[0], f[0] + 4)) for f in gap), gap
    assert not [f for f in gap if 11 in f and 12 in f]
    assert len([s for s in samples if s.meta.video == "p/every2"]) == 21  # 24 frames, one stretch


def test_frame_runs_split_at_gaps_in_the_numbering(tmp_path):
    from pathlib import Path

    from aupretrain.pack.frames import frame_runs

    def runs(names, strays=()):
        got, left = frame_runs([Path(n) for n in names])
        assert [f.name for f in left] == list(strays), left
        return [[i for i, _ in r] for r in got]

    assert runs(["f_1.jpg", "f_2.jpg", "f_3.jpg", "f_7.jpg", "f_8.jpg"]) == [[0, 1, 2], [3, 4]]
    assert runs(["0002.png", "0004.png", "0006.png", "0012.png", "0014.png"]) == [[0, 1, 2], [3, 4]]
    assert runs(["0002.png", "0004.png", "0006.png", "0010.png", "0012.png"]) == [[0, 1, 2, 3, 4]]  # 4: not > 2 x 2
    assert runs([f"{n}.png" for n in (1, 3, 6, 8, 11, 13, 16)]) == [list(range(7))]  # steps 2, 3, 2, 3: one stretch
    assert runs(["1.jpg", "2.jpg", "5.jpg"]) == [[0, 1], [2]]
    assert runs(["a.jpg", "b.jpg", "c.jpg"]) == [[0, 1, 2]]  # not numbered: one stretch, natural order
    assert runs(["x1.jpg", "y2.jpg", "x5.jpg"]) == [[0, 1, 2]]  # no one prefix for nine in ten
    assert runs(["1.jpg", "9.jpg"]) == [[0, 1]]  # two frames say nothing of a usual step
    frames = [f"{n:05d}.jpg" for n in range(1, 21)]
    assert runs([*frames[:10], *frames[15:], "cover.jpg"], strays=["cover.jpg"]) == [list(range(10)), list(range(10, 15))]
    assert runs([*frames[:5], "cover.jpg"]) == [list(range(6))]  # one in six is not a stray: every image, one stretch
