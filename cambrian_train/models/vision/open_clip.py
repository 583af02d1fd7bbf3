"""OpenCLIP ConvNeXt vision towers: one stage's feature map, or all stages combined.

Weights load with open_clip's own ``create_model(cfg.checkpoint)``: ``hf-hub:org/repo`` for a hub
checkpoint, ``local-dir:/path`` for a local directory with the same layout
(``open_clip_config.json`` holding ``model_cfg`` and ``preprocess_cfg``, plus the weights file).
Only the visual trunk (a timm ConvNeXt) is kept; the text tower is dropped. The image mean/std come
from the preprocess config that open_clip attaches to the model.

``multi_stage`` (Cambrian's ConvNeXt-XXL): every stage map is resized to the target grid with
``resample_map`` and the maps are concatenated on channels, so ``hidden_size`` is the sum of the
stage widths; ``select_layer`` is then unused. Otherwise ``select_layer`` is the stage index
(-1 = last stage).
"""

from __future__ import annotations

from typing import Optional, Tuple

import open_clip
import torch
from open_clip.timm_model import TimmModel

from cambrian_train.config.schema import VisionTowerConfig
from cambrian_train.models.vision.base import DTYPES, ImageSpec, VisionTower, split_architecture
from cambrian_train.models.vision.resample import resample_map
from cambrian_train.registry import VISION_TOWERS


@VISION_TOWERS.register("open_clip")
class OpenCLIPConvNeXtTower(VisionTower):
    """A timm-backed OpenCLIP image tower (ConvNeXt); features from its stage feature maps."""

    supports_multi_stage = True

    def __init__(self, cfg: VisionTowerConfig, dtype: str = "float32", pretrained: bool = True):
        if pretrained:
            visual = open_clip.create_model(cfg.checkpoint).visual
        else:  # architecture: {model_name: an open_clip config name, image_mean, image_std}
            arch, arch_spec = split_architecture(cfg)
            device = torch.get_default_device()  # meta inside `with torch.device("meta")`
            visual = open_clip.create_model(arch.pop("model_name"), device=device, **arch).visual
        if not isinstance(visual, TimmModel):
            raise ValueError(
                f"tower {cfg.checkpoint}: source=open_clip needs a timm-backed (ConvNeXt) image "
                f"tower, the checkpoint has a {type(visual).__name__}"
            )
        trunk = visual.trunk
        widths = [info["num_chs"] for info in trunk.feature_info]  # one per stage
        num_stages = len(widths)
        if cfg.multi_stage:
            stages = list(range(num_stages))
        elif -num_stages <= cfg.select_layer < num_stages:
            stages = [cfg.select_layer % num_stages]
        else:
            raise ValueError(
                f"tower {cfg.checkpoint}: select_layer={cfg.select_layer} is not one of the "
                f"{num_stages} stages of the checkpoint"
            )
        if pretrained:
            preprocess = visual.preprocess_cfg
            spec = ImageSpec(
                image_size=cfg.image_size,
                mean=tuple(float(v) for v in preprocess["mean"]),
                std=tuple(float(v) for v in preprocess["std"]),
            )
        else:
            spec = arch_spec
        super().__init__(cfg, sum(widths[i] for i in stages), spec, has_cls_token=False)
        trunk.prune_intermediate_layers(stages, prune_norm=True, prune_head=True)
        self.trunk = trunk.to(DTYPES[dtype])
        self.stages = stages

    def features(self, pixel_values: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """[N, 3, S, S] → (None, [N, num_tokens, hidden_size]): stage maps resized, concatenated."""
        maps = self.trunk.forward_intermediates(
            pixel_values.to(self.trunk.stem[0].weight.dtype),
            indices=self.stages,
            intermediates_only=True,
        )  # per stage [N, C_i, H_i, H_i]
        return None, torch.cat([resample_map(m, self.cfg.num_tokens) for m in maps], dim=-1)
