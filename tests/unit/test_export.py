"""The end-of-run export of `encoder.pt` (`engine.export.master_method` + `export_encoder`) outside a training job,
in DeepSpeed's 16-bit modes when the final checkpoint is not in the run's folder. (With it there, encoder.pt and the
AU head hold its fp32 master weights: `tests/integration/test_train.py::test_zero_stages[1]` and
`test_torchrun_two_ranks[supervised...]`.)"""
import logging

import torch

from aupretrain.config import load_config
from aupretrain.engine.export import export_encoder, master_method
from aupretrain.models.encoder import AUEncoder, load_encoder
from omegaconf import OmegaConf


class _Module(torch.nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder


class _Bf16Zero1Engine:
    """What `export_encoder` reads of a DeepSpeed engine in bf16 mode under ZeRO-1, on rank 0 of one."""

    def __init__(self, encoder):
        self.module, self.global_rank = _Module(encoder), 0

    def zero_optimization_stage(self):
        return 1

    def bfloat16_enabled(self):
        return True


def test_a_16_bit_run_without_its_final_checkpoint_exports_the_module_weights_with_a_warning(tmp_path, caplog):
    """A run resumed from another run's checkpoint at or past train.steps has no checkpoint of its last step in its
    own folder: encoder.pt gets the 16-bit module's weights cast to fp32 (was: the run failed at its export)."""
    cfg = load_config(["experiment=cpu"])
    enc = AUEncoder(OmegaConf.to_container(cfg.model, resolve=True), 32)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # what a bf16 module holds
    engine = _Bf16Zero1Engine(enc.to(torch.bfloat16))
    with caplog.at_level(logging.WARNING, logger="aupretrain.train"):
        master = master_method(engine, cfg, tmp_path / "checkpoints" / "step_7")
        export_encoder(engine, tmp_path / "encoder.pt", {"step": 7}, master)
    assert master == (None, False)
    assert "fp32 master weights of" in caplog.text and "were not read" in caplog.text and "step_7" in caplog.text
    sd = torch.load(tmp_path / "encoder.pt", weights_only=True)
    assert sd["step"] == 7 and all(v.dtype in (torch.float32, torch.int64) for v in sd["state_dict"].values())
    back = load_encoder(tmp_path / "encoder.pt")
    for (name, p), q in zip(enc.float().named_parameters(), back.parameters()):
        assert torch.equal(p, q), name
