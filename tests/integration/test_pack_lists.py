"""What the packer takes as its inputs: list rows with fields that are only spaces, rows whose default video ids
collide over several folder levels, and links to video files reached twice in a folder tree (field trial ft7,
faults 4, 5 and 9)."""
import json
import logging
import os
import shutil

import numpy as np
from PIL import Image

from aupretrain.cli.pack import main as pack_main
from aupretrain.data import shards
from aupretrain.pack.inputs import discover

ARGS = ["--align", "center", "--clip-len", "4", "--stride", "2", "--size", "32", "--workers", "1"]


def videos_of(out) -> set[str]:
    m = shards.load_manifest(str(out))
    return {s.meta.video for info in m.shards for s in shards.read_samples(str(out / info.name))}


def one_video(corpus):
    return sorted(corpus.glob("*/*.mp4"))[0]


def test_fields_of_only_spaces_are_empty(corpus, tmp_path, caplog):
    """A path or identity of only spaces is rejected like an empty one (it once packed the list's own folder, with
    the images beside the list, as a frame folder, or gave identity ""); `boxes` or `video` of only spaces is
    absent, as an empty field is."""
    video = one_video(corpus)
    lists = tmp_path / "lists"
    lists.mkdir()
    shutil.copy(video, lists / "good.mp4")
    for name in ("a.png", "b.png"):  # images beside the list: the "frame folder" a blank path once resolved to
        Image.fromarray(np.full((48, 48, 3), 128, np.uint8)).save(lists / name)
    lst = lists / "list.csv"
    lst.write_text('path,identity,video,boxes\ngood.mp4,alice, ,  \n"   ",ws,,\ngood.mp4,"  ",,\n\t,\t,,\n')
    caplog.set_level(logging.WARNING)
    assert pack_main([str(lst), str(tmp_path / "out"), *ARGS]) == 0
    m = shards.load_manifest(str(tmp_path / "out"))
    assert videos_of(tmp_path / "out") == {"alice/good"} and m.identities == ["alice"]
    reasons = {r["input"]: r["reason"] for r in m.rejects}
    assert sorted(reasons) == [f"{lst}:{n}" for n in (3, 4, 5)], m.rejects
    for n in (3, 4, 5):
        assert reasons[f"{lst}:{n}"] == f"{lst}:{n}: needs `path` and `identity` (empty here)"
        assert reasons[f"{lst}:{n}"] in caplog.text
    # the same in JSONL; a `video` of spaces is no name: a second path of that default id is told apart, not a duplicate
    jl = tmp_path / "list.jsonl"
    rows = [{"path": " ", "identity": "x"}, {"path": "s1/v.mp4", "identity": " \t"},
            {"path": "s1/v.mp4", "identity": "bob", "boxes": "   ", "video": "  "},
            {"path": "s2/v.mp4", "identity": "bob", "video": " "}]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items, rejects = discover(str(jl))
    assert [r["reason"] for r in rejects] == [f"{jl}:{n}: needs `path` and `identity` (empty here)" for n in (1, 2)]
    assert [(it.video, it.boxes) for it in items] == [("bob/v", None), ("bob/s2/v", None)]


def test_default_ids_that_collide_get_as_many_parent_folders_as_needed(corpus, tmp_path):
    """Three files `sess1/clip.mp4`, `a/sess2/clip.mp4`, `b/sess2/clip.mp4` of one identity are three videos (the
    third was once dropped as a "duplicate video id"); ids of the later paths do not depend on the row order; the
    same path listed twice stays a duplicate."""
    video = one_video(corpus)
    src = tmp_path / "in"
    rels = ["sess1/clip.mp4", "a/sess2/clip.mp4", "b/sess2/clip.mp4"]
    for rel in rels:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(video, src / rel)
    lst = src / "list.csv"
    lst.write_text("path,identity\n" + "".join(f"{r},alice\n" for r in rels) + "a/sess2/clip.mp4,alice\n")
    assert pack_main([str(lst), str(tmp_path / "out"), *ARGS]) == 0
    want = {"alice/clip", "alice/a/sess2/clip", "alice/b/sess2/clip"}
    assert videos_of(tmp_path / "out") == want
    m = shards.load_manifest(str(tmp_path / "out"))
    assert m.videos == 3 and len(m.rejects) == 1, m.rejects
    assert m.rejects[0]["reason"] == (f"{src / 'a/sess2/clip.mp4'}: duplicate video id 'alice/a/sess2/clip' "
                                      f"(also {src / 'a/sess2/clip.mp4'}); skipped")
    # another row order: the first row keeps the short id, the others' ids are the same as before
    lst.write_text("path,identity\n" + "".join(f"{r},alice\n" for r in (rels[0], rels[2], rels[1])))
    assert {it.path: it.video for it in discover(str(lst))[0]} == {
        str(src / r): v for r, v in zip(rels, ["alice/clip", "alice/a/sess2/clip", "alice/b/sess2/clip"])}
    # names that differ only in the extension, deeper paths, and a `video` name taken by another path
    lst.write_text("path,identity,video\nx/v.mp4,bob,\nx/v.mkv,bob,\ny/x/v.mp4,bob,\nx/v.mp4,bob,\n"
                   "z/w.mp4,carol,w\nq/w.mp4,carol,\n")
    items, rejects = discover(str(lst))
    assert [it.video for it in items] == ["bob/v", "bob/in/x/v.mkv", "bob/y/x/v", "carol/w", "carol/q/w"]
    assert [r["reason"].split(": ", 1)[1] for r in rejects] == [f"duplicate video id 'bob/v' (also {src}/x/v.mp4); skipped"]


def test_a_video_file_reached_twice_through_links_is_packed_once(corpus, tmp_path, caplog):
    """A link to a video file that is also reached by its real path (or by another link) is skipped with a
    warning naming both, as a second link to a folder is: the real path wins, else the first in sorted order. A
    dangling link stays a reject."""
    src = sorted(corpus.glob("*/*.mp4"))
    root, outside = tmp_path / "in", tmp_path / "outside"
    for d in (root / "aaa", root / "bbb", root / "zed", outside):
        d.mkdir(parents=True)
    shutil.copy(src[0], root / "zed" / "base.mp4")
    os.symlink(root / "zed" / "base.mp4", root / "aaa" / "link_to_base.mp4")  # sorted before its real path
    shutil.copy(src[1], outside / "far.mp4")
    os.symlink(outside / "far.mp4", root / "bbb" / "far.mp4")
    os.symlink(outside / "far.mp4", root / "aaa" / "far2.mp4")  # two links to one file outside: the first sorted
    os.symlink(tmp_path / "missing.mp4", root / "bbb" / "dangling.mp4")
    os.symlink(tmp_path / "missing.mp4", root / "zed" / "dangling.mp4")
    caplog.set_level(logging.WARNING)
    assert pack_main([str(root), str(tmp_path / "out"), *ARGS]) == 0
    assert videos_of(tmp_path / "out") == {"zed/base", "aaa/far2"}
    m = shards.load_manifest(str(tmp_path / "out"))
    assert m.videos == 2 and m.identities == ["aaa", "zed"]
    assert sorted(r["input"] for r in m.rejects) == [str(root / "bbb/dangling.mp4"), str(root / "zed/dangling.mp4")]
    assert f"{root / 'aaa/link_to_base.mp4'}: a link to a file read already ({root / 'zed/base.mp4'}); skipped" \
        in caplog.text
    assert f"{root / 'bbb/far.mp4'}: a link to a file read already ({root / 'aaa/far2.mp4'}); skipped" in caplog.text
