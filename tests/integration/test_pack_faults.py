"""Faults that are not one input's: a bad list row is a reject, a disk-full stops the run without blaming the
input (a rerun resumes), a worker killed by one input rejects only that input, and keys never collide."""
import errno
import json
import os
import shutil
import signal

import pytest

from aupretrain.data import shards, storage

from aupretrain.pack import spill
from aupretrain.pack.packer import PackSettings, pack
from aupretrain.pack.parallel import parallel_map

CENTER = dict(align="center", samples_per_shard=4, workers=1, clip_len=4, stride=2)


def one_video(corpus):
    return sorted(corpus.glob("*/*.mp4"))[0]


def test_bad_list_rows_are_rejects_and_the_run_goes_on(corpus, tmp_path):
    video = one_video(corpus)
    rows = [{"path": str(video), "identity": "a"}, [1, 2], {"path": str(video), "identity": "b", "boxes": [[0, "z", 1, 2, 3]]},
            {"path": str(video), "identity": "c", "boxes": [[0, 1, 2]]}, {"identity": "d"}]
    lst = tmp_path / "list.jsonl"
    lst.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    m = pack(str(lst), str(tmp_path / "out"), PackSettings(**CENTER))
    assert m.identities == ["a"] and m.samples > 0
    reasons = {r["input"].rsplit(":", 1)[-1]: r["reason"] for r in m.rejects}
    assert set(reasons) == {"2", "3", "4", "5", "6"}, m.rejects
    assert "must be an object" in reasons["2"] and "numbers" in reasons["3"] and "[frame, x, y, w, h]" in reasons["4"]
    assert "needs `path` and `identity`" in reasons["5"] and "not valid JSON" in reasons["6"]


def test_keys_stay_unique_when_names_differ_only_in_separators(corpus, tmp_path):
    video = one_video(corpus)
    src = tmp_path / "in"
    for ident, name in (("id_1", "x"), ("id", "1_x"), ("a.b", "v"), ("a-b", "v")):
        (src / ident).mkdir(parents=True, exist_ok=True)
        shutil.copy(video, src / ident / f"{name}.mp4")
    out = tmp_path / "out"
    m = pack(str(src), str(out), PackSettings(**CENTER))
    keys = [s.key for info in m.shards for s in shards.read_samples(str(out / info.name))]
    assert len(keys) == m.samples == len(set(keys))  # 4 videos' clips, none merged
    assert len({s.split("_")[-1] for s in keys}) == 4  # the video-id hash at the end of each key


def test_disk_full_stops_the_run_without_rejecting_the_input_and_a_rerun_resumes(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = spill.SpillWriter.frame
    calls = {"n": 0}

    def full(self, jpeg):
        calls["n"] += 1
        if calls["n"] > 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, jpeg)

    monkeypatch.setattr(spill.SpillWriter, "frame", full)
    with pytest.raises(storage.EnvironmentFault, match="No space left"):
        pack(str(corpus), str(out), PackSettings(**CENTER))
    journal = (out / ".pack-work" / "journal.jsonl").read_text()
    assert "No space" not in journal  # nothing was recorded against the input
    monkeypatch.setattr(spill.SpillWriter, "frame", real)
    m = pack(str(corpus), str(out), PackSettings(**CENTER))
    assert m.rejects == [] and m.videos == len(list(corpus.glob("*/*.mp4")))


def _die_on_three(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer or a native crash does
    return x * 10


def test_a_worker_killed_by_one_input_rejects_only_that_input():
    out = list(parallel_map(_die_on_three, range(8), workers=2, window=4, on_crash=lambda x, e: ("died", x)))
    assert out == [0, 10, 20, ("died", 3), 40, 50, 60, 70]  # in order; the others were run again and kept
    with pytest.raises(Exception, match="terminated abruptly"):  # without on_crash the map fails loudly
        list(parallel_map(_die_on_three, range(8), workers=2, window=4))
