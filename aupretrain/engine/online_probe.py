"""Online AU probe: a cheap signal during pretraining that the AU code is learning (or not).

Every `train.online_probe.every` optimizer steps, rank 0 puts the encoder in eval mode, encodes a small fixed
set of labelled frames of the synthetic *validation* identities (never the test identities: a user may stop or
tune a run on this number), fits the linear AU probe with subject-exclusive folds (`eval.probe`, fewer steps),
and returns `online/f1_mean` (and per-AU `online/f1/<AU>`) for the tracker. Off the gradient path: no_grad,
eval mode, the training mode restored after. The other ranks go on and wait at the next collective.

Cost at the CPU quickstart preset (12 identities x 40 frames, 64 px, probe 200 steps x 2 folds): a few
seconds per call. Not under ZeRO-3 (the encoder's weights are partitioned across ranks): refused there with
a warning, training goes on.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class OnlineProbe:
    """Callable once per step: `probe(step, encoder)` -> metrics dict at due steps, else None.

    Args:
        cfg: the composed config (`train.online_probe.*`, `eval.*` for the validation split and the probe).
        active: True on rank 0.
    Raises (at construction, active rank only):
        ValueError: the validation identities overlap pretraining or test (`check_identity_sets`).
    """

    def __init__(self, cfg: DictConfig, active: bool):
        o = cfg.train.get("online_probe") or {}
        self.every = int(o.get("every", 0) or 0)
        self.data = None
        if not active or self.every <= 0:
            return
        if int(cfg.deepspeed.zero_optimization.stage) == 3:
            log.warning("train.online_probe: not under ZeRO-3 (partitioned weights); no online probe this run")
            return
        from ..eval.datasets import check_identity_sets, ensure_synthetic, load_synthetic

        c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        c.eval.split = "validation"  # never the test identities
        c.eval.identities, c.eval.videos_per_identity, c.eval.frames = int(o.identities), 1, int(o.frames)
        c.eval.folds, c.eval.probe.steps, c.eval.identity_probe = 2, int(o.probe_steps), False
        c.eval.dataset, c.eval.select = "synthetic", "none"
        if str(cfg.eval.get("dataset", "synthetic")) != "synthetic":  # eval=bp4d|gft set null, eval=disfa 2 (0-5):
            from ..config import config_dir  # the probe reads synthetic intensities (0..1) with synthetic's value

            c.eval.au_threshold = OmegaConf.load(config_dir() / "eval" / "synthetic.yaml").au_threshold
        c.eval.corpus = str(Path(str(OmegaConf.to_container(cfg.eval, resolve=True)["corpus"])).parent /
                            f"synthetic_online-validation-{int(o.identities)}x1x{int(o.frames)}-s{int(c.eval.seed)}")
        check_identity_sets(c)
        self.cfg_eval = c.eval
        self.data = load_synthetic(ensure_synthetic(c.eval), float(c.eval.au_threshold), 1)
        self.frames = torch.from_numpy(self.data.frames)
        log.info("online AU probe every %d steps on %d validation frames (%d identities)", self.every,
                 len(self.frames), len(np.unique(self.data.identity)))

    def due(self, step: int) -> bool:
        """Whether the probe is active and `step` is a multiple of `train.online_probe.every`."""
        return self.data is not None and step % self.every == 0

    def __call__(self, step: int, encoder: torch.nn.Module) -> dict[str, float] | None:
        if not self.due(step):
            return None
        from ..eval.report import evaluate_codes

        was = encoder.training
        encoder.eval()
        try:
            codes = encoder.encode(self.frames).float().numpy()
        finally:
            encoder.train(was)
        with torch.random.fork_rng(devices=[]):  # the probe seeds torch's global RNG: training's stream stays as it was
            r = evaluate_codes(codes, self.data, self.cfg_eval, seed=0)
        log.info("step %d: online AU probe (validation identities) mean F1 %.3f", step, r["f1_mean"])
        scored = set(r.get("aus_evaluated", r["f1"]))  # an AU no frame has: no metric, not a measured 0
        return {"online/f1_mean": r["f1_mean"], **{f"online/f1/{a}": v for a, v in r["f1"].items() if a in scored}}
