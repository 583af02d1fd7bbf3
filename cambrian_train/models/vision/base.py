"""Vision tower base class: features from a backbone, resized to the configured token count.

A family (hf.py, open_clip.py, timm.py) loads weights and the image spec from its checkpoint and
implements ``features`` (the selected layer's CLS token, if any, and its square patch grid). This
class owns what all families share: the ``select_feature`` and ``multi_stage`` checks, the
token-length interpolation, prepending CLS for ``cls_patch``, and running frozen towers in eval
mode without an autograd graph.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from cambrian_train.config.schema import VisionTowerConfig
from cambrian_train.config.validate import SELECT_FEATURES
from cambrian_train.models.vision.resample import grid_side, resample_tokens

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ImageSpec:
    """How the data pipeline must prepare images for one tower (taken from its processor)."""

    image_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


def normalize_pixels(pixels: torch.Tensor, spec: ImageSpec) -> torch.Tensor:
    """uint8 pixels [..., 3, S, S] (the data pipeline's) → the tower's normalised float32
    input, ``(x / 255 - mean) / std`` as its image processor computes it; a float tensor is
    taken as already normalised and returned as it is."""
    if pixels.dtype != torch.uint8:
        return pixels
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=pixels.device)[:, None, None]
    std = torch.tensor(spec.std, dtype=torch.float32, device=pixels.device)[:, None, None]
    return (pixels.to(torch.float32) / 255.0 - mean) / std


def split_architecture(cfg: VisionTowerConfig) -> Tuple[dict, ImageSpec]:
    """``cfg.architecture`` → (the family's config fields, the image spec it names).

    Used to build a tower without its checkpoint; ValueError when the fields are absent.
    """
    arch = dict(cfg.architecture)
    mean, std = arch.pop("image_mean", None), arch.pop("image_std", None)
    if not arch or mean is None or std is None:
        raise ValueError(
            f"tower {cfg.checkpoint}: building without the checkpoint needs its architecture "
            "fields plus image_mean and image_std in the tower config's 'architecture'"
        )
    return arch, ImageSpec(cfg.image_size, tuple(map(float, mean)), tuple(map(float, std)))


class VisionTower(nn.Module, abc.ABC):
    """Maps pixel_values [N, 3, S, S] to features [N, T, hidden_size].

    T = ``num_tokens`` for ``select_feature=patch`` and 1 + ``num_tokens`` for ``cls_patch`` (the
    CLS token first, then the resized patch grid in row-major order).
    """

    supports_multi_stage = False  # only families with a stage hierarchy (ConvNeXt) set this
    supports_deferred = False  # True: accepts ``deferred=True`` (meta parameters, loaded sharded)

    def __init__(
        self,
        cfg: VisionTowerConfig,
        hidden_size: int,
        image_spec: ImageSpec,
        has_cls_token: bool,
    ):
        super().__init__()
        if cfg.select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"tower {cfg.checkpoint}: select_feature={cfg.select_feature!r} is not one of "
                f"{list(SELECT_FEATURES)}"
            )
        if cfg.select_feature == "cls_patch" and not has_cls_token:
            raise ValueError(
                f"tower {cfg.checkpoint}: select_feature=cls_patch but the tower has no CLS "
                "token; use select_feature=patch"
            )
        if cfg.multi_stage and not self.supports_multi_stage:
            raise ValueError(
                f"tower {cfg.checkpoint}: multi_stage=true but source={cfg.source!r} has no "
                "feature stages to combine"
            )
        grid_side(cfg.num_tokens)  # ValueError unless a perfect square
        self.cfg = cfg
        self.hidden_size = hidden_size
        self.image_spec = image_spec

    @property
    def num_tokens(self) -> int:
        """Tokens of the resized patch grid (CLS, when selected, comes on top of these)."""
        return self.cfg.num_tokens

    def train(self, mode: bool = True) -> VisionTower:
        """Frozen towers stay in eval mode: dropout, drop-path and norm statistics never act."""
        return super().train(mode and self.cfg.trainable)

    @abc.abstractmethod
    def features(self, pixel_values: torch.Tensor) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
        """[N, 3, S, S] → (CLS [N, C] or None, patches [N, P, C]), P a square grid."""

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(self.cfg.trainable and torch.is_grad_enabled()):
            cls, patches = self.features(pixel_values)  # [N, C] | None, [N, P, C]
        tokens = resample_tokens(patches, self.cfg.num_tokens)  # [N, num_tokens, C]
        if self.cfg.select_feature == "patch":
            return tokens
        return torch.cat([cls[:, None].to(tokens.dtype), tokens], dim=1)  # [N, 1 + num_tokens, C]
