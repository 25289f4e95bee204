"""`bench/quality.py`'s ablation tables: every variant is a configuration the entry point accepts, and removes
what its name says from the preset it ablates."""
from __future__ import annotations

import pytest

from aupretrain.config import load_config
from aupretrain.settings import validate


@pytest.mark.parametrize("preset", ["clp", "clp_hog_basis"])
def test_every_ablation_is_a_valid_config_that_changes_its_preset(preset):
    from bench.quality import ABLATIONS

    base = load_config(["experiment=cpu", f"objective={preset}"])
    validate(base)
    for name, overrides in ABLATIONS[preset].items():
        method = next((o.split("=", 1)[1] for o in overrides if o.startswith("objective=")), preset)
        rest = [o for o in overrides if not o.startswith("objective=")]
        cfg = load_config(["experiment=cpu", f"objective={method}", *rest])
        validate(cfg)
        assert cfg.objective != base.objective, name


def test_the_basis_term_alone_keeps_only_the_basis_term():
    """The "HOG-basis term alone" row: every other weighted term of clp_hog_basis is 0, the basis term is not."""
    from bench.quality import ABLATIONS

    cfg = load_config(["experiment=cpu", "objective=clp_hog_basis",
                       *ABLATIONS["clp_hog_basis"]["HOG-basis term alone"]]).objective
    assert cfg.cir.hog_basis_weight > 0
    assert cfg.tcl_weight == cfg.rank_weight == 0
    assert cfg.cir.self_weight == cfg.cir.cycle_weight == cfg.cir.au_weight == cfg.cir.id_weight == 0
    assert cfg.cir.hog_weight == 0


def test_identities_renders_the_protocols_corpus_with_that_many_identities_in_folders_of_its_own():
    """`--identities N`: only the identity count and the folders change, for a protocol that names a count and one
    that does not; a count below 1 is refused."""
    from bench.quality import PROTOCOLS, with_identities

    still = with_identities(PROTOCOLS["still-head"], 3200)
    flags = still["synth"]
    assert flags[flags.index("--identities") + 1] == "3200" and flags.count("--identities") == 1
    assert flags[flags.index("--"):] == PROTOCOLS["still-head"]["synth"][PROTOCOLS["still-head"]["synth"].index("--"):]
    assert still["synth_dir"] == PROTOCOLS["still-head"]["synth_dir"] + "-3200ids"
    assert still["shards"] == PROTOCOLS["still-head"]["shards"] + "-3200ids"
    assert still["pack"] == PROTOCOLS["still-head"]["pack"] and still["train"] == PROTOCOLS["still-head"]["train"]
    assert "3200" not in PROTOCOLS["still-head"]["synth"]  # the table itself is untouched
    quick = with_identities(PROTOCOLS["quickstart"], 50)
    assert quick["synth"] == ["--identities", "50"] and quick["synth_dir"] == "data/synthetic-motion-50ids"
    with pytest.raises(SystemExit, match="--identities 0"):
        with_identities(PROTOCOLS["quickstart"], 0)


def test_the_bench_refuses_pretraining_identities_that_reach_the_evaluation_ones():
    """The identity check reads the protocol's own identity count: 3,200 pass, 100,001 reach the validation set."""
    from bench.quality import DEVICE_PRESETS, PROTOCOLS, checked_config, with_identities

    protocol = PROTOCOLS["still-head"]
    preset = [*DEVICE_PRESETS["cpu"], *protocol["train"]]
    assert checked_config(protocol, preset, []).synth.identities == 800
    assert checked_config(with_identities(protocol, 3200), preset, []).synth.identities == 3200
    with pytest.raises(ValueError, match="identity sets overlap: pretraining 0..100000 and validation"):
        checked_config(with_identities(protocol, 100001), preset, [])


def test_the_readme_job_trains_on_the_still_head_protocols_corpus_and_clips():
    """experiment=quickstart and `--protocol still-head` state the same corpus, clips and CLP view geometry twice (the
    job through the config tree, the bench through CLI flags): they must not drift apart, or the job's figures stop
    being the protocol's."""
    from bench.quality import PROTOCOLS, synth_flags

    job = load_config(["experiment=quickstart"])
    still = PROTOCOLS["still-head"]
    flags, overrides = synth_flags(still)
    assert dict(zip(flags[::2], flags[1::2])) == {"--identities": str(job.synth.identities),
                                                  "--videos-per-identity": str(job.synth.videos_per_identity),
                                                  "--frames": str(job.synth.frames)}
    assert overrides == ["--", f"synth.head_motion={job.synth.head_motion:g}"]
    pack = still["pack"]
    assert pack[pack.index("--clip-len") + 1] == str(job.pack.clip_len)
    assert pack[pack.index("--stride") + 1] == str(job.pack.stride)
    assert pack[pack.index("--clip-step") + 1] == str(job.pack.clip_step)
    assert still["method"]["clp_hog_basis"] == ["data.augment.shared_geometry=true"]  # the job's objective
    assert job.data.augment.shared_geometry


def test_the_80px_protocol_is_the_still_head_control_read_from_80px_frames_on_cpu_only():
    """`--protocol still-head-80`: the still-head corpus, shards, clips and budget; every run reads 80-px frames and
    the CLP objectives' HOG cells scale with the face (10 px); each method's config is one the entry point accepts;
    `--device cuda` (112 px) is refused in one line before anything runs."""
    import subprocess
    import sys
    from pathlib import Path

    from bench.quality import CLP_PRESETS, DEVICE_PRESETS, PROTOCOLS, checked_config

    still, p80 = PROTOCOLS["still-head"], PROTOCOLS["still-head-80"]
    for key in ("synth", "pack", "synth_dir", "shards"):
        assert p80[key] == still[key], key
    preset = [*DEVICE_PRESETS["cpu"], *p80["train"]]
    assert checked_config(p80, preset, []).train.steps == checked_config(still, [*DEVICE_PRESETS["cpu"],
                                                                                  *still["train"]], []).train.steps
    for method in ("simclr", "supervised", "clp", *CLP_PRESETS):
        cfg = load_config([*preset, f"objective={method}", *p80["method"].get(method, [])])
        validate(cfg)
        assert cfg.data.input_size == 80, method
        if "cir" in cfg.objective:
            assert cfg.objective.cir.hog_cell == 10, method
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "bench" / "quality.py"), "--protocol", "still-head-80", "--device",
                        "cuda", "--work", "/nonexistent/never-made"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--protocol still-head-80 is measured on cpu only" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
