"""Self-distillation objectives of DINO / iBOT (the DINOv2 recipe's two losses), and their parts.

- ``DINOHead``: MLP (batch-normalised) → L2-normalised bottleneck → prototypes whose weight
  rows are normalised (DINO's weight-normalised last layer with the norm fixed at 1).
- teacher targets over prototypes, sharpened by a low temperature and centred either by DINO's
  running centre (``centered_targets``: ``softmax((t - center) / teacher_temp)``, the centre
  moved by ``update_center``) or by DINOv2's Sinkhorn-Knopp normalisation over the batch
  (``sinkhorn_targets``), which cannot collapse to a uniform target.
- ``dino_loss`` (Caron et al. 2021): the targets of the global views are those of the student's
  ``log_softmax(s / student_temp)`` on every other view; mean over batch and view pairs.
- ``masked_patch_loss`` (iBOT, Zhou et al. 2022): the same cross-entropy per patch, the student
  seeing the view with some patches replaced by the mask token, averaged over masked patches.
- ``ema_update``: the teacher's EMA of the student.
- ``multi_crop``: random resized crops (and horizontal flips) of a batch, in one ``grid_sample``.

Used by selfsup.py; checked against written-out loops in tests/unit/test_vision_pretrain.py.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


class _BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over all leading dimensions of [..., C] (the rows of CLS or patch logits)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class DINOHead(nn.Module):
    """[..., in_size] → prototype logits [..., num_prototypes] (cosines, in [-1, 1]).

    The hidden layers are batch-normalised (DINO's ``use_bn`` head): a random tiny ViT gives
    nearly the same CLS token for every scene (bottleneck cosine 0.995 between images), so
    without it the teacher's targets start uniform and the student learns to match them.
    """

    def __init__(
        self, in_size: int, hidden_size: int, bottleneck_size: int, num_prototypes: int
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_size, hidden_size),
            _BatchNorm(hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
            _BatchNorm(hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, bottleneck_size),
        )
        self.prototypes = nn.Parameter(torch.empty(num_prototypes, bottleneck_size))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)  # [..., bottleneck]
        return F.linear(x, F.normalize(self.prototypes, dim=-1))  # [..., K]


def centered_targets(teacher: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """DINO's teacher targets: ``softmax((teacher - center) / temp)`` over the last axis."""
    return F.softmax((teacher - center) / temp, dim=-1)


def sinkhorn_targets(teacher: torch.Tensor, temp: float, iterations: int = 3) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp centring of teacher logits [N, K] (the rows of one batch):
    ``exp(teacher / temp)`` alternately normalised so that every prototype gets 1/K of the
    batch's mass and every row 1/N, ``iterations`` times; rows are returned summing to 1."""
    n, k = teacher.shape
    q = torch.exp((teacher - teacher.max()) / temp).T  # [K, N]
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).T  # [N, K]


def _cross_entropy(student: torch.Tensor, target: torch.Tensor, temp: float) -> torch.Tensor:
    """Per-row ``-sum_k target_k log softmax(student / temp)_k`` of [..., K] tensors."""
    return -(target * F.log_softmax(student / temp, dim=-1)).sum(-1)


def dino_loss(
    student: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], student_temp: float
) -> torch.Tensor:
    """``student``: V views' logits [B, K], the G global views first; ``targets``: the teacher's
    probabilities [B, K] for the G global views. Mean over the G·(V-1) pairs of different views
    of the batch-mean cross-entropy."""
    assert len(targets) <= len(student), (len(targets), len(student))
    total, pairs = student[0].new_zeros(()), 0
    for t_index, target in enumerate(targets):
        for s_index, s in enumerate(student):
            if s_index != t_index:
                total = total + _cross_entropy(s, target, student_temp).mean()
                pairs += 1
    return total / pairs


def masked_patch_loss(
    student: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """``student`` logits [B, P, K] (from the masked view), ``targets`` the teacher's
    probabilities [B, P, K] (unmasked view), ``mask`` [B, P] bool: per image the mean
    cross-entropy over its masked patches, then the mean over the images with at least one
    masked patch (0 when none has any)."""
    per_patch = _cross_entropy(student, targets, student_temp)  # [B, P]
    weight = mask.to(per_patch.dtype)
    num_masked = weight.sum(-1)  # [B]
    per_image = (per_patch * weight).sum(-1) / num_masked.clamp(min=1)
    return per_image.sum() / (num_masked > 0).sum().clamp(min=1)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher: torch.Tensor, momentum: float) -> None:
    """center ← momentum · center + (1 - momentum) · mean of ``teacher`` [..., K] over rows."""
    center.mul_(momentum).add_(teacher.reshape(-1, teacher.shape[-1]).mean(0), alpha=1 - momentum)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 - momentum) · student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def cosine_schedule(start: float, end: float, step: int, num_steps: int) -> float:
    """``start`` at step 0 to ``end`` at the last step, on a half cosine."""
    progress = step / max(1, num_steps - 1)
    return end + (start - end) * (1 + math.cos(math.pi * progress)) / 2


def multi_crop(
    images: torch.Tensor,
    out_size: int,
    scale: Tuple[float, float],
    generator: torch.Generator,
    flip: bool = True,
) -> torch.Tensor:
    """Random resized crops of ``images`` [B, C, S, S] → [B, C, out_size, out_size].

    Each crop covers a fraction in ``scale`` of the image area, aspect ratio log-uniform in
    [3/4, 4/3] narrowed to the ratios that fit that area, lies inside the image, and is flipped
    left-right with probability 1/2 when ``flip``; sampled bilinearly (``affine_grid`` +
    ``grid_sample``, one call for the batch).
    """
    b = images.shape[0]
    uniform = torch.rand(b, 5, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * uniform[:, 0]
    # aspect ratios that keep both sides inside the image: area <= ratio <= 1 / area
    low, high = area.clamp(min=3 / 4).log(), (1 / area).clamp(max=4 / 3).log()
    ratio = torch.exp(low + (high - low) * uniform[:, 1])
    width = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the image side (the clamp
    height = torch.sqrt(area / ratio).clamp(max=1.0)  # only absorbs rounding)
    cx = (1 - width) * (2 * uniform[:, 2] - 1)  # centre in [-1, 1] coordinates, crop inside
    cy = (1 - height) * (2 * uniform[:, 3] - 1)
    sign = torch.where(uniform[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = height, cy
    size = (b, images.shape[1], out_size, out_size)
    grid = F.affine_grid(theta.to(images.dtype), size, align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
