"""Official Cambrian parameter names map onto this model, checked on a synthetic state dict."""

from __future__ import annotations

import pytest
import torch

from cambrian_train.models.convert import load_official, official_name
from tests.unit.test_interleave import build

# official prefix → our prefix, written out by hand (not derived from the converter)
PREFIXES = [
    ("model.vision_sampler_layers.", "connector.vision_sampler_layers."),
    ("model.vision_sampler_0.", "connector.vision_sampler_0."),
    ("model.mm_projector_aux_0.", "connector.mm_projector_aux_0."),
    ("model.mm_projector.", "connector.mm_projector."),
    ("model.vision_query", "connector.vision_query"),
    ("model.image_newline", "image_newline"),
    ("lm_head.", "llm.lm_head."),
    ("model.", "llm.model."),
]


def to_official(ours: str) -> str:
    for official, mine in PREFIXES:
        if ours.startswith(mine):
            return official + ours[len(mine) :]
    raise AssertionError(ours)


def test_synthetic_official_checkpoint_loads_exactly():
    model = build("llama", count=2)
    gen = torch.Generator().manual_seed(5)
    official = {
        to_official(k): torch.randn(v.shape, generator=gen)
        for k, v in model.state_dict().items()
        if not k.startswith("towers.")
    }
    official["model.vision_tower_aux_list.0.vision_tower.embeddings.patch_embedding.weight"] = (
        torch.zeros(1)
    )
    fresh = build("llama", count=2)
    result = load_official(fresh, official)
    assert result.skipped_towers == [
        "model.vision_tower_aux_list.0.vision_tower.embeddings.patch_embedding.weight"
    ]
    state = fresh.state_dict()
    for name, value in official.items():
        ours = official_name(name)
        if ours is not None:
            assert torch.equal(state[ours], value), name
    assert any(k.startswith("model.vision_sampler_layers.1.") for k in official)


def test_mismatches_are_reported():
    model = build("llama", count=2)
    official = {to_official(k): v for k, v in model.state_dict().items() if "towers." not in k}
    smaller = build("llama", count=1)
    with pytest.raises(ValueError, match=r"unexpected \['connector.vision_sampler_layers.1"):
        load_official(smaller, official)
    del official["model.vision_query"]
    with pytest.raises(ValueError, match=r"missing \['connector.vision_query'\]"):
        load_official(model, official)
    with pytest.raises(ValueError, match="'mystery.weight' has no counterpart"):
        official_name("mystery.weight")
