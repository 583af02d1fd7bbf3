"""Vision towers from ``transformers``: CLIP, SigLIP and DINOv2 vision encoders.

Weights load with ``from_pretrained`` (hub name or local directory), or for training deferred:
the architecture with meta parameters, read sharded by the backend (models/weights.py); the
image mean/std come from ``AutoImageProcessor.from_pretrained`` of the same checkpoint, so the
data pipeline never duplicates normalisation constants.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from transformers import AutoImageProcessor, CLIPVisionModel, Dinov2Model, SiglipVisionModel

from cambrian_train.config.schema import VisionTowerConfig
from cambrian_train.models.vision.base import DTYPES, ImageSpec, VisionTower, split_architecture
from cambrian_train.models.weights import (
    DeferredWeights,
    checkpoint_dir,
    has_safetensors,
    meta_parameters,
)
from cambrian_train.registry import VISION_TOWERS


class HFVisionTower(VisionTower):
    """A HF vision encoder; features come from ``hidden_states[select_layer]``.

    ``select_layer`` indexes the num_hidden_layers + 1 hidden states (0 = embeddings, -1 = the last
    layer's output before any final norm).
    """

    model_class = CLIPVisionModel
    has_cls_token = True
    interpolates_positions = False  # True: any image_size works, not only the checkpoint's
    supports_deferred = True

    def __init__(
        self,
        cfg: VisionTowerConfig,
        dtype: str = "float32",
        pretrained: bool = True,
        deferred: bool = False,
    ):
        weights: Optional[DeferredWeights] = None
        source = checkpoint_dir(cfg.checkpoint) if deferred else None
        if source is not None and has_safetensors(source):
            # the checkpoint's architecture with meta parameters; the backend loads them
            # sharded (models/weights.py); a full CLIP/SigLIP checkpoint's vision config and
            # ``vision_model.*`` tensors are what the vision model reads
            config = self.model_class.config_class.from_pretrained(source)
            with meta_parameters():
                model = self.model_class(config).to(DTYPES[dtype])
            weights = DeferredWeights("model", source)
        elif pretrained:
            model = self.model_class.from_pretrained(cfg.checkpoint, dtype=DTYPES[dtype])
        else:
            arch, spec = split_architecture(cfg)
            model = self.model_class(self.model_class.config_class(**arch)).to(DTYPES[dtype])
        if pretrained or source is not None:
            processor = AutoImageProcessor.from_pretrained(cfg.checkpoint)
            spec = ImageSpec(
                image_size=cfg.image_size,
                mean=tuple(float(v) for v in processor.image_mean),
                std=tuple(float(v) for v in processor.image_std),
            )
        vision_cfg = model.config
        if not self.interpolates_positions and vision_cfg.image_size != cfg.image_size:
            raise ValueError(
                f"tower {cfg.checkpoint}: image_size={cfg.image_size} in the config but the "
                f"checkpoint was trained at {vision_cfg.image_size}"
            )
        layers = vision_cfg.num_hidden_layers
        if not -layers - 1 <= cfg.select_layer <= layers:
            raise ValueError(
                f"tower {cfg.checkpoint}: select_layer={cfg.select_layer} is outside the "
                f"{layers + 1} hidden states of the checkpoint"
            )
        super().__init__(cfg, vision_cfg.hidden_size, spec, self.has_cls_token)
        self.model = model
        self.deferred = weights  # models/weights.py: loaded by the backend, sharded

    def features(self, pixel_values: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        out = self.model(pixel_values=pixel_values.to(self.model.dtype), output_hidden_states=True)
        hidden = out.hidden_states[self.cfg.select_layer]  # [N, (1+)P, C]
        if not self.has_cls_token:
            return None, hidden
        return hidden[:, 0], hidden[:, 1:]


@VISION_TOWERS.register("hf_clip")
class CLIPTower(HFVisionTower):
    model_class = CLIPVisionModel
    has_cls_token = True


@VISION_TOWERS.register("hf_siglip")
class SiglipTower(HFVisionTower):
    model_class = SiglipVisionModel
    has_cls_token = False


@VISION_TOWERS.register("hf_dinov2")
class Dinov2Tower(HFVisionTower):
    """DINOv2 interpolates its position embeddings, so e.g. 378 px runs a 518 px checkpoint."""

    model_class = Dinov2Model
    has_cls_token = True
    interpolates_positions = True
