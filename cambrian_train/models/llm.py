"""Decoder LLMs from ``transformers``: loading and the few handles the VLM needs.

Any HF causal LM whose decoder layers form a ModuleList works; its depth and width are checked
against the config fields that pre-flight validation relied on.
"""

from __future__ import annotations

import contextlib
from typing import Optional

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


SEGMENTS_KWARG = "segment_ids"  # packed batches: [B, L] sample number per token, 0 = padding


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] segment ids → [B, 1, L, L] bool: query t sees key s iff s <= t and both belong to
    the same segment (block-diagonal causal; padding, segment 0, sees only padding)."""
    length = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    return (same & causal)[:, None]


def _causal_sdpa(module, query, key, value, attention_mask, **kwargs):
    """HF's SDPA attention, causal, block-diagonal when the forward carries segment ids (a
    packed batch), with query and key in the value's dtype: under autocast the projections come
    out in bf16, but RoPE's float32 cos/sin promote query and key back to float32, and where
    autocast does not cover SDPA (XLA) the three would disagree."""
    segments = kwargs.pop(SEGMENTS_KWARG, None)
    if segments is not None and query.shape[2] > 1:
        attention_mask = segment_mask(segments)  # XLA and the compilers fold the repeats
    dtype = value.dtype
    return sdpa_attention_forward(
        module, query.to(dtype), key.to(dtype), value, attention_mask, **kwargs
    )


# Registered under a name with no mask function: HF then builds no mask and SDPA runs with
# is_causal (train/step.py's right-padded batches; see causal_attention), or with the segment
# mask of a packed batch.
CAUSAL_SDPA = "cambrian_causal_sdpa"
AttentionInterface.register(CAUSAL_SDPA, _causal_sdpa)
# attention functions that read SEGMENTS_KWARG themselves (backends register theirs here)
SEGMENT_AWARE = {CAUSAL_SDPA}


def packed_forward_kwargs(
    llm: PreTrainedModel, position_ids: torch.Tensor, segment_ids: torch.Tensor, dtype
) -> dict:
    """Decoder-forward keyword arguments for a packed batch: per-sample position ids, and the
    segments in the form the LLM's attention takes them — the segment ids themselves for the
    attention functions of SEGMENT_AWARE, HF's own varlen path (from the position ids) for
    flash attention, an explicit 4D mask otherwise (eager: additive)."""
    kwargs = {"position_ids": position_ids}
    impl = llm.config._attn_implementation
    if impl in SEGMENT_AWARE:
        kwargs[SEGMENTS_KWARG] = segment_ids
    elif not impl.startswith("flash_attention"):
        mask = segment_mask(segment_ids)
        if impl == "eager":
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            mask = torch.where(mask, zero, torch.finfo(dtype).min)
        kwargs["attention_mask"] = mask
    return kwargs


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
    if cfg.quantization is not None:
        model = _load_quantized(cfg)
    elif deferred:
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


def _load_quantized(cfg: LLMConfig) -> PreTrainedModel:
    """The frozen base of QLoRA: ``from_pretrained`` with bitsandbytes' 4-bit NormalFloat
    (double-quantised, computing in ``cfg.dtype``) or LLM.int8(), whole on this process's GPU.
    A quantised base is never sharded (cuda_fsdp runs it on one GPU)."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"model.llm.quantization={cfg.quantization} needs a CUDA GPU (bitsandbytes); none "
            "is visible (set model.llm.quantization=null)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RuntimeError(
            f"model.llm.quantization={cfg.quantization} needs bitsandbytes: pip install "
            "'cambrian-train[gpu]'"
        ) from None
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "nf4":
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[cfg.dtype],
        )
    else:
        quant = BitsAndBytesConfig(load_in_8bit=True)
    device = torch.cuda.current_device()
    return AutoModelForCausalLM.from_pretrained(
        cfg.checkpoint, quantization_config=quant, device_map={"": device}, **_load_options(cfg)
    )


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds a bitsandbytes-quantised LLM (anywhere inside)."""
    return any(
        getattr(getattr(m, "config", None), "quantization_config", None) is not None
        for m in model.modules()
        if isinstance(m, PreTrainedModel)
    )


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
def causal_attention(llm: PreTrainedModel, kernel: Optional[str] = None):
    """Within: an SDPA LLM attends causally with no padding mask built, through ``kernel`` (an
    attention function of SEGMENT_AWARE a backend registered, e.g. a TPU flash kernel) or the
    causal SDPA above.

    For a right-padded batch this gives the same outputs at every real token (no real token
    attends to a later pad), and it avoids HF's mask preparation, which reads the padding mask
    and position ids on the host in every forward — a device sync per micro-batch on XLA and
    CUDA. Packed batches pass their segment ids (packed_forward_kwargs). Other attention
    implementations are left as they are.
    """
    config = llm.config
    previous = config._attn_implementation
    if previous != "sdpa":
        yield
        return
    if (kernel or CAUSAL_SDPA) not in SEGMENT_AWARE:
        raise ValueError(f"attention kernel {kernel!r} is not registered as segment-aware")
    config._attn_implementation = kernel or CAUSAL_SDPA
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
