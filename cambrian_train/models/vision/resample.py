"""The one token-length interpolation: resize a square token grid to a target token count."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def grid_side(num_tokens: int) -> int:
    """Side of a square token grid; ValueError when ``num_tokens`` is not a perfect square."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"num_tokens={num_tokens} is not a perfect square")
    return side


def resample_tokens(tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """tokens [N, T, C] on a √T×√T grid → [N, num_tokens, C], bilinear (align_corners=False)."""
    n, t, c = tokens.shape
    side, target = grid_side(t), grid_side(num_tokens)
    if side == target:
        return tokens
    grid = tokens.transpose(1, 2).reshape(n, c, side, side)
    grid = F.interpolate(grid.float(), size=(target, target), mode="bilinear", align_corners=False)
    return grid.to(tokens.dtype).flatten(2).transpose(1, 2)
