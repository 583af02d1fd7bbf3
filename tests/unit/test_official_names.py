"""The official Cambrian-1 checkpoints' state-dict names and shapes, derived here from the
original architecture (cambrian-mllm/cambrian: ``vision_sampler.py`` and ``cambrian_arch.py``;
REFERENCE §1), not from our model: ``load_official`` must accept exactly that list for the
8B, 13B and 34B presets (meta device, no weights) and for a tiny config built the same way.

What the original builds (``CambrianMetaModel.initialize_vision_modules``), with W the vision
width (``vision_hidden_size``), D the LLM width, C_t tower t's feature width:
- ``mm_projector_aux_{t}`` = Sequential(Linear(C_t, W), GELU, Linear(W, W), LayerNorm(W));
- ``vision_query`` [G, W]; ``image_newline`` [D];
- ``vision_sampler_{g}`` = VisionTokenSampler(q=W, context=W, kv=[W]*T, sizes, W, depth);
- ``vision_sampler_layers.{k}`` = VisionTokenSampler(q=D, context=W, kv=[W]*T, sizes, W, 1);
- ``mm_projector`` = Sequential(Linear(W·G, D), GELU, Linear(D, D));
- a VisionCrossAttentionLayer(q, context, kv, sizes, W): ``proj_context`` Linear(context, W),
  ``proj_in`` Linear(q + W, W), ``proj_out`` = MLP(W, W, q) (``linear_1``, ``linear_2``, no
  bias), ``norm`` LayerNorm(W), ``cross_attn`` = MultiKVCrossAttention(W, kv, W, 16 heads):
  ``q_proj`` / ``k_proj_{t}`` / ``v_proj_{t}`` = Sequential(LayerNorm, Linear(·, W, bias=False)),
  ``o_proj`` Linear(W, W, bias=False); ``pos_embed_{t}`` [size², W] for window sizes > 1.
"""

from __future__ import annotations

from typing import Dict, Tuple

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from cambrian_train.models import build_model
from cambrian_train.models.convert import load_official

# per preset: LLM width and depth, in-LLM sampler count (the released scripts)
LLMS = {"8b": (4096, 32, 10), "13b": (5120, 40, 10), "34b": (7168, 60, 9)}
# the four towers' feature widths (SigLIP-SO400M, CLIP-L, DINOv2-g, ConvNeXt-XXL 4 stages)
# and grid sides (576, 576, 576, 9216 tokens)
TOWER_WIDTHS, TOWER_SIDES = [1152, 1024, 1536, 384 + 768 + 1536 + 3072], [24, 24, 24, 96]


def linear(name, d_in, d_out, bias=True):
    out = {f"{name}.weight": (d_out, d_in)}
    if bias:
        out[f"{name}.bias"] = (d_out,)
    return out


def layer_norm(name, d):
    return {f"{name}.weight": (d,), f"{name}.bias": (d,)}


def sampler_layer(prefix, q_dim, context_dim, width, window_sides):
    names = {}
    names |= linear(f"{prefix}.proj_context", context_dim, width, bias=False)
    names |= linear(f"{prefix}.proj_in", q_dim + width, width, bias=False)
    names |= linear(f"{prefix}.proj_out.linear_1", width, width, bias=False)
    names |= linear(f"{prefix}.proj_out.linear_2", width, q_dim, bias=False)
    names |= layer_norm(f"{prefix}.norm", width)
    attn = f"{prefix}.cross_attn"
    names |= layer_norm(f"{attn}.q_proj.0", width)
    names |= linear(f"{attn}.q_proj.1", width, width, bias=False)
    for t in range(len(window_sides)):
        for kind in ("k", "v"):
            names |= layer_norm(f"{attn}.{kind}_proj_{t}.0", width)
            names |= linear(f"{attn}.{kind}_proj_{t}.1", width, width, bias=False)
    names |= linear(f"{attn}.o_proj", width, width, bias=False)
    for t, side in enumerate(window_sides):
        if side > 1:
            names[f"{prefix}.pos_embed_{t}"] = (side * side, width)
    return names


def official_multimodal(
    llm_width, num_llm_layers, widths, sides, width=1024, query_side=24, depth=3, token_side=24
) -> Dict[str, Tuple[int, ...]]:
    names: Dict[str, Tuple[int, ...]] = {}
    for t, c in enumerate(widths):
        p = f"model.mm_projector_aux_{t}"
        names |= linear(f"{p}.0", c, width) | linear(f"{p}.2", width, width)
        names |= layer_norm(f"{p}.3", width)
    names["model.vision_query"] = (1, width)
    names["model.image_newline"] = (llm_width,)
    windows = [s // query_side for s in sides]
    for k in range(depth):
        names |= sampler_layer(f"model.vision_sampler_0.layers.{k}", width, width, width, windows)
    windows = [s // token_side for s in sides]
    for k in range(num_llm_layers):
        prefix = f"model.vision_sampler_layers.{k}.layers.0"
        names |= sampler_layer(prefix, llm_width, width, width, windows)
    names |= linear("model.mm_projector.0", width, llm_width)
    names |= linear("model.mm_projector.2", llm_width, llm_width)
    return names


def llm_names(model) -> Dict[str, Tuple[int, ...]]:
    """The LLM's own names in the official checkpoint: the HF causal LM's, built afresh from
    the preset's architecture (not through our model)."""
    config = AutoConfig.for_model(**dict(model.cfg.llm.architecture))
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(config)
    return {k: tuple(v.shape) for k, v in llm.state_dict().items()}


def meta_state(names: Dict[str, Tuple[int, ...]]) -> Dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in names.items()}


def preset(compose, size):
    cfg = compose([f"model=cambrian_{size}"])
    with torch.device("meta"):
        return build_model(cfg.model, pretrained=False)


@pytest.mark.parametrize("size", sorted(LLMS))
def test_import_accepts_exactly_the_official_names_and_shapes(compose, size):
    width, layers, samplers = LLMS[size]
    model = preset(compose, size)
    assert model.llm.config.hidden_size == width and model.llm.config.num_hidden_layers == layers
    official = official_multimodal(width, samplers, TOWER_WIDTHS, TOWER_SIDES)
    official |= llm_names(model)
    official["model.vision_tower_aux_list.0.vision_tower.head.weight"] = (1,)  # towers: skipped
    result = load_official(model, meta_state(official))
    assert result.skipped_towers == ["model.vision_tower_aux_list.0.vision_tower.head.weight"]
    # nothing more and nothing less: one extra or one missing name is refused
    extra = dict(official)
    extra["model.vision_sampler_0.layers.0.cross_attn.o_proj.bias"] = (1024,)
    with pytest.raises(ValueError, match="unexpected"):
        load_official(model, meta_state(extra))
    fewer = dict(official)
    fewer.pop(f"model.vision_sampler_layers.{samplers - 1}.layers.0.proj_context.weight")
    with pytest.raises(ValueError, match="missing"):
        load_official(model, meta_state(fewer))


def test_in_llm_context_width_is_the_vision_width(compose):
    """The in-LLM layers' proj_context maps the connector's context (width 1024), not the
    LLM's hidden states (4096): [1024, 1024] in the official 8B."""
    model = preset(compose, "8b")
    weight = model.connector.vision_sampler_layers[0].layers[0].proj_context.weight
    assert tuple(weight.shape) == (1024, 1024)


def test_tiny_config_built_the_same_way(compose, tiny_overrides):
    cfg = compose([*tiny_overrides, "model/connector=tiny_sva"])
    model = build_model(cfg.model)
    conn = cfg.model.connector
    towers = list(model.towers.values())
    official = official_multimodal(
        model.llm.config.hidden_size,
        conn.insert.count,
        [t.hidden_size for t in towers],
        [int(t.cfg.num_tokens**0.5) for t in towers],
        width=conn.vision_hidden_size,
        query_side=int(conn.query_num_list[0] ** 0.5),
        depth=conn.connector_depth,
        token_side=int(cfg.model.image_token_len**0.5),
    )
    official |= {k: tuple(v.shape) for k, v in model.llm.state_dict().items()}  # HF's names
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) for k, shape in official.items()}
    load_official(model, state)
    assert torch.equal(model.connector.vision_query, state["model.vision_query"])
