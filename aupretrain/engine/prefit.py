"""Label-free targets fitted on un-augmented clips before step 1 (`Method.clean_fit_steps`).

A target fitted from the training stream sees the views as the encoder does: rotated, cropped and colour-jittered.
For a target read off a hand-made descriptor that is not invariant to those draws (HOG and rotation), the fit then
spends its directions on the augmentation (docs/benchmarks.md, session 35: the within-clip-share HOG basis read
0.392 mean F1 on test identities fitted on clean frames, 0.326 fitted from the views). As HuBERT fits its first
targets offline on features of the raw input (Hsu et al., "HuBERT", IEEE/ACM TASLP 2021, section II-B), the
engine here reads the same shards once more with every augmentation off
(`aupretrain.data.augment.without_augmentation`: each frame the packed face resized to `data.input_size`, what the
probe's `encode()` sees) for the steps the method asks, and hands every rank's gathered result to `after_step`, as training does; the fitted state is a buffer
of the method, so a resumed run loads it and reads nothing. (`objective.cir.hog_basis_fit=prefit`.)
"""
from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig

from ..data.dataset import build_loader
from .distributed import DistInfo, gather_no_grad

log = logging.getLogger("aupretrain.train")


def fit_on_clean_clips(cfg: DictConfig, engine, d: DistInfo) -> int:
    """Every rank (collective when the method asks): read `engine.module.clean_fit_steps()` optimizer steps of
    batches (`deepspeed.gradient_accumulation_steps` micro-batches each) from a second loader over the training
    shards with augmentation off (`build_loader(..., plain=True)`), and feed each step's `clean_fit_inputs` of
    view 1, gathered from every rank, to the method's `after_step`. Torch's global RNG is left as it was (the
    training stream of a fresh and of a resumed run stays the same). Returns the steps read (0: the method needs
    none). Raises RuntimeError when the method is still unfitted after them."""
    method = engine.module
    steps = method.clean_fit_steps()
    if steps <= 0:
        return 0
    accum = int(cfg.deepspeed.get("gradient_accumulation_steps", 1))
    t0 = time.perf_counter()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        batches = iter(build_loader(cfg, d.rank, d.world, plain=True))
        for _ in range(steps):
            inputs = [method.clean_fit_inputs(next(batches)["view1"].to(engine.device)) for _ in range(accum)]
            method.after_step(gather_no_grad(torch.cat(inputs)))
        del batches
    if method.clean_fit_steps():
        raise RuntimeError(f"{type(method).__name__}: still unfitted after {steps} steps of clean clips")
    log.info("fitted the method's label-free targets on %d steps of un-augmented clips (%.1f s)", steps,
             time.perf_counter() - t0)
    return steps


__all__ = ["fit_on_clean_clips"]
