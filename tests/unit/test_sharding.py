"""Sharding rule tables: FSDP for every matrix, Megatron-style tensor parallelism of the LLM."""

from __future__ import annotations

import pytest
import torch

from cambrian_train.backends.sharding import (
    FSDP_RULES,
    per_device_numel,
    plan_sharding,
    sharding_rules,
)
from cambrian_train.models import build_model


@pytest.fixture(scope="module")
def cambrian_8b():
    from tests.conftest import compose_config

    cfg = compose_config(["model=cambrian_8b"])
    with torch.device("meta"):
        return build_model(cfg.model, pretrained=False)


def test_tensor_parallel_plan_of_the_8b_llm(cambrian_8b):
    params = list(cambrian_8b.named_parameters())
    plan = plan_sharding(params, sharding_rules(tensor_parallel=True))
    layer = "llm.model.layers.7"
    for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj"):
        assert plan[f"{layer}.{proj}.weight"] == ("tensor", "fsdp")  # column-parallel
    for proj in ("self_attn.o_proj", "mlp.down_proj"):
        assert plan[f"{layer}.{proj}.weight"] == ("fsdp", "tensor")  # row-parallel
    assert plan["llm.model.embed_tokens.weight"] == ("tensor", "fsdp")  # vocab-parallel
    assert plan["llm.lm_head.weight"] == ("tensor", "fsdp")
    assert plan[f"{layer}.input_layernorm.weight"] == (None,)  # vectors replicated
    tower = next(n for n, p in params if n.startswith("towers.") and p.ndim == 2)
    assert plan[tower] == ("fsdp", None)  # towers and connector: FSDP only
    split = [n for n, spec in plan.items() if "tensor" in spec]
    assert len(split) == 7 * 32 + 2 and all(n.startswith("llm.") for n in split)


def test_per_device_share_of_the_llm(cambrian_8b):
    """Hand arithmetic: a [V, D] head over tensor=4 x fsdp=8 holds V/4 x D/8 per device."""
    plan = plan_sharding(cambrian_8b.named_parameters(), sharding_rules(tensor_parallel=True))
    params = [(n, p) for n, p in cambrian_8b.named_parameters() if n.startswith("llm.")]
    head = [(n, p) for n, p in params if n == "llm.lm_head.weight"]
    axes = {"data": 1, "fsdp": 8, "tensor": 4}
    assert per_device_numel(head, plan, axes) == (128256 // 4) * (4096 // 8)
    total = sum(p.numel() for _, p in params)
    vectors = sum(p.numel() for _, p in params if p.ndim == 1)
    share = per_device_numel(params, plan, axes)
    assert share == pytest.approx((total - vectors) / 32 + vectors, rel=1e-3)


def test_a_rule_matching_nothing_is_an_error():
    params = [
        ("towers.clip.proj.weight", torch.empty(4, 4, device="meta")),
        ("towers.clip.proj.bias", torch.empty(4, device="meta")),
    ]
    plan_sharding(params, FSDP_RULES)
    with pytest.raises(ValueError, match="match no parameter.*mesh.tensor=1"):
        plan_sharding(params, sharding_rules(tensor_parallel=True))
