"""How a packing run meets other runs, signals and the settings it is given (field trial 7): a re-pack that packs
nothing leaves the earlier dataset whole; SIGTERM stops the packer like Ctrl-C and no worker outlives it (SIGKILL
neither); a second packer on one output is refused; an output inside the input, an output that cannot be made and
detector settings that can never be met are one line before any video is read; a variable-frame-rate video's clips
are evenly spaced in time."""
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np
import psutil
import pytest

from aupretrain.cli.pack import main as pack_main
from aupretrain.data import shards

PACK = [sys.executable, "-m", "aupretrain.cli.pack"]
CENTER = ["--align", "center", "--clip-len", "4", "--stride", "1", "--size", "32", "--workers", "1"]


def _one_error(capsys, code, rc, *said):
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("aupretrain-pack:")]
    assert rc == code and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert all(s in lines[0] for s in said), lines[0]
    return lines[0]


def test_a_repack_that_packs_nothing_leaves_the_earlier_dataset_whole(corpus, tmp_path, capsys):
    """Every input rejected (clips longer than the videos) used to delete the good dataset's manifest first; the
    original command was then refused over its own shards."""
    out = tmp_path / "out"
    assert pack_main([str(corpus), str(out), *CENTER]) == 0
    before = shards.load_manifest(out)
    capsys.readouterr()
    rc = pack_main([str(corpus), str(out), *CENTER, "--clip-len", "500"])
    _one_error(capsys, 2, rc, "nothing could be packed")
    after = shards.load_manifest(out)
    assert after.samples == before.samples and [i.sha256 for i in after.shards] == [i.sha256 for i in before.shards]
    assert pack_main([str(corpus), str(out), *CENTER]) == 0  # the original command still works


def test_settings_that_can_never_be_met_are_one_line(tmp_path, capsys):
    for override, said in (("pack.thresholds=[0.6,0.7]", "must be a list of 3 numbers"),
                           ("pack.min_face_prob=1.5", "pack.min_face_prob=1.5: must be a number >= 0 and <= 1"),
                           ("pack.template=[[0.1,0.2]]", "must be 5 points [x, y]"),
                           ("pack.link_iou=2", "pack.link_iou=2"), ("pack.min_face_px=-1", "pack.min_face_px=-1")):
        rc = pack_main([str(tmp_path / "in"), str(tmp_path / "out"), "--", override])
        _one_error(capsys, 2, rc, said)


def test_an_output_inside_the_input_or_one_that_cannot_be_made_is_refused(corpus, tmp_path, capsys):
    rc = pack_main([str(corpus), str(corpus / "packed"), *CENTER])
    _one_error(capsys, 2, rc, f"OUTPUT {corpus / 'packed'} is inside INPUT", "give an output folder outside it")
    rc = pack_main([str(corpus), str(corpus), *CENTER])
    _one_error(capsys, 2, rc, f"OUTPUT {corpus} is INPUT")
    assert not (corpus / "packed").exists() and not (corpus / ".pack-work").exists()
    foreign = tmp_path / "foreign"  # refused over someone's shard files: no work folder is left behind
    foreign.mkdir()
    (foreign / "shard-000000.tar").write_bytes(b"theirs")
    rc = pack_main([str(corpus), str(foreign), *CENTER])
    _one_error(capsys, 2, rc, "holds shard files that no manifest.json or pack journal there accounts for")
    assert sorted(p.name for p in foreign.iterdir()) == ["shard-000000.tar"]
    rc = pack_main([str(corpus), "/proc/aupretrain-out", *CENTER])
    _one_error(capsys, 2, rc, "OUTPUT /proc/aupretrain-out: the folder cannot be made")


def _workers(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _gone(procs: list[psutil.Process], within: float) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=within)
    return not alive


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_worker_outlives_the_packer_and_sigterm_stops_it_like_ctrl_c(astronaut_mp4, tmp_path, sig):
    """SIGTERM (a scheduler's preemption) or SIGKILL (the OOM killer) to the packer alone left its two workers
    running as orphans for good; SIGTERM also ended it without a word."""
    root = tmp_path / "in"
    for k in range(8):
        (root / f"p{k}").mkdir(parents=True)
        shutil.copy(astronaut_mp4[0], root / f"p{k}" / "a.mp4")
    out = tmp_path / "out"
    args = [str(root), str(out), "--workers", "2", "--clip-len", "4", "--stride", "2", "--size", "48"]
    first = subprocess.Popen([*PACK, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(_workers(first.pid)) < 2 and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        workers = _workers(first.pid)
        assert len(workers) >= 2 and first.poll() is None, first.stderr.read() if first.poll() is not None else ""
        os.kill(first.pid, sig)  # the packer alone, not its process group
        rc = first.wait(60)
        assert _gone(workers, 10), [w.pid for w in workers if w.is_running()]
        err = first.stderr.read()
        if sig == signal.SIGTERM:
            assert rc == 143 and "aupretrain-pack: stopped (SIGTERM); run the same command again to resume" in err, err
        else:
            assert rc == -signal.SIGKILL
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    done = subprocess.run([*PACK, *args], capture_output=True, text=True, timeout=600)  # resumes, then finishes
    assert done.returncode == 0, done.stderr[-2000:]
    assert shards.load_manifest(out).videos == 8


def test_a_variable_frame_rate_videos_clips_are_evenly_spaced_in_time(tmp_path):
    """Without --fps, clips were cut by frame index: frames 40 to 160 ms apart inside a clip labelled 25 fps."""
    from aupretrain.synth import astronaut

    video, _ = astronaut.render(60, 160, 120, degrees=1.0, zoom=0.02, pan=0.01)
    gaps = ([1] * 8 + [4] * 8) * 4  # in 1/50 s: stretches of 20 and of 80 ms between frames
    path = tmp_path / "in" / "p" / "vfr.mkv"
    path.parent.mkdir(parents=True)
    times, t = [], 0
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 160, 120, "yuv420p"
        st.codec_context.time_base = st.time_base = Fraction(1, 1000)
        for frame, gap in zip(video, gaps):
            f = av.VideoFrame.from_ndarray(frame, format="rgb24")
            f.pts, f.time_base = t * 20, st.time_base
            times.append(t / 50)
            c.mux(st.encode(f))
            t += gap
        c.mux(st.encode())
    decoded = [f.time for f in av.open(str(path)).decode(video=0)]
    assert np.allclose(decoded, times[:len(decoded)])
    assert pack_main([str(path.parent.parent), str(tmp_path / "out"), *CENTER, "--stride", "2"]) == 0
    samples = [s for info in shards.load_manifest(tmp_path / "out").shards
               for s in shards.read_samples(str(tmp_path / "out" / info.name))]
    fps = samples[0].meta.fps
    assert 10 < fps < 40
    for s in samples:  # each clip's frames on a grid 2 / fps apart, give or take half the widest source gap
        t = np.array([decoded[i] for i in s.meta.frames])
        grid = (round(t[0] * fps) + 2 * np.arange(len(t))) / fps
        assert np.all(np.abs(t - grid) <= 0.041), (s.meta.frames, t, grid)


def test_a_second_packer_on_an_output_being_written_is_refused(corpus, tmp_path, capsys):
    """Two packers on one output: the second resumed the live one's journal, both appended to it, and the second
    died on a spill file the first had renamed. The work folder's lock, held by a live process, refuses it."""
    out = tmp_path / "out"
    (out / ".pack-work").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from aupretrain import locks; assert locks.try_lock(Path(sys.argv[1]), 'x') is None; "
                               "print('held', flush=True); time.sleep(120)", str(out / ".pack-work" / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = pack_main([str(corpus), str(out), *CENTER])
        line = _one_error(capsys, 1, rc, f"{out}: another aupretrain-pack is writing it (pid {holder.pid} on host")
        assert "run the same command again" not in line, line
        assert not (out / "manifest.json").exists() and not list(out.glob("shard-*"))
    finally:
        holder.kill()
        holder.wait()
    assert pack_main([str(corpus), str(out), *CENTER]) == 0  # the holder gone, the lock is free
