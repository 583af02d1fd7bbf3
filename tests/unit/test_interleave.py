"""SVA layers inside the LLM, on two HF families (Llama and Qwen2)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from cambrian_train.batch import Batch
from cambrian_train.config.schema import (
    ConnectorConfig,
    InsertConfig,
    LLMConfig,
    ModelConfig,
    VisionTowerConfig,
)
from cambrian_train.models import build_model
from cambrian_train.tiny import ensure_asset

SIDE = 4  # image_token_len 16, newline slots → 4 x 5 = 20 positions per image


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2")
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    return str(path)


def build(family, count, qwen2_dir=None):
    if family == "llama":
        llm = LLMConfig(
            checkpoint=ensure_asset("llama"), template="llama3", num_layers=4, hidden_size=128
        )
    else:
        llm = LLMConfig(checkpoint=qwen2_dir, template="chatml", num_layers=4, hidden_size=64)
    tower = VisionTowerConfig(
        source="hf_clip", checkpoint=ensure_asset("clip"), image_size=64, num_tokens=64
    )
    connector = ConnectorConfig(
        name="sva",
        vision_hidden_size=32,
        num_heads=4,
        query_num_list=[16],
        connector_depth=1,
        insert=InsertConfig(start=0, stride=2, count=count),
    )
    torch.manual_seed(0)
    cfg = ModelConfig(llm=llm, towers={"clip": tower}, connector=connector, image_token_len=16)
    return build_model(cfg).eval()


def make_batch(seq_len=60, vocab=300):
    """Row 0: two images (at 3 and 30); row 1: text only; right padding on row 1."""
    gen = torch.Generator().manual_seed(0)
    b, i, q = 2, 2, SIDE * (SIDE + 1)
    ids = torch.randint(10, vocab, (b, seq_len), generator=gen)
    positions = torch.zeros(b, i, q, dtype=torch.long)
    positions[0, 0] = torch.arange(3, 3 + q)
    positions[0, 1] = torch.arange(30, 30 + q)
    mask = torch.tensor([[True, True], [False, False]])
    attention = torch.ones(b, seq_len, dtype=torch.long)
    attention[1, 50:] = 0
    pixels = {"clip": torch.randn(b, i, 3, 64, 64, generator=gen)}
    boxes = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(b, i, 1)
    labels = ids.clone()
    return Batch(ids, labels, attention, positions, mask, pixels, boxes)


def plain_logits(model, batch):
    embeds, _ = model.embed(batch)
    plain = AutoModelForCausalLM.from_pretrained(model.cfg.llm.checkpoint).eval()
    return plain(inputs_embeds=embeds, attention_mask=batch.attention_mask).logits


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_count_zero_equals_plain_hf_model(family, qwen2_dir):
    model = build(family, count=0, qwen2_dir=qwen2_dir)
    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(model.logits(batch), plain_logits(model, batch))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_inserted_layers_change_vision_positions_only(family, qwen2_dir):
    model = build(family, count=2, qwen2_dir=qwen2_dir)
    assert model.connector.insert_after == [0, 2]
    batch = make_batch()
    with torch.no_grad():
        ours, plain = model.logits(batch), plain_logits(model, batch)
    # causal: nothing before the first vision token can see the SVA's changes
    torch.testing.assert_close(ours[0, :3], plain[0, :3])
    assert not torch.allclose(ours[0, 3:], plain[0, 3:])
    # the text-only row has no vision positions: untouched everywhere
    torch.testing.assert_close(ours[1], plain[1])
    # an SVA layer whose output projection is zero hands the queries back unchanged
    for sampler in model.connector.vision_sampler_layers:
        for layer in sampler.layers:
            torch.nn.init.zeros_(layer.proj_out.linear_2.weight)
    with torch.no_grad():
        torch.testing.assert_close(model.logits(batch), plain)


def test_gradients_reach_in_llm_samplers_and_no_state_is_kept():
    model = build("llama", count=2).train()
    batch = make_batch(vocab=500)
    loss = model(batch)
    loss.backward()
    for sampler in model.connector.vision_sampler_layers:
        grads = [p.grad for p in sampler.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # without a vision context (plain LLM call) the hooks do nothing
    embeds = model.llm.get_input_embeddings()(batch.input_ids)
    with torch.no_grad():
        a = model.llm(inputs_embeds=embeds).logits
        b = model.llm(inputs_embeds=embeds).logits
    torch.testing.assert_close(a, b)
    assert not any(hasattr(m, "vision_context") for m in model.modules())
