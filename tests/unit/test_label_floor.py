"""`bench/label_floor.py`: the AU labels' own between-clip share, cut and batched as the packer and the term do."""
import json

import numpy as np
import pytest

from bench.label_floor import clip_labels, main


def _write(root, name, au):
    d = root / name
    d.mkdir(parents=True)
    (d / "v000.labels.json").write_text(json.dumps({"identity": name, "aus": ["AU1", "AU2"], "au": au.tolist()}))


def test_clips_are_cut_as_the_packer_cuts_them_and_the_share_tells_held_from_flickering_aus(tmp_path):
    """40 labelled frames, 4 frames 12 apart, a clip every frame: starts 0..3, frames s, s+12, s+24, s+36. AUs held
    through each clip read a share of 1; AUs drawn afresh every frame about 1/T (a mean of T draws keeps 1/T of the
    variance)."""
    rng = np.random.default_rng(0)
    frames = np.arange(40, dtype=np.float32)
    _write(tmp_path / "ramp", "id0", np.stack([frames, -frames], 1))
    clips = clip_labels(tmp_path / "ramp", 4, 12, 1)
    assert clips.shape == (4, 4, 2)
    assert clips[:, :, 0].tolist() == [[s, s + 12, s + 24, s + 36] for s in range(4)]

    for i in range(60):  # held: one level per video, the same in every frame
        _write(tmp_path / "held", f"id{i}", np.repeat(rng.uniform(0, 1, (1, 2)), 40, 0).astype(np.float32))
        _write(tmp_path / "flicker", f"id{i}", rng.uniform(0, 1, (40, 2)).astype(np.float32))
    for corpus, lo, hi in (("held", 0.999, 1.0), ("flicker", 0.15, 0.4)):
        out = tmp_path / f"{corpus}.json"
        main([str(tmp_path / corpus), "--batches", "50", "--json", str(out)])
        share = {r["labels"]: r["value"] for r in json.loads(out.read_text())["rows"]}
        assert lo <= share["intensity"] <= hi, (corpus, share)

    with pytest.raises(SystemExit, match="no label files"):
        main([str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="no labelled video of >= 43 frames"):
        main([str(tmp_path / "ramp"), "--stride", "14"])
    with pytest.raises(SystemExit, match="4 clips, fewer than a batch"):
        main([str(tmp_path / "ramp")])
