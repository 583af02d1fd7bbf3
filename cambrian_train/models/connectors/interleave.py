"""SVA layers inside the LLM, attached to the decoder layers of any HF causal LM.

After decoder layers ``start, start+stride, …`` an SVA layer takes the hidden states at the
vision-token positions (row newlines excluded) as queries, attends to the towers' windows, and
writes the result back at those positions. The layers themselves belong to the connector
(``vision_sampler_layers``); here they are attached with forward hooks on the HF decoder layers,
so the LLM's own forward and parameter names stay untouched. The vision context travels as an
explicit keyword argument of each forward (``vision_context``), which HF passes down to every
decoder layer; nothing is stored on modules between calls.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from cambrian_train.models.connectors.sva import VisionTokenSampler
from cambrian_train.models.llm import decoder_layers
from cambrian_train.models.multimodal import gather_at, scatter_at

CONTEXT_KWARG = "vision_context"


@dataclass
class LLMVisionContext:
    """What the in-LLM SVA layers need for one forward."""

    positions: torch.Tensor  # [G, I, s*s] group position of each visual token (no newlines)
    image_mask: torch.Tensor  # [G, I] bool
    windows: List[torch.Tensor]  # per tower [G*I*s*s, w_t², W]
    masks: List[torch.Tensor]  # per tower [G*I*s*s, w_t²] bool
    seq_len: int  # the prompt length; shorter (cached decoding) forwards carry no vision tokens
    # [G*I, W] the connector's global context per image (llm_context="connector"); None: the
    # mean of the LLM hidden states at each image's positions (llm_context="llm_mean")
    global_context: Optional[torch.Tensor] = None


def _sva_hook(module, args, kwargs, output, sampler: VisionTokenSampler):
    ctx = kwargs.get(CONTEXT_KWARG)
    hidden = output[0] if isinstance(output, tuple) else output  # [B, L, D]
    if ctx is None or hidden.shape[1] != ctx.seq_len:
        return None
    b, i, q = ctx.positions.shape
    queries = gather_at(hidden, ctx.positions)  # [G, I, Q, D]
    d = hidden.shape[-1]
    context = ctx.global_context  # one row per image
    if context is None:
        context = queries.mean(dim=2).reshape(-1, d)  # the image's hidden states' mean
    out = sampler(queries.reshape(-1, d), context.to(hidden.dtype), ctx.windows, ctx.masks)
    hidden = scatter_at(hidden, ctx.positions, out.reshape(b, i, q, d), ctx.image_mask)
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def attach_samplers(llm, samplers: nn.ModuleList, insert_after: List[int]) -> list:
    """Hook ``samplers[k]`` after decoder layer ``insert_after[k]``; returns the hook handles."""
    layers = decoder_layers(llm)
    handles = []
    for sampler, index in zip(samplers, insert_after):
        if index >= len(layers):
            raise ValueError(f"SVA insertion after layer {index} but the LLM has {len(layers)}")
        hook = functools.partial(_sva_hook, sampler=sampler)
        handles.append(layers[index].register_forward_hook(hook, with_kwargs=True))
    return handles
