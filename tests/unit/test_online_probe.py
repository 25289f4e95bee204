"""The online probe during training: due every N steps on rank 0 only, scores validation identities, and leaves
torch's global RNG (training's stream) exactly where it was."""
import torch

from aupretrain.config import load_config
from aupretrain.engine.online_probe import OnlineProbe
from aupretrain.models.encoder import AUEncoder


def test_online_probe_scores_validation_frames_and_keeps_the_training_rng(tmp_path):
    cfg = load_config(["model=resnet_small", f"eval.corpus={tmp_path / 'eval'}", "train.online_probe.every=2",
                       "train.online_probe.identities=4", "train.online_probe.frames=8",
                       "train.online_probe.probe_steps=20"])
    assert OnlineProbe(cfg, active=False).data is None  # other ranks hold nothing
    probe = OnlineProbe(cfg, active=True)
    assert (tmp_path / "synthetic_online-validation-4x1x8-s7").is_dir() and len(probe.frames) == 32
    assert not probe.due(1) and probe.due(2) and probe(1, None) is None
    from omegaconf import OmegaConf

    enc = AUEncoder(OmegaConf.to_container(cfg.model, resolve=True), 48).train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    m = probe(2, enc)
    assert torch.equal(torch.rand(3), expected)  # the probe's own seeding did not touch training's stream
    assert enc.training and 0.0 <= m["online/f1_mean"] <= 1.0
    present = [a for a, n in zip(probe.data.aus, probe.data.labels.sum(0)) if n > 0]  # 32 frames: a few AUs
    assert set(m) == {"online/f1_mean", *(f"online/f1/{a}" for a in present)}  # no 0.0 logged for an absent AU


def test_online_probe_beside_a_real_dataset_preset_reads_synthetic_intensities(tmp_path):
    """Review: `eval=bp4d` sets eval.au_threshold null (occurrence-coded) and `eval=disfa` 2 (of 0-5); the online
    probe reads the synthetic validation corpus (0..1) and must use the synthetic threshold whatever eval= says."""
    for preset, root in (("bp4d", "/data/bp4d"), ("disfa", "/data/disfa")):
        cfg = load_config([f"eval={preset}", f"eval.root={root}", "model=resnet_small",
                           f"eval.corpus={tmp_path / 'eval'}", "train.online_probe.every=2",
                           "train.online_probe.identities=4", "train.online_probe.frames=8",
                           "train.online_probe.probe_steps=20"])
        probe = OnlineProbe(cfg, active=True)
        assert probe.cfg_eval.au_threshold == 0.5 and probe.data.labels.sum() > 0, preset
