"""Language-supervised objectives: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid loss.

Both take L2-normalised image and text embeddings of one batch of matching pairs (row i of each
is pair i) and the learned scalars, as raw parameters: CLIP's ``log_scale`` (the temperature is
``exp(-log_scale)``, Radford et al. 2021: initialised at log(1/0.07), the scale clamped at 100)
and SigLIP's ``log_scale`` and ``bias`` (Zhai et al. 2023: t' = log 10, b = -10). Used by
language.py; checked against written-out loops over pairs in tests/unit/test_vision_pretrain.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CLIP_INIT_LOG_SCALE = math.log(1 / 0.07)
CLIP_MAX_LOG_SCALE = math.log(100.0)
SIGLIP_INIT_LOG_SCALE = math.log(10.0)
SIGLIP_INIT_BIAS = -10.0


def _check_pairs(image: torch.Tensor, text: torch.Tensor) -> None:
    assert image.dim() == 2 and image.shape == text.shape, (image.shape, text.shape)


def clip_loss(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch: image [B, D] and text [B, D] normalised, ``log_scale`` a
    scalar. Mean of the image→text and text→image cross-entropies with the diagonal as target;
    the logit scale is ``exp(log_scale)`` clamped at 100 (CLIP's clip of its parameter)."""
    _check_pairs(image, text)
    scale = log_scale.clamp(max=CLIP_MAX_LOG_SCALE).exp()
    logits = scale * image @ text.T  # [B, B]: image i against text j
    target = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def siglip_loss(
    image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """SigLIP: every (image i, text j) pair is a binary problem, label +1 for i == j and -1
    otherwise, logit ``exp(log_scale) * <x_i, y_j> + bias``; the loss is
    ``-sum log sigmoid(label * logit) / B`` (summed over the B² pairs, averaged over images)."""
    _check_pairs(image, text)
    logits = log_scale.exp() * image @ text.T + bias  # [B, B]
    labels = 2 * torch.eye(image.shape[0], device=image.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / image.shape[0]


class ContrastiveScalars(nn.Module):
    """The learned scalars of one objective: ``log_scale`` (and ``bias`` for SigLIP)."""

    def __init__(self, objective: str):
        super().__init__()
        if objective not in ("clip", "siglip"):
            raise ValueError(f"objective={objective!r} is not one of ['clip', 'siglip']")
        self.objective = objective
        init = CLIP_INIT_LOG_SCALE if objective == "clip" else SIGLIP_INIT_LOG_SCALE
        self.log_scale = nn.Parameter(torch.tensor(init))
        self.bias = nn.Parameter(torch.tensor(SIGLIP_INIT_BIAS)) if objective == "siglip" else None

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Unnormalised embeddings image [B, D], text [B, D] → the objective's loss (scalar)."""
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        if self.objective == "clip":
            return clip_loss(image, text, self.log_scale)
        return siglip_loss(image, text, self.log_scale, self.bias)
