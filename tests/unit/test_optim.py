"""Learning-rate schedule, lr scaling and parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from cambrian_train.config.schema import StageConfig
from cambrian_train.train.optim import build_scheduler, lr_factor
from cambrian_train.train.stage import group_lrs, lr_scale


def stage(**kw):
    base = dict(name="s", global_batch_size=32, per_device_batch_size=32, lr=1e-3)
    return StageConfig(**{**base, **kw})


def test_warmup_then_cosine_to_zero():
    total, warmup = 100, 6
    factors = [lr_factor(s, total, warmup, "cosine") for s in range(total)]
    assert factors[:warmup] == pytest.approx([(i + 1) / warmup for i in range(warmup)])
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :]))
    mid = warmup + (total - warmup) // 2
    assert factors[mid] == pytest.approx(0.5, abs=1e-9)
    assert lr_factor(total, total, warmup, "cosine") == pytest.approx(0.0)
    assert lr_factor(50, total, warmup, "constant") == 1.0


def test_scheduler_uses_warmup_ratio():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, stage(warmup_ratio=0.06), total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1 / 6) and lrs[5] == pytest.approx(1.0)
    assert lrs[-1] < 0.01


def test_sqrt_lr_scaling_applies_to_every_group():
    s = stage(
        global_batch_size=128,
        per_device_batch_size=128,
        base_batch_size=512,
        sva_lr=1e-4,
        llm_lr=2e-5,
    )
    assert lr_scale(s) == pytest.approx(0.5)
    assert group_lrs(s, lr_scale(s)) == pytest.approx(
        {"connector": 5e-4, "sva": 5e-5, "llm": 1e-5, "towers": 5e-4}
    )
    assert lr_scale(stage()) == 1.0
    assert math.isclose(lr_scale(stage(base_batch_size=8)), 2.0)
