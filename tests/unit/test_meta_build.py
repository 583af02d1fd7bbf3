"""The paper presets build on the meta device from the architecture fields in their configs."""

from __future__ import annotations

import torch

from cambrian_train.config.validate import validate_model
from cambrian_train.models import build_model
from cambrian_train.models.summary import parameter_table


def test_cambrian_8b_on_meta_device(compose):
    cfg = compose(["model=cambrian_8b"])
    validate_model(cfg)
    with torch.device("meta"):
        model = build_model(cfg.model, pretrained=False)
    assert all(p.is_meta for p in model.parameters())
    rows = dict(parameter_table(model))
    assert sum(v for k, v in rows.items() if k != "total") == rows["total"]
    assert 8.0e9 < rows["llm"] < 8.1e9  # Llama-3-8B
    assert 4.2e8 < rows["tower siglip (hf_siglip)"] < 4.4e8  # SO400M
    assert 3.0e8 < rows["tower clip (hf_clip)"] < 3.1e8  # ViT-L/14
    assert 1.1e9 < rows["tower dino (hf_dinov2)"] < 1.2e9  # ViT-g/14
    assert rows["connector: SVA layers inside the LLM"] > 0
    assert len(model.connector.vision_sampler_layers) == 10
    assert model.connector.insert_after == list(range(0, 30, 3))
    assert model.towers["convnext"].hidden_size == 384 + 768 + 1536 + 3072


def test_summary_of_a_real_tiny_checkpoint(compose):
    cfg = compose(["model/connector=tiny_sva"])
    model = build_model(cfg.model)
    rows = dict(parameter_table(model))
    assert rows["total"] == sum(p.numel() for p in model.parameters())
    assert {"connector: SVA", "connector: tower projectors", "connector: projector"} <= set(rows)
