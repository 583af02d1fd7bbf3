"""Decoder LLMs from ``transformers``: loading and the few handles the VLM needs.

Any HF causal LM whose decoder layers form a ModuleList works; its depth and width are checked
against the config fields that pre-flight validation relied on.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import (
    AttentionInterface,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from cambrian_train.config.schema import LLMConfig
from cambrian_train.models.weights import checkpoint_dir, meta_parameters
from cambrian_train.registry import LLMS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _causal_sdpa(module, query, key, value, attention_mask, **kwargs):
    """HF's SDPA attention with query and key in the value's dtype: under autocast the
    projections come out in bf16, but RoPE's float32 cos/sin promote query and key back to
    float32, and where autocast does not cover SDPA (XLA) the three would disagree."""
    dtype = value.dtype
    return sdpa_attention_forward(
        module, query.to(dtype), key.to(dtype), value, attention_mask, **kwargs
    )


# Registered under a name with no mask function: HF then builds no mask and SDPA runs with
# is_causal (train/step.py's right-padded batches; see causal_attention).
CAUSAL_SDPA = "cambrian_causal_sdpa"
AttentionInterface.register(CAUSAL_SDPA, _causal_sdpa)


@LLMS.register("hf_causal_lm")
def load_causal_lm(
    cfg: LLMConfig, pretrained: bool = True, deferred: bool = False
) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained(cfg.checkpoint)`` with depth/width checks, or,
    with ``pretrained=False``, the same architecture built from ``cfg.architecture``.

    ``deferred=True``: the checkpoint's architecture with every parameter on the meta device
    (models/weights.py); the backend allocates them sharded and loads the checkpoint's
    safetensors into the shards (``checkpoint_dir`` names the files).
    """
    if deferred:
        config = AutoConfig.from_pretrained(checkpoint_dir(cfg.checkpoint))
        with meta_parameters():
            model = AutoModelForCausalLM.from_config(config, **_load_options(cfg))
    elif pretrained:
        model = AutoModelForCausalLM.from_pretrained(cfg.checkpoint, **_load_options(cfg))
    elif not cfg.architecture:
        raise ValueError(
            f"model.llm.architecture is empty: {cfg.checkpoint} cannot be built without its "
            "checkpoint"
        )
    else:
        config = AutoConfig.for_model(**cfg.architecture)
        model = AutoModelForCausalLM.from_config(config, **_load_options(cfg))
    config = model.config
    if config.num_hidden_layers != cfg.num_layers:
        raise ValueError(
            f"model.llm.num_layers={cfg.num_layers} but {cfg.checkpoint} has "
            f"{config.num_hidden_layers} decoder layers"
        )
    if config.hidden_size != cfg.hidden_size:
        raise ValueError(
            f"model.llm.hidden_size={cfg.hidden_size} but {cfg.checkpoint} has width "
            f"{config.hidden_size}"
        )
    decoder_layers(model)  # fails early for models without a layer list
    return model


def _load_options(cfg: LLMConfig) -> dict:
    return {"dtype": DTYPES[cfg.dtype], "attn_implementation": cfg.attn_implementation}


def load_tokenizer(cfg: LLMConfig):
    """The LLM's tokenizer (``cfg.tokenizer`` or the checkpoint directory)."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.checkpoint)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder's layer list (``model.model.layers`` for Llama, Qwen2, Mistral, …)."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__}: decoder layers are not an nn.ModuleList at "
            "get_decoder().layers; this LLM family is not supported"
        )
    return layers


@contextlib.contextmanager
def causal_attention(llm: PreTrainedModel):
    """Within: an SDPA LLM attends purely causally, with no padding mask built.

    For a right-padded batch this gives the same outputs at every real token (no real token
    attends to a later pad), and it avoids HF's mask preparation, which reads the padding mask
    and position ids on the host in every forward — a device sync per micro-batch on XLA and
    CUDA. Other attention implementations are left as they are.
    """
    config = llm.config
    previous = config._attn_implementation
    if previous != "sdpa":
        yield
        return
    config._attn_implementation = CAUSAL_SDPA
    try:
        yield
    finally:
        config._attn_implementation = previous


def plain_linear_head(model: PreTrainedModel) -> nn.Linear:
    """The LLM's output head, checked to be ``logits = hidden @ W.T`` (what the chunked loss
    computes itself); ValueError for families that scale, cap or bias their logits."""
    head = model.get_output_embeddings()
    config = model.config
    extra = [
        name
        for name in ("final_logit_softcapping", "logit_scale", "logits_scaling")
        if getattr(config, name, None) not in (None, 1, 1.0)
    ]
    if not isinstance(head, nn.Linear) or head.bias is not None or extra:
        raise ValueError(
            f"{type(model).__name__}: the output head is not a plain bias-free Linear "
            f"({type(head).__name__}; {extra or 'bias'}); this LLM family is not supported by "
            "the chunked next-token loss"
        )
    return head
