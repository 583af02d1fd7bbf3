"""AdamW (train/adamw.py) over the stage's parameter groups and the warmup + cosine schedule."""

from __future__ import annotations

import math
from typing import List

import torch

from cambrian_train.config.schema import StageConfig
from cambrian_train.train.adamw import MaskedAdamW
from cambrian_train.train.stage import ParamGroup


def build_optimizer(groups: List[ParamGroup], stage: StageConfig) -> MaskedAdamW:
    # Tensor learning rates: the schedule writes into them in place, so a compiled (XLA) graph
    # takes the lr as data and never recompiles when it changes.
    return MaskedAdamW(
        [
            {
                "params": g.params,
                "lr": torch.tensor(g.lr),
                "weight_decay": g.weight_decay,
                "name": g.name,
            }
            for g in groups
        ],
        betas=tuple(stage.betas),
        eps=1e-8,
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): linear warmup, then decay."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, stage: StageConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = math.ceil(stage.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, stage.lr_schedule)
    )
