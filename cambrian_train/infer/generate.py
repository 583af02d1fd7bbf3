"""Batched generation for the VLM with a KV cache; images are encoded once, in the prefill.

Prompts are left-padded (data/collate.py with ``left_pad``) so every row's answer starts at the
same position; position ids follow the attention mask, so a padded row sees the same positions
as it would alone. The prefill carries the vision context for in-LLM SVA layers; decoding steps
only add text tokens.
"""

from __future__ import annotations

from typing import List

import torch

from cambrian_train.batch import Batch


@torch.no_grad()
def generate_ids(
    model,
    batch: Batch,
    eos_token_id: int,
    max_new_tokens: int = 16,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """→ new token ids [B, T≤max_new_tokens]; rows that ended are padded with ``eos_token_id``.

    ``temperature`` 0 is greedy decoding; above 0 samples from the tempered softmax.
    """
    embeds, context = model.embed(batch)  # [B, L, D]
    mask = batch.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model.llm(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **model.llm_kwargs(context),
    )
    finished = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    tokens = []
    for step in range(max_new_tokens):
        logits = out.logits[:, -1].float()  # [B, V]
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
        tokens.append(nxt)
        finished |= nxt == eos_token_id
        if bool(finished.all()) or step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model.llm(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=out.past_key_values,
            use_cache=True,
        )
    return torch.stack(tokens, dim=1)


def generate(model, batch: Batch, tokenizer, max_new_tokens: int = 16, **kwargs) -> List[str]:
    """Decode one answer per row of a left-padded prompt batch (special tokens dropped)."""
    ids = generate_ids(model, batch, tokenizer.eos_token_id, max_new_tokens, **kwargs)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)
