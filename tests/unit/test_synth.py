import json

import numpy as np
import pytest

from aupretrain.synth.corpus import contact_sheet, load_labels, write_corpus
from aupretrain.synth.identity import AU_INDEX, AUS, Pose, sample_identity, sample_scene
from aupretrain.synth.render import face_geometry, render
from aupretrain.synth.tracks import sample_au_track
from aupretrain.pack.video import read_video


def au(**kw):
    a = np.zeros(len(AUS))
    for k, v in kw.items():
        a[AU_INDEX[k]] = v
    return a


def test_render_is_deterministic():
    ident, scene = sample_identity(5), sample_scene(9)
    a = au(AU12=0.7, AU1=0.3)
    img1, lm1 = render(ident, a, Pose(yaw=4, roll=-2), scene, seed=11)
    img2, lm2 = render(ident, a, Pose(yaw=4, roll=-2), scene, seed=11)
    assert img1.dtype == np.uint8 and img1.shape == (112, 112, 3)
    assert np.array_equal(img1, img2) and np.array_equal(lm1, lm2)


def test_a_seeded_video_is_rendered_to_the_same_bytes(tmp_path):
    """A seeded corpus must be one corpus: every figure read on the evaluation identities depends on it. libx264's
    macroblock-tree rate control wrote different bytes for identical frames in a few encodes in 40 (decoded
    pixels up to 43 grey levels apart); `write_video` turns it off. 16 encodes of one rendered video and two
    renders of a small corpus must agree byte for byte."""
    from aupretrain.pack.video import write_video
    from aupretrain.synth.corpus import VideoJob, render_video

    job = VideoJob(str(tmp_path / "a"), 3, 1, 60, 25.0, 112, 11)
    render_video(job)
    frames = read_video(tmp_path / "a" / job.identity_name / f"{job.video_name}.mp4")
    encodings = set()
    for k in range(16):
        write_video(tmp_path / f"e{k}.mp4", frames)
        encodings.add((tmp_path / f"e{k}.mp4").read_bytes())
    assert len(encodings) == 1
    for d in ("c1", "c2"):
        write_corpus(tmp_path / d, 2, 2, 40, seed=5, workers=2)
    for v in sorted((tmp_path / "c1").glob("*/*.mp4")):
        assert v.read_bytes() == (tmp_path / "c2" / v.relative_to(tmp_path / "c1")).read_bytes(), v


def test_same_aus_on_two_identities_give_same_geometry_change():
    a, b = sample_identity(1), sample_identity(2)
    scene = sample_scene(0)
    img_a, _ = render(a, au(AU26=1.0), Pose(), scene, 0)
    img_b, _ = render(b, au(AU26=1.0), Pose(), scene, 0)
    assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() > 5  # different people
    for ident in (a, b):  # the same AU opens both mouths by the same amount
        g0, g1 = face_geometry(ident, au()), face_geometry(ident, au(AU26=1.0))
        gap0 = g0["lip_low_in"][4, 1] - g0["lip_up_in"][4, 1]
        gap1 = g1["lip_low_in"][4, 1] - g1["lip_up_in"][4, 1]
        assert gap1 - gap0 == pytest.approx(0.24 * 1.12, rel=0.05)


@pytest.mark.parametrize("name,check", [
    ("AU1", lambda g0, g1: g1["brow_l"][0, 1] < g0["brow_l"][0, 1] - 0.1),  # inner brow up
    ("AU2", lambda g0, g1: g1["brow_l"][-1, 1] < g0["brow_l"][-1, 1] - 0.1),  # outer brow up
    ("AU4", lambda g0, g1: g1["brow_r"][0, 1] > g0["brow_r"][0, 1] + 0.08 and g1["brow_r"][0, 0] < g0["brow_r"][0, 0]),
    ("AU12", lambda g0, g1: g1["lip_up_out"][0, 1] < g0["lip_up_out"][0, 1] - 0.05),  # lip corners up
    ("AU15", lambda g0, g1: g1["lip_up_out"][0, 1] > g0["lip_up_out"][0, 1] + 0.05),  # lip corners down
    ("AU20", lambda g0, g1: g1["lip_up_in"][-1, 0] > g0["lip_up_in"][-1, 0] + 0.05),  # stretched sideways
    ("AU43", lambda g0, g1: np.abs(g1["eye_l_low"][:, 1] - g1["eye_l_up"][:, 1]).max() < 0.01),  # eyes closed
    ("AU6", lambda g0, g1: g1["cheeks"][0, 1] < g0["cheeks"][0, 1] - 0.05),  # cheeks raised
    ("AU7", lambda g0, g1: g1["eye_l_low"][3, 1] < g0["eye_l_low"][3, 1] - 0.01),  # lower lid up
])
def test_each_au_moves_its_landmarks(name, check):
    ident = sample_identity(3)
    g0, g1 = face_geometry(ident, au()), face_geometry(ident, au(**{name: 1.0}))
    assert check(g0, g1)
    img0, _ = render(ident, au(), Pose(), sample_scene(1), 0)
    img1, _ = render(ident, au(**{name: 1.0}), Pose(), sample_scene(1), 0)
    assert np.abs(img0.astype(int) - img1.astype(int)).sum() > 500  # visibly different pixels


def test_au_tracks_cover_every_au():
    tr = sample_au_track(np.random.default_rng(0), 25 * 300, 25.0)
    assert tr.shape == (7500, len(AUS)) and tr.min() >= 0 and tr.max() <= 1
    active = (tr >= 0.5).mean(0)
    assert (active > 0.01).all(), dict(zip(AUS, active))
    assert (active < 0.6).all()


def test_corpus_layout_and_labels(tmp_path):
    stats = write_corpus(tmp_path, identities=2, videos_per_identity=2, frames=30, seed=1, workers=1)
    assert stats["videos"] == 4
    videos = sorted(tmp_path.glob("*/*.mp4"))
    assert [p.relative_to(tmp_path).as_posix() for p in videos] == [
        "id00000/v000.mp4", "id00000/v001.mp4", "id00001/v000.mp4", "id00001/v001.mp4"]
    lab = load_labels(videos[0])
    frames = read_video(videos[0])
    assert len(frames) == lab["frames"] == len(lab["au"]) == len(lab["pose"]) == len(lab["landmarks"]) == 30
    assert lab["aus"] == list(AUS)
    lm = np.asarray(lab["landmarks"])
    assert lm.shape[2] == 2 and (lm > 0).all() and (lm < 112).all()
    assert json.loads((tmp_path / "corpus.json").read_text())["identities"] == 2
    # Re-running skips complete videos.
    assert write_corpus(tmp_path, identities=2, videos_per_identity=2, frames=30, seed=1, workers=1)["rendered"] == 0
    # Other settings in the same folder would mix two corpora: a clear error, or a clean replacement.
    with pytest.raises(ValueError, match="frames: 30 -> 20.*--overwrite"):
        write_corpus(tmp_path, identities=2, videos_per_identity=2, frames=20, seed=1, workers=1)
    write_corpus(tmp_path, identities=1, videos_per_identity=1, frames=20, seed=1, workers=1, overwrite=True)
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.glob("*/*.mp4"))] == ["id00000/v000.mp4"]


def test_short_videos_are_excerpts_of_ongoing_behaviour():
    """A 1-second video is as AU-active as any second of a long one (tracks do not start at rest)."""
    short = np.concatenate([sample_au_track(np.random.default_rng(s), 25, 25.0) for s in range(400)])
    long = sample_au_track(np.random.default_rng(0), 25 * 400, 25.0)
    rate_short, rate_long = (short >= 0.5).mean(), (long >= 0.5).mean()
    assert rate_short > 0.7 * rate_long, (rate_short, rate_long)


def test_video_matches_renderer(tmp_path):
    from aupretrain.synth.corpus import VideoJob, render_video
    from aupretrain.synth.tracks import sample_au_track, sample_pose_track

    job = VideoJob(str(tmp_path), 0, 0, 12, 25.0, 112, 4)
    lab = render_video(job)
    rng = np.random.default_rng(lab["scene_seed"])
    aus = sample_au_track(rng, 12, 25.0)
    poses = sample_pose_track(rng, 12, 25.0)
    img, _ = render(sample_identity(lab["identity_params"]["seed"]), aus[7], poses[7], sample_scene(lab["scene_seed"]), 7)
    frames = read_video(tmp_path / "id00000" / "v000.mp4")
    import cv2

    smooth = lambda x: cv2.GaussianBlur(x.astype(np.float32), (0, 0), 1.5)  # noqa: E731 - sensor noise is not kept by H.264
    err = np.abs(smooth(frames[7]) - smooth(img)).mean()
    assert err < 2.5
    assert err < np.abs(smooth(frames[0]) - smooth(img)).mean() or np.allclose(aus[0], aus[7])


def test_contact_sheet(tmp_path):
    import cv2

    p = tmp_path / "sheet.png"
    contact_sheet(p, seed=0, identities=3, size=64)
    img = cv2.imread(str(p))
    assert img.shape[0] == 18 + 3 * 64 and img.shape[1] % 64 == 0 and img.std() > 20


def test_head_motion_zero_holds_the_mean_pose_and_keeps_faces_and_aus(tmp_path):
    still = write_corpus(tmp_path / "still", 2, 1, 10, seed=3, workers=1, head_motion=0.0)
    write_corpus(tmp_path / "moving", 2, 1, 10, seed=3, workers=1)
    assert still["videos"] == 2
    for ident in ("id00000", "id00001"):
        s = json.loads((tmp_path / "still" / ident / "v000.labels.json").read_text())
        m = json.loads((tmp_path / "moving" / ident / "v000.labels.json").read_text())
        assert s["au"] == m["au"]  # the same behaviour: only the head's motion differs
        assert len({tuple(p) for p in s["pose"]}) == 1 and len({tuple(p) for p in m["pose"]}) == 10
        lm = np.asarray(s["landmarks"])
        assert np.abs(lm - lm[0]).max() < 3.0  # landmarks move with the AUs only (pixels)
    assert json.loads((tmp_path / "still" / "corpus.json").read_text())["head_motion"] == 0.0
    assert "head_motion" not in json.loads((tmp_path / "moving" / "corpus.json").read_text())  # the default: as before
    with pytest.raises(ValueError, match="head_motion: 0.0 -> 1.0"):  # never mixed with moving heads
        write_corpus(tmp_path / "still", 2, 1, 10, seed=3, workers=1)
    write_corpus(tmp_path / "moving", 2, 1, 10, seed=3, workers=1)  # a corpus from before the knob: unchanged


def test_two_renders_of_one_corpus_at_once_both_finish(tmp_path):
    """Two evaluations started together render the same evaluation corpus: both wrote `.v000.mp4.tmp` and the
    second rename failed (FileNotFoundError). Temporary names are per process; both renders end with one corpus."""
    import subprocess
    import sys

    code = ("import sys; from aupretrain.synth.corpus import write_corpus; "
            "write_corpus(sys.argv[1], identities=2, videos_per_identity=2, frames=12, seed=5, size=64, workers=1)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert len(list(tmp_path.glob("*/*.mp4"))) == 4 and not list(tmp_path.glob("*/.*.tmp"))
