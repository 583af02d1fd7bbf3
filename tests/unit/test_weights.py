"""Deferred LLM weights: meta parameters, allocation, and the HF safetensors read into them."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from cambrian_train.backends import build_backend
from cambrian_train.models import build_model
from cambrian_train.models.weights import (
    DeferredWeights,
    has_meta_parameters,
    materialize_meta,
    meta_parameters,
)


def _config(tied: bool = False) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )


def _save_sharded(model, out, files=2):
    """save_pretrained's layout by hand: tensors split over ``files`` files + the index."""
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    names = sorted(state)
    weight_map = {}
    for k in range(files):
        part = names[k::files]
        file = f"model-{k + 1:05d}-of-{files:05d}.safetensors"
        save_file({n: state[n] for n in part}, str(out / file))
        weight_map.update({n: file for n in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    model.config.save_pretrained(out)


def test_meta_parameters_keep_buffers_real():
    config = _config()
    reference = LlamaForCausalLM(config)
    with meta_parameters():
        model = AutoModelForCausalLM.from_config(config)
    assert all(p.is_meta for p in model.parameters())
    buffers = dict(model.named_buffers())
    assert buffers and not any(b.is_meta for b in buffers.values())
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(buffers[name], buffer)  # rotary frequencies computed
    materialize_meta(model, torch.device("cpu"))
    assert not has_meta_parameters(model)


@pytest.mark.parametrize("tied", [False, True])
def test_sharded_index_loads_into_a_deferred_llm(tmp_path, tied):
    config = _config(tied)
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config)
    _save_sharded(reference, tmp_path)
    with meta_parameters():
        llm = AutoModelForCausalLM.from_config(config)
    holder = torch.nn.Module()
    holder.llm = llm
    deferred = DeferredWeights("llm", str(tmp_path))
    materialize_meta(holder, torch.device("cpu"))
    state = deferred.state_to_load(holder)
    if tied:
        assert llm.lm_head.weight is llm.model.embed_tokens.weight
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    dcp.load(state, storage_reader=HuggingFaceStorageReader(str(tmp_path)))
    for name, value in reference.state_dict().items():
        assert torch.equal(llm.state_dict()[name], value), name
    ids = torch.randint(0, 64, (2, 7))
    torch.testing.assert_close(llm(ids).logits, reference(ids).logits)


def test_a_missing_tensor_names_the_checkpoint(tmp_path):
    config = _config()
    reference = LlamaForCausalLM(config)
    state = {k: v for k, v in reference.state_dict().items() if "layers.1.mlp" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    with meta_parameters():
        holder = torch.nn.Module()
        holder.llm = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=r"has no tensor for 3 parameter\(s\) of model.llm"):
        DeferredWeights("llm", str(tmp_path)).state_to_load(holder)
    with pytest.raises(ValueError, match="neither model.safetensors.index.json"):
        DeferredWeights("llm", str(tmp_path / "none")).checkpoint_keys()


@pytest.mark.parametrize("extra_tower", [None, "tiny_dinov2"])
def test_training_build_equals_from_pretrained(compose, tiny_overrides, extra_tower):
    """The deferred build + the cpu backend's load gives the from_pretrained LLM and HF towers
    exactly; the connector (built fresh, seeded) is not deferred. DINOv2 checkpoints name the
    attention ``attention.attention.query`` where transformers 5's model says
    ``attention.q_proj``: the deferred load applies from_pretrained's renamings."""
    extra = [f"+model/vision_tower@model.towers.dino={extra_tower}"] if extra_tower else []
    cfg = compose([*tiny_overrides, *extra])
    full = build_model(cfg.model)
    deferred = build_model(cfg.model, defer_weights=True)
    assert has_meta_parameters(deferred.llm) and has_meta_parameters(deferred.towers)
    assert not has_meta_parameters(deferred.connector)
    towers = ["towers.clip.model"] + (["towers.dino.model"] if extra_tower else [])
    assert [d.prefix for d in deferred.deferred_weights] == ["llm", *towers]
    backend = build_backend(cfg.backend, cfg.mesh)
    deferred = backend.prepare_model(deferred)
    assert not deferred.deferred_weights and not has_meta_parameters(deferred)
    for part in ("llm", "towers"):
        ours = deferred.get_submodule(part).state_dict()
        for name, value in full.get_submodule(part).state_dict().items():
            assert torch.equal(ours[name], value), f"{part}.{name}"
    files = load_file(f"{cfg.model.llm.checkpoint}/model.safetensors")
    assert torch.equal(deferred.llm.lm_head.weight, files["lm_head.weight"].float())
