"""Optimizer components: parameter groups, LR scaling rules, the schedule, LARS and LAMB against their formulas."""
import math

import pytest
import torch
from torch import nn

from aupretrain.config import load_config
from aupretrain.engine.optim import LAMB, LARS, build_optimizer, lr_lambda, param_groups, scaled_lr
from aupretrain.errors import UsageError


def test_no_weight_decay_on_biases_and_norms():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[3].weight)}
    assert {id(p) for p in no_decay["params"]} == {id(m[0].bias), id(m[1].weight), id(m[1].bias), id(m[3].bias)}


@pytest.mark.parametrize("rule,expected", [("none", 1e-3), ("linear", 1e-3 * 1024 / 256),
                                           ("sqrt", 1e-3 * math.sqrt(1024 / 256))])
def test_lr_scaling_rules(rule, expected):
    cfg = load_config([f"optim.lr_scaling={rule}", "optim.lr=1e-3", "optim.reference_batch=256"])
    assert scaled_lr(cfg, 1024) == pytest.approx(expected)
    with pytest.raises(UsageError, match="optim.lr_scaling"):
        scaled_lr(load_config(["optim.lr_scaling=cubic"]), 64)


def test_schedule_warms_up_then_decays_to_the_floor():
    f = lr_lambda(load_config(["train.steps=100", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"]))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5) and f(100) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_lars_step_matches_the_formula_and_excludes_biases():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    opt = LARS(param_groups(lin, 0.01), lr=0.1, momentum=0.9, eta=0.02)
    lin(torch.randn(8, 5)).pow(2).sum().backward()
    gw, gb = lin.weight.grad.clone(), lin.bias.grad.clone()
    opt.step()
    d = gw + 0.01 * w0
    trust = 0.02 * w0.norm() / (d.norm() + 1e-8)
    assert torch.allclose(lin.weight, w0 - 0.1 * trust * d, atol=1e-7)
    assert torch.allclose(lin.bias, b0 - 0.1 * gb, atol=1e-7)  # no decay, no trust ratio


def test_lars_is_refused_on_flat_zero_partitions():
    with pytest.raises(UsageError, match="deepspeed=zero0"):
        build_optimizer(load_config(["optim.name=lars"]), nn.Linear(2, 2), 32)
    assert isinstance(build_optimizer(load_config(["optim.name=lars", "deepspeed=zero0"]), nn.Linear(2, 2), 32), LARS)


def test_lamb_steps_match_the_formula_and_exclude_biases():
    """Two steps of LAMB (You et al. 2020, Algorithm 2) against the formula written out."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    opt = LAMB(param_groups(lin, 0.01), lr=0.1, betas=(0.9, 0.99), eps=1e-6)
    m = {n: torch.zeros_like(p) for n, p in lin.named_parameters()}
    v = {n: torch.zeros_like(p) for n, p in lin.named_parameters()}
    for t in (1, 2):
        opt.zero_grad()
        lin(torch.randn(8, 5)).pow(2).sum().backward()
        before = {n: p.detach().clone() for n, p in lin.named_parameters()}
        grads = {n: p.grad.clone() for n, p in lin.named_parameters()}
        opt.step()
        for n, p in lin.named_parameters():
            m[n] = 0.9 * m[n] + 0.1 * grads[n]
            v[n] = 0.99 * v[n] + 0.01 * grads[n] ** 2
            r = (m[n] / (1 - 0.9 ** t)) / ((v[n] / (1 - 0.99 ** t)).sqrt() + 1e-6)
            if n == "weight":  # decayed and scaled by the trust ratio ||w|| / ||r||
                r = r + 0.01 * before[n]
                r = r * before[n].norm() / r.norm()
            assert torch.allclose(p, before[n] - 0.1 * r, atol=1e-6), (n, t)


def test_lamb_is_built_from_config_on_zero0_only():
    with pytest.raises(UsageError, match="deepspeed=zero0"):
        build_optimizer(load_config(["optim.name=lamb"]), nn.Linear(2, 2), 32)
    assert isinstance(build_optimizer(load_config(["optim.name=lamb", "deepspeed=zero0"]), nn.Linear(2, 2), 32), LAMB)
