"""Batched generation for the VLM: images encoded once, then HF ``generate`` with its KV cache.

Prompts are left-padded (data/collate.py with ``left_pad``) so every row's answer starts at the
same position; the vision tokens are scattered into the prompt embeddings before decoding.
"""

from __future__ import annotations

from typing import List

import torch

from cambrian_train.batch import Batch


@torch.no_grad()
def generate(
    model, batch: Batch, tokenizer, max_new_tokens: int = 16, do_sample: bool = False
) -> List[str]:
    """Decode one answer per row of a left-padded prompt batch."""
    embeds = model.embed(batch)  # [B, L, D]
    out = model.llm.generate(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # [B, new] (inputs_embeds: only new tokens come back)
    return tokenizer.batch_decode(out, skip_special_tokens=True)
