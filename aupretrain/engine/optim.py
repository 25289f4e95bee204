"""Optimizers and the learning-rate schedule, built from `optim.*`.

- Parameter groups: weight decay on weights with ndim > 1 only; biases and norm scales/shifts (ndim <= 1) get
  none (standard since Goyal et al. 2017 / timm / solo-learn).
- Learning rate: `optim.lr` is given for a reference global batch of `optim.reference_batch` clips and scaled by
  `optim.lr_scaling` to the run's global batch B = data.batch_size x world x accumulation:
  `none` (lr as given), `linear` (lr x B / ref; Goyal et al. 2017, "Accurate, Large Minibatch SGD"), `sqrt`
  (lr x sqrt(B / ref); the usual rule for Adam-type optimizers, Krizhevsky 2014, Hoffer et al. 2017).
- Schedule: linear warmup over `optim.warmup_steps`, then cosine to `lr x optim.min_lr_ratio` at `train.steps`
  (SGDR without restarts, Loshchilov & Hutter 2017).
- `optim.name`: `adamw` (torch.optim.AdamW) or `lars` (SGD + momentum with layer-wise trust ratios, You et al.
  2017, "Large Batch Training of Convolutional Networks"; biases and norms excluded from adaptation and decay, as
  in SimCLR/BYOL/solo-learn), or `lamb` (Adam moments with the same layer-wise trust ratio, You et al. 2020,
  "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", Algorithm 2). LARS and LAMB need
  each parameter as its own tensor, so they are refused under ZeRO stages 1–3, which hand the optimizer flat
  partitions (the trust ratio would be computed over a whole partition).
"""
from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from ..errors import UsageError


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: `decay` (ndim > 1) with `weight_decay`, `no_decay` (biases, norm parameters) with 0."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "group": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "group": "no_decay", "lars_exclude": True}]


def scaled_lr(cfg: DictConfig, global_batch: int) -> float:
    """`optim.lr` scaled from `optim.reference_batch` clips to `global_batch` clips by `optim.lr_scaling`."""
    lr, rule = float(cfg.optim.lr), str(cfg.optim.get("lr_scaling", "none"))
    ref = float(cfg.optim.get("reference_batch", global_batch))
    if rule == "none":
        return lr
    if rule == "linear":
        return lr * global_batch / ref
    if rule == "sqrt":
        return lr * math.sqrt(global_batch / ref)
    raise UsageError(f"optim.lr_scaling={rule!r}: expected none, linear or sqrt")


def lr_lambda(cfg: DictConfig):
    """Multiplier of the base LR at optimizer step `step` (0-based): warmup, then cosine to min_lr_ratio."""
    warm, total, floor = int(cfg.optim.warmup_steps), int(cfg.train.steps), float(cfg.optim.min_lr_ratio)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017): each parameter's update is
    scaled by `eta * ||w|| / ||g + wd * w||`; groups with `lars_exclude` (biases, norms) use plain SGD."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                                  "eps": eps, "lars_exclude": False})

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter with a gradient: d = g + wd * w, scaled by the trust ratio
        `eta * ||w|| / (||d|| + eps)` (1 when either norm is 0; not for `lars_exclude` groups), momentum buffer
        `buf = momentum * buf + d`, then `w <- w - lr * buf`. Returns `closure()`'s loss (None without one)."""
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=g["weight_decay"]) if g["weight_decay"] else p.grad.clone()
                if not g["lars_exclude"]:
                    w, n = torch.norm(p), torch.norm(d)
                    trust = torch.where((w > 0) & (n > 0), g["eta"] * w / (n + g["eps"]), torch.ones_like(w))
                    d.mul_(trust)
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = d.clone()
                else:
                    buf.mul_(g["momentum"]).add_(d)
                p.add_(buf, alpha=-g["lr"])
        return loss


class LAMB(torch.optim.Optimizer):
    """LAMB (You et al. 2020, Algorithm 2, bias-corrected moments): per parameter,
    `r = m_hat / (sqrt(v_hat) + eps) + wd * w`, update `w <- w - lr * (||w|| / ||r||) * r` (trust ratio 1 when
    either norm is 0); groups with `lars_exclude` (biases, norms) take the plain Adam step `w <- w - lr * r`."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-6):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay, "eps": eps,
                                  "lars_exclude": False})

    @torch.no_grad()
    def step(self, closure=None):
        """One LAMB update of every parameter with a gradient (the formula of the class docstring; Adam moments with
        bias correction, step count per parameter). Returns `closure()`'s loss (None without one)."""
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"], st["exp_avg"], st["exp_avg_sq"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                r = (m / (1 - b1 ** st["step"])) / ((v / (1 - b2 ** st["step"])).sqrt() + g["eps"])
                if g["weight_decay"]:
                    r.add_(p, alpha=g["weight_decay"])
                trust = 1.0
                if not g["lars_exclude"]:
                    w, n = torch.norm(p), torch.norm(r)
                    trust = torch.where((w > 0) & (n > 0), w / n, torch.ones_like(w))
                p.add_(r * trust, alpha=-g["lr"])
        return loss


def check_optimizer(cfg: DictConfig) -> None:
    """Refuse (UsageError) an unknown `optim.name`, and LARS / LAMB under ZeRO stage 1–3 (flat partitions: a
    layer-wise trust ratio would span many layers) — without building anything (`train.py --check` calls it)."""
    name = str(cfg.optim.get("name", "adamw"))
    if name not in ("adamw", "lars", "lamb"):
        raise UsageError(f"optim.name={name!r}: expected adamw, lars or lamb")
    if name in ("lars", "lamb") and int(cfg.deepspeed.zero_optimization.stage) != 0:
        raise UsageError(f"optim.name={name} needs deepspeed=zero0: ZeRO stages 1-3 give the optimizer flat "
                         "partitions, so layer-wise trust ratios would span many layers")


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, global_batch: int) -> torch.optim.Optimizer:
    """The optimizer of `optim.name` over `param_groups(model)` at the scaled LR.

    Raises:
        UsageError: an unknown `optim.name`, or LARS / LAMB under ZeRO stage 1–3.
    """
    check_optimizer(cfg)
    name, lr = str(cfg.optim.get("name", "adamw")), scaled_lr(cfg, global_batch)
    groups = param_groups(model, float(cfg.optim.weight_decay))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.optim.betas))
    if name == "lars":
        return LARS(groups, lr=lr, momentum=float(cfg.optim.get("momentum", 0.9)),
                    eta=float(cfg.optim.get("lars_eta", 0.02)))
    if name == "lamb":
        return LAMB(groups, lr=lr, betas=tuple(cfg.optim.betas))
    raise UsageError(f"optim.name={name!r}: expected adamw, lars or lamb")


def apply_settings(optimizer: torch.optim.Optimizer, scheduler, cfg: DictConfig, global_batch: int) -> None:
    """Put `optim.*` of a resumed job into the restored optimizer and LambdaLR (their state dicts keep the old
    values): base LR, weight decay (decay group only), betas/momentum, and the current step's LR."""
    lr, f = scaled_lr(cfg, global_batch), lr_lambda(cfg)
    for g in optimizer.param_groups:
        g["initial_lr"] = lr
        g["weight_decay"] = float(cfg.optim.weight_decay) if g.get("group", "decay") == "decay" else 0.0
        if "betas" in g:
            g["betas"] = tuple(float(b) for b in cfg.optim.betas)
        if "momentum" in g:
            g["momentum"] = float(cfg.optim.get("momentum", 0.9))
        g["lr"] = lr * f(scheduler.last_epoch)
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
