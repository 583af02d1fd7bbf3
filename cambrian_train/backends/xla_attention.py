"""Training attention on TPU: torch_xla's Pallas flash-attention kernel, packing-aware.

Registered (``register_flash_attention``) as an HF attention function and as segment-aware
(models/llm.py), so within ``causal_attention`` the LLM's SDPA layers call it: causal, and
for packed batches restricted to each sample through the kernel's segment ids (the batch's
``segment_ids``, padding = segment 0). The kernel is told how q/k/v are sharded over the SPMD
mesh (batch over data × fsdp, heads over tensor), so it runs per shard without regathering.

The Pallas kernel exists only on TPU; ``backend.attention=flash`` elsewhere is rejected before
start-up (config/validate.py) and ``auto`` falls back to SDPA. On CPU the wrapper's plumbing
(head layout, grouped-query heads, scaling, segment ids) is tested against SDPA with the kernel
replaced by a reference (tests/unit/test_xla_attention.py); the kernel itself needs a TPU.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

from cambrian_train.models.llm import SEGMENT_AWARE, SEGMENTS_KWARG

FLASH = "cambrian_xla_flash"


def partition_spec(tensor_parallel: bool) -> tuple:
    """How [B, H, L, hd] activations are sharded: batch over data × fsdp, heads over tensor."""
    return (("data", "fsdp"), "tensor" if tensor_parallel else None, None, None)


def make_flash_attention(kernel: Callable, mesh=None, spec: Optional[tuple] = None) -> Callable:
    """An HF attention function around ``kernel`` (torch_xla's ``flash_attention`` signature:
    q, k, v [B, H, L, hd], causal, q_segment_ids, kv_segment_ids, sm_scale, partition_spec,
    mesh)."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
        if dropout:
            raise ValueError("the flash kernel runs without attention dropout")
        segments = kw.get(SEGMENTS_KWARG)
        groups = getattr(module, "num_key_value_groups", 1)
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        dtype = value.dtype  # RoPE's float32 cos/sin may have promoted q and k (llm.py)
        if scaling is None:
            scaling = query.shape[-1] ** -0.5
        ids = None if segments is None else segments.to(torch.int32)
        out = kernel(
            query.to(dtype),
            key.to(dtype),
            value,
            causal=True,
            q_segment_ids=ids,
            kv_segment_ids=ids,
            sm_scale=scaling,
            partition_spec=spec,
            mesh=mesh,
        )
        return out.transpose(1, 2).contiguous(), None  # [B, L, H, hd], no weights

    return attention


def register_flash_attention(mesh, tensor_parallel: bool) -> str:
    """Register the Pallas kernel for ``mesh``; returns the attention name to train with."""
    from torch_xla.experimental.custom_kernel import flash_attention

    fn = make_flash_attention(flash_attention, mesh, partition_spec(tensor_parallel))
    AttentionInterface.register(FLASH, fn)
    SEGMENT_AWARE.add(FLASH)
    return FLASH
