"""What a stage trains: freezing and per-group learning rates.

Stage 1 (pretrain) trains the connector (and row newline); stage 2 (finetune) also the LLM.
Towers train only when their config says ``trainable``. Parameters of a frozen module get
``requires_grad=False``; every trainable parameter lands in exactly one optimiser group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List

from torch import nn

from cambrian_train.config.schema import StageConfig


@dataclass
class ParamGroup:
    name: str  # connector | sva | llm | towers, with a _no_decay suffix for norms and biases
    params: List[nn.Parameter]
    lr: float
    weight_decay: float


def group_lrs(stage: StageConfig, lr_scale: float = 1.0) -> Dict[str, float]:
    """Learning rate of each parameter group after lr scaling."""
    lrs = {
        "connector": stage.lr,
        "sva": stage.sva_lr if stage.sva_lr is not None else stage.lr,
        "llm": stage.llm_lr if stage.llm_lr is not None else stage.lr,
        "towers": stage.tower_lr if stage.tower_lr is not None else stage.lr,
    }
    return {name: lr * lr_scale for name, lr in lrs.items()}


def lr_scale(stage: StageConfig) -> float:
    """sqrt(global_batch / base_batch) when ``base_batch_size`` is set, else 1."""
    if stage.base_batch_size is None:
        return 1.0
    return math.sqrt(stage.global_batch_size / stage.base_batch_size)


def _trained(model, stage: StageConfig) -> Dict[str, List[nn.Parameter]]:
    """Per group, the parameters the stage trains (towers only when ``trainable``)."""
    trainable_towers = {
        id(p) for tower in model.towers.values() if tower.cfg.trainable for p in tower.parameters()
    }
    trains = {"connector": True, "sva": True, "llm": stage.train_llm, "towers": False}
    return {
        name: [p for p in params if trains[name] or id(p) in trainable_towers]
        for name, params in model.param_groups().items()
    }


def freeze_for_stage(model, stage: StageConfig) -> None:
    """``requires_grad`` on exactly the parameters the stage trains."""
    for p in model.parameters():
        p.requires_grad_(False)
    chosen = [p for params in _trained(model, stage).values() for p in params]
    if not chosen:
        raise ValueError(f"stage {stage.name!r} trains no parameter")
    for p in chosen:
        p.requires_grad_(True)


def stage_param_groups(model, stage: StageConfig) -> List[ParamGroup]:
    """Optimiser groups of the trained parameters, with per-group lr and no decay on vectors.

    Call it on the model the optimiser will update: after a backend has sharded it, its
    parameters are new objects.
    """
    lrs = group_lrs(stage, lr_scale(stage))
    out: List[ParamGroup] = []
    for name, chosen in _trained(model, stage).items():
        decay = [p for p in chosen if p.ndim >= 2]
        no_decay = [p for p in chosen if p.ndim < 2]
        if decay:
            out.append(ParamGroup(name, decay, lrs[name], stage.weight_decay))
        if no_decay:
            out.append(ParamGroup(f"{name}_no_decay", no_decay, lrs[name], 0.0))
    return out


def apply_stage(model, stage: StageConfig) -> List[ParamGroup]:
    """Freeze for ``stage`` and return its optimiser groups (an unsharded model)."""
    freeze_for_stage(model, stage)
    return stage_param_groups(model, stage)


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
