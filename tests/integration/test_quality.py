"""Learnability: the encoder trained with the supervised objective on a tiny synthetic set transfers to new
identities clearly above the random-init floor (a regression test for the quality issue: the supervised bound
once scored below random init)."""
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow


def test_supervised_objective_beats_the_random_init_floor_on_new_identities(tmp_path):
    from aupretrain.config import load_config
    from aupretrain.synth.corpus import write_corpus
    from aupretrain.eval.baselines import always_positive
    from aupretrain.eval.datasets import load_synthetic
    from aupretrain.eval.probe import per_au_f1
    from aupretrain.eval.report import evaluate_codes
    from aupretrain.methods import Method, SupervisedMethod
    from aupretrain.objectives import supervised_loss
    from bench.supervised_diag import augment

    # many identities with few frames (the corpus shape that transfers); evaluation identities never seen
    write_corpus(tmp_path / "train", identities=600, videos_per_identity=1, frames=8, seed=5, workers=2)
    write_corpus(tmp_path / "eval", identities=48, videos_per_identity=1, frames=40, seed=6, workers=2,
                 first_identity=300000)
    train, ev = load_synthetic(tmp_path / "train"), load_synthetic(tmp_path / "eval")
    cfg = load_config(["model=resnet_small", "model.norm=batch", "eval.folds=4", "eval.probe.steps=300", "eval.identity_probe=false"])
    mc = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    model = SupervisedMethod(mc, 64, au_classes=train.labels.shape[1])
    random_init = Method(mc, 64).encoder.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps, batch = 400, 32  # BatchNorm (the quickstart's norm), 32 frames a step: half the time of 64 with GroupNorm
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.1)
    x_all, y_all = torch.from_numpy(train.frames), torch.from_numpy(train.labels)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x_all), (batch,), generator=g)
        # random similarity warp and brightness (bench/supervised_diag.py): the head pose is not a shortcut
        x = augment(x_all[idx].permute(0, 3, 1, 2).float(), 64, (0.7, 1.0), 0.1, 15.0, 0.4)
        x = (x - model.encoder.mean) / model.encoder.std
        logits = model(x[:, None])["au_logits"][:, 0]
        loss = supervised_loss(logits, y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    frames = torch.from_numpy(ev.frames)

    def probe(codes):  # the probe's mean F1 over three fold assignments and seeds: one fit on 36 identities is noisy
        return float(np.mean([evaluate_codes(codes, ev, cfg.eval, seed=k)["f1_mean"] for k in range(3)]))

    trained = probe(model.encoder.encode(frames).numpy())
    floor = probe(random_init.encode(frames).numpy())
    trivial = always_positive(ev)["f1_mean"]
    with torch.no_grad():  # the objective's own classifier, thresholded at 0.5
        direct = per_au_f1(ev.labels, torch.sigmoid(model.classifier(model.encoder.encode(frames))).numpy()).mean()
    # measured (48 evaluation identities, probe averaged over 3 fold assignments): probe 0.160, random-init floor
    # 0.103, always-positive 0.158, classifier 0.231 (GroupNorm and 64 frames a step, twice the time: probe 0.151 /
    # 0.139, floor 0.094 / 0.095, classifier 0.237 / 0.256 in two runs; CPU training is not bit-reproducible run to
    # run); with 24 identities and one probe fit the probe moved by 0.06 between runs.
    print(f"probe {trained:.3f} floor {floor:.3f} always-positive {trivial:.3f} classifier {direct:.3f}")
    assert trained > floor + 0.025, (trained, floor)
    assert direct > trivial + 0.04, (direct, trivial)
