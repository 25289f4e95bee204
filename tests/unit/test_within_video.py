"""`bench/within_video.py`: principal directions of the change inside each video, not of who is in it."""
import numpy as np
import pytest

from bench.within_video import principal_directions


def test_within_video_directions_find_the_change_and_pooled_ones_the_identity():
    """Features = a large offset per video (who the face is) + a small signal along one fixed direction that varies
    inside every video (its AU): the top within-video direction is the signal's, the top pooled one the offsets'."""

    rng = np.random.default_rng(0)
    d, signal = 20, np.eye(20)[3]
    groups = [rng.normal(0, 10, d) * (1 - signal) + np.outer(rng.normal(0, 1, 30), signal) + rng.normal(0, 0.01, (30, d))
              for _ in range(40)]
    within = principal_directions(groups, 1, within=True)[0]
    pooled = principal_directions(groups, 1, within=False)[0]
    assert abs(within @ signal) > 0.99
    assert abs(pooled @ signal) < 0.1
    with pytest.raises(ValueError, match="at most"):
        principal_directions(groups, 21)
    single = [g[:1] for g in groups]  # one frame per video: nothing changes within any of them
    with pytest.raises(ValueError, match="allow at most 0 directions"):
        principal_directions(single, 1)
    assert principal_directions(single, 1, within=False).shape == (1, d)  # pooled over videos it still has rank


def test_within_share_directions_drop_the_change_that_also_tells_faces_apart(tmp_path, monkeypatch, capsys):
    """`--whiten R`: the training basis' fit (each video one clip). Axis 0 changes most within videos but far more
    between them; axis 3 changes only within: plain within-video PCA keeps axis 0 first, the within-share fit axis 3.
    Videos of unequal length are fine; an R below the largest k is refused by the parser."""
    import sys

    from bench.within_video import main, within_share_directions

    rng = np.random.default_rng(0)
    d = 12
    groups = []
    for i in range(60):
        n = 8 + i % 3
        g = rng.normal(0, 0.01, (n, d))
        g[:, 0] += rng.normal(0, 10) + rng.normal(0, 3, n)
        g[:, 3] += rng.normal(0, 2, n)
        groups.append(g)
    assert abs(principal_directions(groups, 1)[0][0]) > 0.99
    p = within_share_directions(groups, 1, 2)
    assert p.shape == (1, d) and abs(p[0][3]) > 0.99
    monkeypatch.setattr(sys, "argv", ["within_video.py", str(tmp_path), "--k", "8", "--whiten", "4"])
    with pytest.raises(SystemExit):
        main()
    assert "--whiten 4: must be >= the largest --k (8)" in capsys.readouterr().err


def test_within_video_names_an_empty_corpus(tmp_path):
    from bench.within_video import corpus_videos

    with pytest.raises(SystemExit, match="no <identity>/<video>.mp4"):
        corpus_videos(tmp_path, 10, 4)


def test_hog_bands_split_block_rows_and_banded_directions_stay_in_their_band():
    """`--bands`: OpenCV's HOG lists blocks column by column, so a value's block row is (index // 36) mod blocks;
    the bands are consecutive block rows, top first, covering every value once; each band's directions are fitted
    on its columns alone and are zero elsewhere — a small change inside one band is found even when another band
    changes far more."""
    from bench.within_video import banded_directions, hog_bands

    bands = hog_bands(7 * 7 * 36, 7, 3)
    rows = [sorted({int(i // 36) % 7 for i in b}) for b in bands]
    assert rows == [[0, 1, 2], [3, 4], [5, 6]]
    assert sorted(np.concatenate(bands).tolist()) == list(range(7 * 7 * 36))
    with pytest.raises(ValueError, match="--bands 8"):
        hog_bands(7 * 7 * 36, 7, 8)
    signed = hog_bands(7 * 7 * 72, 7, 3, per_block=72)  # 18 bins: 72 values a block
    assert [sorted({int(i // 72) % 7 for i in b}) for b in signed] == rows
    with pytest.raises(ValueError, match="--bands 3"):
        hog_bands(7 * 7 * 72, 7, 3)  # a descriptor of 18 bins read as one of 9
    # a 2-block-row toy HOG (2 x 2 blocks): a large change in the bottom row, a small one in the top row
    rng = np.random.default_rng(0)
    d = 2 * 2 * 36
    top, bottom = hog_bands(d, 2, 2)
    small, large = np.zeros(d), np.zeros(d)
    small[top[5]], large[bottom[7]] = 1.0, 1.0
    groups = [rng.normal(0, 5, d) + np.outer(rng.normal(0, 0.1, 20), small) + np.outer(rng.normal(0, 3, 20), large)
              + rng.normal(0, 1e-3, (20, d)) for _ in range(30)]
    p = banded_directions(groups, 2, [top, bottom])
    assert p.shape == (2, 2, d)
    assert abs(p[0, 0] @ small) > 0.99 and abs(p[1, 0] @ large) > 0.99
    assert not p[0][:, bottom].any() and not p[1][:, top].any()


def test_an_empty_features_list_needs_an_encoder(tmp_path, monkeypatch, capsys):
    """`--features` with no space analyses only the --encoder codes; with neither there is nothing to fit."""
    import sys

    from bench.within_video import main

    monkeypatch.setattr(sys, "argv", ["within_video.py", str(tmp_path), "--features"])
    with pytest.raises(SystemExit):
        main()
    assert "nothing to fit: give --features and/or --encoder" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["within_video.py", str(tmp_path), "--features", "--encoder", str(tmp_path / "e.pt")])
    with pytest.raises(FileNotFoundError, match="e.pt"):  # past the argument check: the encoder is loaded
        main()


def test_overrides_after_a_list_flag_are_overrides_not_its_items():
    """`--k 8 16 eval.split=validation run.seed=1` (as docs/benchmarks.md writes it): k is [8, 16], the two words are
    config overrides; flags after them keep their values."""
    from bench.within_video import parse_args

    _, a = parse_args(["D", "--features", "hog", "--k", "8", "16", "eval.split=validation", "run.seed=1",
                       "--hog-signed", "--json", "out.json"])
    assert a.k == [8, 16] and a.overrides == ["eval.split=validation", "run.seed=1"]
    assert str(a.corpus) == "D" and a.hog_signed and a.json == "out.json" and a.features == ["hog"]
