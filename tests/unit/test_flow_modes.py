"""`bench/flow_modes.py` reads a run's linear flow basis from its newest complete checkpoint."""
import json

import pytest
import torch


def _checkpoint(run, step, states, complete=True):
    """A stage-0 checkpoint folder as `engine.checkpoint.save` lays it out (the full module, meta.json, COMPLETE)."""
    d = run / "checkpoints" / f"step_{step}"
    d.mkdir(parents=True)
    torch.save({"module": states}, d / "mp_rank_00_model_states.pt")
    (d / "meta.json").write_text(json.dumps({"step": step, "config": {"deepspeed": {"zero_optimization": {"stage": 0}}}}))
    if complete:
        (d / "COMPLETE").write_text("")


def test_flow_basis_reads_the_newest_complete_checkpoint_and_names_what_is_missing(tmp_path):
    from bench.flow_modes import flow_basis

    with pytest.raises(SystemExit, match="no checkpoint"):
        flow_basis(tmp_path)
    w5, w9 = torch.randn(8, 3), torch.randn(8, 3).bfloat16()  # a bf16 stage-0 module: read back as fp32
    _checkpoint(tmp_path, 5, {"decoder.basis.weight": w5})
    _checkpoint(tmp_path, 9, {"decoder.basis.weight": w9})
    _checkpoint(tmp_path, 12, {"decoder.basis.weight": torch.zeros(8, 3)}, complete=False)  # half-written: ignored
    step, w = flow_basis(tmp_path)
    assert step == 9 and w.dtype == torch.float32 and torch.equal(w, w9.float())
    other = tmp_path / "other"
    _checkpoint(other, 3, {"encoder.trunk.weight": torch.zeros(2)})
    with pytest.raises(SystemExit, match="flow_grid"):
        flow_basis(other)


def test_flow_modes_refuses_codes_and_basis_from_different_steps_and_bad_top(tmp_path, monkeypatch, capsys):
    import sys

    from bench.flow_modes import main

    _checkpoint(tmp_path, 9, {"decoder.basis.weight": torch.randn(8, 3)})
    torch.save({"format": "aupretrain-encoder/1", "step": 5}, tmp_path / "encoder.pt")  # an older encoder.pt
    monkeypatch.setattr(sys, "argv", ["flow_modes.py", str(tmp_path), "--top", "2"])
    with pytest.raises(SystemExit, match="step 5 but the newest checkpoint from step 9"):
        main()
    monkeypatch.setattr(sys, "argv", ["flow_modes.py", str(tmp_path), "--top", "0"])
    with pytest.raises(SystemExit):
        main()
    assert "--top" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["flow_modes.py", str(tmp_path), "--top", "4"])  # W has 3 directions
    with pytest.raises(SystemExit):
        main()
    assert "has 3 directions" in capsys.readouterr().err
