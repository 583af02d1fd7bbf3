"""The one token-length interpolation: resize a square grid of features to a target token count.

``resample_map`` takes a channels-first feature map (ConvNeXt stages), ``resample_tokens`` a token
sequence (ViT patches); both end in the same bilinear resize (align_corners=False).
"""

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


def resample_map(feature_map: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """feature_map [N, C, H, H] → tokens [N, num_tokens, C] on a √num_tokens² grid, row-major."""
    n, c, h, w = feature_map.shape
    if h != w:
        raise ValueError(f"feature map of {h}x{w} is not square")
    target = grid_side(num_tokens)
    if h != target:
        resized = F.interpolate(
            feature_map.float(), size=(target, target), mode="bilinear", align_corners=False
        )
        feature_map = resized.to(feature_map.dtype)
    return feature_map.flatten(2).transpose(1, 2)


def resample_tokens(tokens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """tokens [N, T, C] on a √T×√T grid → [N, num_tokens, C], bilinear (align_corners=False)."""
    n, t, c = tokens.shape
    side, target = grid_side(t), grid_side(num_tokens)
    if side == target:
        return tokens
    return resample_map(tokens.transpose(1, 2).reshape(n, c, side, side), num_tokens)
