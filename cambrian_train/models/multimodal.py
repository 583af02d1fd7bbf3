"""Static-shape gather/scatter of vision tokens at recorded sequence positions.

Pure tensor functions shared by the embedding merge (models/vlm.py) and the SVA layers inside the
LLM: no Python loops over samples, no data-dependent shapes, so XLA compiles them once.
"""

from __future__ import annotations

import torch


def gather_at(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden [B, L, D], positions [B, I, Q] → [B, I, Q, D] (empty slots gather garbage)."""
    b, i, q = positions.shape
    index = positions.reshape(b, i * q, 1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index).reshape(b, i, q, hidden.shape[-1])


def scatter_at(
    hidden: torch.Tensor, positions: torch.Tensor, values: torch.Tensor, slot_mask: torch.Tensor
) -> torch.Tensor:
    """Write ``values`` [B, I, Q, D] into ``hidden`` [B, L, D] at ``positions`` [B, I, Q].

    Slots with ``slot_mask`` [B, I] False are routed to a scratch row L that is dropped, so they
    never touch the sequence (and may hold any position). Returns a new tensor.
    """
    b, length, d = hidden.shape
    target = torch.where(slot_mask[:, :, None], positions, torch.full_like(positions, length))
    padded = torch.cat([hidden, hidden.new_zeros(b, 1, d)], dim=1)  # [B, L+1, D]
    index = target.reshape(b, -1, 1).expand(-1, -1, d)
    padded = padded.scatter(1, index, values.reshape(b, -1, d).to(hidden.dtype))
    return padded[:, :length]
