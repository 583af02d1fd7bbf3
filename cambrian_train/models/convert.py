"""Import of official Cambrian-1 checkpoints: parameter names mapped onto this model.

The official ``Cambrian*ForCausalLM`` state dict keeps the LLM under ``model.`` / ``lm_head.``
and the multimodal parts beside it (``model.mm_projector``, ``model.mm_projector_aux_{i}``,
``model.vision_sampler_{g}``, ``model.vision_sampler_layers.{k}``, ``model.vision_query``,
``model.image_newline``). Our connector's submodules carry the same names, so the mapping is by
prefix; vision-tower weights are not taken from it (towers load from their own checkpoints).
Every tensor is checked against the model's names and shapes; nothing is silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List

import torch

_CONNECTOR = re.compile(
    r"^model\.(mm_projector(_aux_\d+)?|vision_sampler_\d+|vision_sampler_layers|vision_query)"
    r"(\.|$)"
)
_TOWERS = ("model.vision_tower", "model.vision_tower_aux_list")


@dataclass
class Conversion:
    state_dict: Dict[str, torch.Tensor] = field(default_factory=dict)
    skipped_towers: List[str] = field(default_factory=list)  # tower weights, loaded elsewhere


def official_name(name: str) -> str | None:
    """Official key → our key (None for vision-tower weights); ValueError for unknown keys."""
    if name.startswith(_TOWERS):
        return None
    if name == "model.image_newline":
        return "image_newline"
    if _CONNECTOR.match(name):
        return "connector." + name[len("model.") :]
    if name.startswith("lm_head."):
        return "llm." + name
    if name.startswith("model."):
        return "llm." + name
    raise ValueError(f"official checkpoint key {name!r} has no counterpart in this model")


def convert_official(state_dict: Dict[str, torch.Tensor]) -> Conversion:
    out = Conversion()
    for name, tensor in state_dict.items():
        ours = official_name(name)
        if ours is None:
            out.skipped_towers.append(name)
        else:
            out.state_dict[ours] = tensor
    return out


def load_official(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> Conversion:
    """Load an official state dict into ``model``; every non-tower parameter must match."""
    conversion = convert_official(state_dict)
    own = model.state_dict()
    unexpected = sorted(set(conversion.state_dict) - set(own))
    expected = {k for k in own if not k.startswith("towers.")}
    missing = sorted(expected - set(conversion.state_dict))
    bad_shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in conversion.state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    if unexpected or missing or bad_shapes:
        raise ValueError(
            "official checkpoint does not fit this model config: "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), missing {missing[:5]} "
            f"({len(missing)}), shape mismatches {bad_shapes[:5]}"
        )
    model.load_state_dict(conversion.state_dict, strict=False)
    return conversion
