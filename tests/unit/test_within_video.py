"""`bench/within_video.py`: principal directions of the change inside each video, not of who is in it."""
import numpy as np
import pytest


def test_within_video_directions_find_the_change_and_pooled_ones_the_identity():
    """Features = a large offset per video (who the face is) + a small signal along one fixed direction that varies
    inside every video (its AU): the top within-video direction is the signal's, the top pooled one the offsets'."""
    from bench.within_video import principal_directions

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


def test_within_video_names_an_empty_corpus(tmp_path):
    from bench.within_video import corpus_videos

    with pytest.raises(SystemExit, match="no <identity>/<video>.mp4"):
        corpus_videos(tmp_path, 10, 4)
