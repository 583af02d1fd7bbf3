"""Self-supervised DINOv2 pre-training: DINO self-distillation plus iBOT masked-patch prediction.

Student and teacher are HF ``Dinov2Model``s starting from the tiny ``dinov2`` asset, each with
two ``DINOHead``s, one for the CLS token and one for the patches (DINOv2's separate iBOT head;
the heads batch-normalise, and CLS and patch rows must not share those statistics). Per batch:
two global crops (full resolution, 50-100 % of the area) and four local crops (half resolution,
10-40 %), flipped at random; no colour jitter, because colour is what the demo asks about. The
teacher sees the global crops; the student all crops, its global ones with a random 10-50 % of
the patches of half the images replaced by the model's own mask token (``bool_masked_pos``).
Loss = DINO loss on the CLS token + iBOT loss on the masked patches. The teacher follows the
student by EMA (momentum 0.99 → 1, cosine). Its targets are centred as DINOv2 does, by
Sinkhorn-Knopp over the batch (``centering="sinkhorn"``; ``"center"``: DINO's running centres).
The saved tower is the teacher (DINO's evaluated network), with the image processor.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from cambrian_train.models.vision.base import ImageSpec, normalize_pixels
from cambrian_train.tiny import ensure_asset
from cambrian_train.vision_pretrain.dino import (
    DINOHead,
    centered_targets,
    cosine_schedule,
    dino_loss,
    ema_update,
    masked_patch_loss,
    multi_crop,
    sinkhorn_targets,
    update_center,
)

HEADS = ("cls", "patch")
NUM_PROTOTYPES = 256
STUDENT_TEMP = 0.1
TEACHER_TEMP = 0.04
CENTER_MOMENTUM = 0.9
EMA_MOMENTUM = (0.99, 1.0)
GLOBAL_SCALE, LOCAL_SCALE = (0.5, 1.0), (0.1, 0.4)
NUM_LOCAL = 4
MASK_RATIO = (0.1, 0.5)


class Dinov2SelfDistillation(nn.Module):
    """``loss(pixels uint8 [B,3,S,S], ids unused)``; ``after_step`` moves the teacher."""

    def __init__(self, seed: int, centering: str = "sinkhorn"):
        super().__init__()
        if centering not in ("sinkhorn", "center"):
            raise ValueError(f"centering={centering!r} is not one of ['sinkhorn', 'center']")
        self.centering = centering
        from transformers import AutoImageProcessor, Dinov2Model

        source = ensure_asset("dinov2")  # the random-init tower: the starting point
        self.processor = AutoImageProcessor.from_pretrained(source)
        self.student = Dinov2Model.from_pretrained(source)
        width = self.student.config.hidden_size
        self.student_heads = nn.ModuleDict(
            {name: DINOHead(width, 4 * width, width, NUM_PROTOTYPES) for name in HEADS}
        )
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_heads = copy.deepcopy(self.student_heads).requires_grad_(False)
        self.register_buffer("center", torch.zeros(NUM_PROTOTYPES))
        self.register_buffer("patch_center", torch.zeros(NUM_PROTOTYPES))
        size = self.student.config.image_size
        mean_std = (self.processor.image_mean, self.processor.image_std)
        self.spec = ImageSpec(size, *(tuple(map(float, v)) for v in mean_std))
        self.generator = torch.Generator().manual_seed(seed)  # crops and masks
        self._teacher_out = None

    def _mask(self, num_images: int, num_patches: int) -> torch.Tensor:
        """[N, P] bool: half the images get a random 10-50 % of their patches masked."""
        g = self.generator
        ratio = MASK_RATIO[0] + (MASK_RATIO[1] - MASK_RATIO[0]) * torch.rand(
            num_images, 1, generator=g
        )
        ratio = ratio * (torch.rand(num_images, 1, generator=g) < 0.5)
        return torch.rand(num_images, num_patches, generator=g) < ratio

    def loss(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        del ids  # self-supervised: the captions are not used
        images = normalize_pixels(pixels, self.spec)  # [B, 3, S, S]
        b, size = images.shape[0], images.shape[-1]
        g = self.generator
        globals_ = torch.cat([multi_crop(images, size, GLOBAL_SCALE, g) for _ in range(2)])
        locals_ = torch.cat(
            [multi_crop(images, size // 2, LOCAL_SCALE, g) for _ in range(NUM_LOCAL)]
        )
        with torch.no_grad():
            t_tokens = self.teacher(pixel_values=globals_).last_hidden_state  # [2B, 1+P, C]
            t_cls = self.teacher_heads["cls"](t_tokens[:, 0])  # [2B, K]
            t_patch = self.teacher_heads["patch"](t_tokens[:, 1:])  # [2B, P, K]
        mask = self._mask(2 * b, t_tokens.shape[1] - 1)  # [2B, P]
        s_global = self.student(pixel_values=globals_, bool_masked_pos=mask).last_hidden_state
        s_local = self.student(pixel_values=locals_).last_hidden_state[:, 0]  # [NUM_LOCAL·B, C]
        s_cls = torch.cat([s_global[:, 0], s_local])  # [(2 + NUM_LOCAL)·B, C]
        s_views = self.student_heads["cls"](s_cls).split(b)
        s_patch = self.student_heads["patch"](s_global[:, 1:])  # [2B, P, K]
        cls_targets, patch_targets = self._targets(t_cls, t_patch)
        dino = dino_loss(s_views, cls_targets.split(b), STUDENT_TEMP)
        ibot = masked_patch_loss(s_patch, patch_targets, mask, STUDENT_TEMP)
        self._teacher_out = (t_cls, t_patch)
        return dino + ibot

    @torch.no_grad()
    def _targets(self, cls: torch.Tensor, patches: torch.Tensor):
        """Teacher logits (CLS [N, K], patches [N, P, K]) → target probabilities."""
        if self.centering == "center":
            return (
                centered_targets(cls, self.center, TEACHER_TEMP),
                centered_targets(patches, self.patch_center, TEACHER_TEMP),
            )
        flat = sinkhorn_targets(patches.reshape(-1, patches.shape[-1]), TEACHER_TEMP)
        return sinkhorn_targets(cls, TEACHER_TEMP), flat.reshape(patches.shape)

    def after_step(self, step: int, num_steps: int) -> None:
        """EMA of the student into the teacher; the centres take this step's teacher outputs."""
        momentum = cosine_schedule(*EMA_MOMENTUM, step, num_steps)
        ema_update(self.teacher, self.student, momentum)
        ema_update(self.teacher_heads, self.student_heads, momentum)
        if self.centering == "center":
            update_center(self.center, self._teacher_out[0], CENTER_MOMENTUM)
            update_center(self.patch_center, self._teacher_out[1], CENTER_MOMENTUM)

    def save(self, out: Path) -> None:
        self.teacher.save_pretrained(out)
        self.processor.save_pretrained(out)
