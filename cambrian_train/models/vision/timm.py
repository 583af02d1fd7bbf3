"""Vision towers from ``timm``: ViT-family models (SigLIP, CLIP, DINOv2, EVA ports, ...).

Weights load with ``timm.create_model(cfg.checkpoint, pretrained=True, img_size=...)``:
``hf-hub:timm/<name>`` for a hub checkpoint, ``local-dir:/path`` for a local directory with the
same layout (``config.json`` + weights). timm resamples the position embeddings when
``image_size`` differs from the checkpoint's. The image mean/std come from
``timm.data.resolve_data_config``. Features are a block's output from ``forward_intermediates``
with the prefix tokens (CLS, registers) split off; blocks after it are pruned.
"""

from __future__ import annotations

from typing import Optional, Tuple

import timm
import torch
from timm.data import resolve_data_config

from cambrian_train.config.schema import VisionTowerConfig
from cambrian_train.models.vision.base import DTYPES, ImageSpec, VisionTower, split_architecture
from cambrian_train.registry import VISION_TOWERS


@VISION_TOWERS.register("timm")
class TimmViTTower(VisionTower):
    """A timm ViT; ``select_layer`` counts hidden states as HF does.

    Hidden state k ≥ 1 is the output of block k - 1 and -1 the last block's output (before the
    final norm); 0 (the patch embeddings) is not exposed by ``forward_intermediates``.
    """

    def __init__(self, cfg: VisionTowerConfig, dtype: str = "float32", pretrained: bool = True):
        arch_spec = None
        if pretrained:
            model = timm.create_model(cfg.checkpoint, pretrained=True, img_size=cfg.image_size)
        else:  # architecture: {model_name: a timm model name, its kwargs, image_mean, image_std}
            arch, arch_spec = split_architecture(cfg)
            name = arch.pop("model_name")
            model = timm.create_model(name, pretrained=False, img_size=cfg.image_size, **arch)
        depth = len(model.blocks)
        if cfg.select_layer == 0 or not -depth <= cfg.select_layer <= depth:
            raise ValueError(
                f"tower {cfg.checkpoint}: select_layer={cfg.select_layer} is not a block output "
                f"of the checkpoint (1..{depth} or -{depth}..-1)"
            )
        block = cfg.select_layer - 1 if cfg.select_layer > 0 else depth + cfg.select_layer
        data_cfg = resolve_data_config(model=model)
        spec = arch_spec or ImageSpec(
            image_size=cfg.image_size,
            mean=tuple(float(v) for v in data_cfg["mean"]),
            std=tuple(float(v) for v in data_cfg["std"]),
        )
        super().__init__(cfg, model.embed_dim, spec, model.has_class_token)
        model.prune_intermediate_layers([block], prune_norm=True, prune_head=True)
        self.model = model.to(DTYPES[dtype])
        self.block = block

    def features(self, pixel_values: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        ((patches, prefix),) = self.model.forward_intermediates(
            pixel_values.to(self.model.patch_embed.proj.weight.dtype),
            indices=[self.block],
            return_prefix_tokens=True,
            output_fmt="NLC",
            intermediates_only=True,
        )  # patches [N, P, C], prefix [N, num_prefix_tokens, C] (CLS first, then registers)
        return (prefix[:, 0] if self.model.has_class_token else None), patches
