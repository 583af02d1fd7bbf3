"""Vision tower base class: features from a backbone, resized to the configured token count.

A family (hf.py, …) implements ``load`` (weights + image spec from the checkpoint) and
``patch_features`` (the selected layer's patch grid). This class owns what all families share:
the token-length interpolation and running frozen towers without an autograd graph.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import nn

from cambrian_train.config.schema import VisionTowerConfig
from cambrian_train.models.vision.resample import resample_tokens


@dataclass(frozen=True)
class ImageSpec:
    """How the data pipeline must prepare images for one tower (taken from its processor)."""

    image_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


class VisionTower(nn.Module, abc.ABC):
    """Maps pixel_values [N, 3, S, S] to features [N, num_tokens, hidden_size]."""

    def __init__(self, cfg: VisionTowerConfig, hidden_size: int, image_spec: ImageSpec):
        super().__init__()
        self.cfg = cfg
        self.hidden_size = hidden_size
        self.image_spec = image_spec

    @property
    def num_tokens(self) -> int:
        return self.cfg.num_tokens

    @abc.abstractmethod
    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] → [N, P, C], P a square patch grid (CLS dropped)."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.cfg.trainable and torch.is_grad_enabled()):
            features = self.patch_features(pixel_values)  # [N, P, C]
        return resample_tokens(features, self.cfg.num_tokens)  # [N, num_tokens, C]
