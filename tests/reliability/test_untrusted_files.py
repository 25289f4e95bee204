"""Files from elsewhere that would run code when loaded: an encoder file and a DeepSpeed checkpoint carrying a
pickled payload are refused before anything in them runs (`load_encoder` reads with weights_only=True; checkpoints
pass `engine.checkpoint.vet` before DeepSpeed, which unpickles with weights_only=False, opens them)."""
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import BIN, run_env
from tests.launch import TRAIN, common, launch


class Payload:
    """Unpickling this runs a shell command that leaves a marker file: what a tampered file could carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_encoder_file_with_a_pickled_payload_is_refused(tmp_path, fault):
    from aupretrain.models.encoder import load_encoder

    marker = tmp_path / "pwned"
    torch.save({"format": "aupretrain-encoder/1", "config": {}, "state_dict": {}, "extra": Payload(marker)},
               tmp_path / "evil.pt")
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="evil.pt: refused: loading it would call") as e:
        load_encoder(tmp_path / "evil.pt")
    fault("encoder file with a pickled payload", f"load_encoder refused it ({str(e.value).splitlines()[0][:60]}…); "
          f"payload ran: {marker.exists()}", detect_s=time.monotonic() - t0)
    assert not marker.exists()


@pytest.mark.slow
def test_checkpoint_refuses_pickled_payload_in_resume_and_export(packed, tmp_path, fault):
    run = tmp_path / "runs" / "src"
    launch([sys.executable, TRAIN, *common(packed, tmp_path, **{
        "run.dir": str(run), "train.steps": 2, "train.eval_at_end": "false", "tracking.enabled": "false",
        "objective": "tcl"})], tmp_path)
    ckpt = run / "checkpoints" / "step_2"
    states = ckpt / "mp_rank_00_model_states.pt"
    sd = torch.load(states, weights_only=False)  # our own file: trusted
    marker = tmp_path / "pwned"
    sd["client_state_extra"] = Payload(marker)
    torch.save(sd, states)

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, TRAIN, *common(packed, tmp_path, **{
        "run.dir": str(tmp_path / "runs" / "dst"), "train.steps": 4, "train.resume": str(ckpt),
        "train.eval_at_end": "false", "tracking.enabled": "false", "objective": "tcl"})],
        cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=300)
    took = time.monotonic() - t0
    e = subprocess.run([str(BIN / "aupretrain-export"), str(ckpt), str(tmp_path / "export")], cwd=tmp_path,
                       env=run_env(), capture_output=True, text=True, timeout=300)
    fault("checkpoint with a pickled payload (train.resume=PATH, aupretrain-export)",
          f"resume exit {r.returncode}, export exit {e.returncode}, both naming the file and posix.system; "
          f"payload ran: {marker.exists()}", detect_s=took)
    assert r.returncode == 2 and "mp_rank_00_model_states.pt: refused" in r.stderr and "system" in r.stderr, r.stderr[-2000:]
    assert e.returncode == 2 and "refused" in e.stderr, e.stderr[-2000:]
    assert not marker.exists() and not (tmp_path / "export" / "model.safetensors").exists()
