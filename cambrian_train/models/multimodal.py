"""Static-shape gather/scatter of vision tokens at recorded sequence positions.

Pure tensor functions shared by the embedding merge (models/vlm.py) and the SVA layers inside the
LLM: no Python loops over samples, no data-dependent shapes, so XLA compiles them once.

Image slots come in G groups (batch.py): ``positions`` [G, I, Q] index the R = B / G rows of
their group laid end to end (row-in-group × L + position). G = B (one row per group) is the
per-row layout; G < B lets rows share a group's image budget. Each group is a contiguous block
of rows, so a batch sharded over its rows keeps every group, and its images, on one device.
"""

from __future__ import annotations

import torch


def _grouped(hidden: torch.Tensor, groups: int) -> torch.Tensor:
    b, length, d = hidden.shape
    if b % groups:
        raise ValueError(f"{b} rows do not split into {groups} image groups")
    return hidden.reshape(groups, (b // groups) * length, d)  # a view


def gather_at(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden [B, L, D], positions [G, I, Q] → [G, I, Q, D] (empty slots gather garbage)."""
    g, i, q = positions.shape
    grouped = _grouped(hidden, g)
    index = positions.reshape(g, i * q, 1).expand(-1, -1, hidden.shape[-1])
    return grouped.gather(1, index).reshape(g, i, q, hidden.shape[-1])


def scatter_at(
    hidden: torch.Tensor, positions: torch.Tensor, values: torch.Tensor, slot_mask: torch.Tensor
) -> torch.Tensor:
    """Write ``values`` [G, I, Q, D] into ``hidden`` [B, L, D] at ``positions`` [G, I, Q].

    Slots with ``slot_mask`` [G, I] False are routed to a scratch position past the group's
    rows that is dropped, so they never touch the sequence (and may hold any position).
    Returns a new tensor.
    """
    b, length, d = hidden.shape
    g = positions.shape[0]
    grouped = _grouped(hidden, g)
    span = grouped.shape[1]
    target = torch.where(slot_mask[:, :, None], positions, torch.full_like(positions, span))
    padded = torch.cat([grouped, grouped.new_zeros(g, 1, d)], dim=1)  # [G, R*L+1, D]
    index = target.reshape(g, -1, 1).expand(-1, -1, d)
    padded = padded.scatter(1, index, values.reshape(g, -1, d).to(hidden.dtype))
    return padded[:, :span].reshape(b, length, d)
