"""Pack -> shards -> DALI read back: pixels, metadata, and exact coverage across 2 ranks."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from aupretrain.data import shards
from aupretrain.data.dali_reader import ClipLoader, ReaderSettings, check_shards
from aupretrain.pack.packer import PackSettings, pack
from aupretrain.synth.corpus import load_labels
from aupretrain.pack.video import read_video

NEUTRAL = dict(scale=(1.0, 1.0), brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0,
               blur_sigma=(0.0, 0.0))


def test_manifest_and_index_files(packed, corpus):
    m = shards.load_manifest(str(packed))
    assert m.clip_len == 8 and m.size == 64 and m.rejects == []
    assert m.identities == ["id00000", "id00001", "id00002", "id00003"] and m.videos == 8
    # 40 frames, span 15, step 16 -> 2 clips per video
    assert m.samples == 16 == sum(s.samples for s in m.shards) and m.frames == 16 * 8
    for s in m.shards:
        assert (packed / s.index).stat().st_size > 0
        assert shards.sha256_file(packed / s.name) == s.sha256 and (packed / s.name).stat().st_size == s.bytes
    assert not list(packed.glob(".*"))  # no temporary files left behind


def test_shard_samples_hold_the_video_frames(packed, corpus):
    samples = [s for info in shards.load_manifest(str(packed)).shards for s in shards.read_samples(str(packed / info.name))]
    assert len({s.key for s in samples}) == 16 and all("." not in s.key for s in samples)
    videos = [s.meta.video for s in samples]
    assert videos != sorted(videos)  # shuffled across videos
    s = samples[0]
    src = read_video(corpus / f"{s.meta.video}.mp4")
    assert s.meta.frames == list(range(s.meta.frames[0], s.meta.frames[0] + 16, 2))
    assert load_labels(corpus / f"{s.meta.video}.mp4")["identity"] == s.meta.identity
    import cv2

    for i, jpg in zip(s.meta.frames, s.jpegs):
        got = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).astype(int)
        crop = cv2.resize(src[i], (64, 64), interpolation=cv2.INTER_AREA)  # align=center: centre crop + resize
        assert np.abs(got - crop.astype(int)).mean() < 5.0
        ok, want = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        want = cv2.cvtColor(cv2.imdecode(want, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(int)
        assert np.abs(got - want).mean() < 0.5  # the same crop, JPEG-encoded at the packer's quality


def test_dali_two_ranks_cover_every_sample_once_with_same_pixels(packed, corpus):
    seen = {}
    for rank in range(2):
        loader = ClipLoader(ReaderSettings(root=str(packed), batch_size=4, input_size=64, rank=rank, world=2,
                                           device="cpu", num_threads=1, shuffle_buffer=4, **NEUTRAL))
        assert loader.steps_per_epoch == 2
        it = iter(loader)
        for _ in range(loader.steps_per_epoch):
            b = next(it)
            assert b["view1"].shape == (4, 8, 3, 64, 64) and b["view1"].dtype == torch.float32
            assert torch.allclose(b["view1"], b["view2"])  # no augmentation -> identical views
            for k, meta in enumerate(b["meta"]):
                key = (meta["video"], meta["frames"][0])
                assert key not in seen, f"sample {key} read twice"
                seen[key] = rank
                assert loader.manifest.identities[int(b["identity"][k])] == meta["identity"]
                p = int(b["partner"][k])
                assert p >= 0 and b["identity"][p] != b["identity"][k]
            # pixels: undo normalisation, compare with the source video frames
            mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
            std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
            meta = b["meta"][0]
            frames = (b["view1"][0] * std + mean).permute(0, 2, 3, 1).numpy()
            src = read_video(corpus / f"{meta['video']}.mp4")
            import cv2

            for f, i in zip(frames, meta["frames"]):
                want = cv2.resize(src[i], (64, 64), interpolation=cv2.INTER_AREA).astype(float)
                assert np.abs(f - want).mean() < 4.0
    assert len(seen) == 16 and set(seen.values()) == {0, 1}


def test_augmented_views_differ_but_share_params_across_frames(packed):
    loader = ClipLoader(ReaderSettings(root=str(packed), batch_size=2, input_size=48, device="cpu", num_threads=1,
                                       shuffle_buffer=4))
    b = next(iter(loader))
    assert b["view1"].shape == (2, 8, 3, 48, 48)
    assert not torch.allclose(b["view1"], b["view2"])
    # one crop/colour draw per clip: per-frame mean brightness of a view varies far less than between views
    m1 = b["view1"].mean(dim=(2, 3, 4))
    m2 = b["view2"].mean(dim=(2, 3, 4))
    assert (m1.std(1) < (m1 - m2).abs().mean(1) + 1e-3).all()


def test_rotation_turns_each_clip_view_by_one_angle(packed):
    neutral = dict(root=str(packed), batch_size=2, input_size=48, device="cpu", num_threads=1, shuffle_buffer=1,
                   scale=(1.0, 1.0), brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0,
                   blur_sigma=(0.0, 0.0))
    plain = next(iter(ClipLoader(ReaderSettings(**neutral))))
    assert torch.allclose(plain["view1"], plain["view2"])  # nothing random left: both views are the frames
    turned = next(iter(ClipLoader(ReaderSettings(**neutral, rotate=30.0))))
    assert not torch.allclose(turned["view1"], turned["view2"])  # two angles
    # the difference to the unrotated frames is alike across the clip's frames (one angle per clip and view),
    # far more alike than between the two views' angles
    d1 = (turned["view1"] - plain["view1"]).abs().mean(dim=(2, 3, 4))  # [B, T]
    d2 = (turned["view2"] - plain["view2"]).abs().mean(dim=(2, 3, 4))
    assert (d1 > 0.05).all() or (d2 > 0.05).all()
    assert (d1.std(1) < 0.5 * d1.mean(1) + 1e-3).all() and (d2.std(1) < 0.5 * d2.mean(1) + 1e-3).all()


def test_bad_shard_is_skipped_and_reported(packed, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(packed, bad)
    m = shards.load_manifest(str(bad))
    (bad / m.shards[0].name).write_bytes(b"truncated")
    paths, idx, rejected, skipped, counts = check_shards(str(bad), m)
    assert len(paths) == len(m.shards) - 1 and rejected[0]["shard"].endswith(m.shards[0].name)
    assert counts == [s.samples for s in m.shards[1:]]
    assert "truncated shard" in rejected[0]["reason"] and skipped == {}
    loader = ClipLoader(ReaderSettings(root=str(bad), batch_size=2, input_size=32, device="cpu", num_threads=1,
                                       shuffle_buffer=2))
    assert loader.skipped_samples == m.shards[0].samples
    assert next(iter(loader))["view1"].shape[0] == 2


def test_pack_rejects_bad_videos_and_keeps_going(corpus, tmp_path):
    import shutil

    src = tmp_path / "in"
    shutil.copytree(corpus / "id00000", src / "id00000")
    (src / "id00001").mkdir()
    (src / "id00001" / "empty.mp4").write_bytes(b"")
    data = (corpus / "id00000" / "v000.mp4").read_bytes()
    (src / "id00001" / "truncated.mp4").write_bytes(data[: len(data) // 3])
    m = pack(str(src), str(tmp_path / "out"), PackSettings(size=32, samples_per_shard=4, workers=1, align="center"))
    reasons = {r["input"].split("/")[-1]: r["reason"] for r in m.rejects}
    assert set(reasons) == {"empty.mp4", "truncated.mp4"}
    assert all(str(src / "id00001") in r for r in reasons.values())  # the reason names the file
    assert m.samples == 4 and m.identities == ["id00000"]


def test_pack_fails_clearly_when_nothing_is_usable(tmp_path):
    (tmp_path / "in" / "someone").mkdir(parents=True)
    (tmp_path / "in" / "someone" / "a.mp4").write_bytes(b"not a video")
    with pytest.raises(RuntimeError, match="nothing could be packed"):
        pack(str(tmp_path / "in"), str(tmp_path / "out"), PackSettings(size=32, workers=1, align="center"))
