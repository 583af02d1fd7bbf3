"""Language-supervised tower pre-training: an image tower, a text tower, a contrastive loss.

- ``clip``: HF ``CLIPVisionModel`` (the tiny asset's architecture and random init) with a HF
  ``CLIPTextModel`` over the tiny tokenizer (causal, pooled at EOS), linear projections to a
  joint space, CLIP's InfoNCE with a learned temperature.
- ``siglip``: HF ``SiglipVisionModel`` (pooled by its attention-pooling head) with a HF
  ``SiglipTextModel`` (pooled at the last position, then its head), SigLIP's sigmoid loss with
  learned scale and bias.
- ``convnext``: the OpenCLIP model itself, visual tower as the tiny ``convnext`` asset, its own
  text transformer (``text_cfg`` sized for the tiny tokenizer, ``pool_type: eos``) and its own
  ``logit_scale``, trained with CLIP's InfoNCE.

Only what the VLM loads is saved, in the family's layout: the HF vision model and its image
processor (``save_pretrained``), or the whole OpenCLIP model (``open_clip_config.json`` with the
pre-training text config + ``open_clip_model.safetensors``), loaded by ``create_model``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from cambrian_train.models.vision.base import ImageSpec, normalize_pixels
from cambrian_train.tiny import CONVNEXT_MODEL_CFG, ensure_asset
from cambrian_train.vision_pretrain.contrastive import ContrastiveScalars, clip_loss

TEXT_SPEC = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
EMBED_SIZE = 64  # the joint image-text space of the CLIP recipes


def _spec(mean_std, image_size: int) -> ImageSpec:
    mean, std = mean_std
    return ImageSpec(image_size, tuple(map(float, mean)), tuple(map(float, std)))


def _token_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


class HFContrastive(nn.Module):
    """HF CLIP or SigLIP vision + text towers; ``loss(pixels uint8 [B,3,S,S], ids [B,L])``."""

    def __init__(self, family: str, tokenizer, context_length: int):
        super().__init__()
        from transformers import (
            AutoImageProcessor,
            CLIPTextConfig,
            CLIPTextModel,
            CLIPVisionModel,
            SiglipTextConfig,
            SiglipTextModel,
            SiglipVisionModel,
        )

        source = ensure_asset(family)  # the random-init tower: the starting point
        self.family = family
        self.processor = AutoImageProcessor.from_pretrained(source)
        tokens = dict(_token_ids(tokenizer), max_position_embeddings=context_length)
        if family == "clip":
            self.vision = CLIPVisionModel.from_pretrained(source)
            self.text = CLIPTextModel(CLIPTextConfig(**TEXT_SPEC, **tokens))
            width = self.vision.config.hidden_size
            self.image_proj = nn.Linear(width, EMBED_SIZE, bias=False)
            self.text_proj = nn.Linear(TEXT_SPEC["hidden_size"], EMBED_SIZE, bias=False)
            self.scalars = ContrastiveScalars("clip")
        elif family == "siglip":
            self.vision = SiglipVisionModel.from_pretrained(source)
            width = self.vision.config.hidden_size  # the text head projects to this width
            text_cfg = SiglipTextConfig(**TEXT_SPEC, **tokens, projection_size=width)
            self.text = SiglipTextModel(text_cfg)
            self.image_proj = self.text_proj = nn.Identity()
            self.scalars = ContrastiveScalars("siglip")
        else:
            raise ValueError(f"family={family!r} is not one of ['clip', 'siglip']")
        image_size = self.vision.config.image_size
        self.spec = _spec((self.processor.image_mean, self.processor.image_std), image_size)

    def loss(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        image = self.vision(pixel_values=normalize_pixels(pixels, self.spec)).pooler_output
        text = self.text(input_ids=ids).pooler_output  # [B, C]
        return self.scalars(self.image_proj(image), self.text_proj(text))

    def after_step(self, step: int, num_steps: int) -> None:
        """Nothing beyond the optimizer step (the teacher of selfsup.py has its EMA here)."""

    def save(self, out: Path) -> None:
        self.vision.save_pretrained(out)
        self.processor.save_pretrained(out)


def convnext_model_cfg(tokenizer, context_length: int) -> dict:
    """The tiny OpenCLIP config with a text tower for the tiny tokenizer (same visual tower)."""
    text_cfg = dict(
        context_length=context_length,
        vocab_size=len(tokenizer),
        width=TEXT_SPEC["hidden_size"],
        heads=TEXT_SPEC["num_attention_heads"],
        layers=TEXT_SPEC["num_hidden_layers"],
        mlp_ratio=TEXT_SPEC["intermediate_size"] / TEXT_SPEC["hidden_size"],
        pad_id=tokenizer.pad_token_id,
        eos_id=tokenizer.eos_token_id,
        pool_type="eos",
    )
    return dict(CONVNEXT_MODEL_CFG, text_cfg=text_cfg)


class OpenCLIPContrastive(nn.Module):
    """The OpenCLIP ConvNeXt model with its own text tower and logit scale, CLIP's InfoNCE."""

    def __init__(self, tokenizer, context_length: int):
        super().__init__()
        import open_clip

        source = open_clip.create_model("local-dir:" + ensure_asset("convnext"))
        self.model_cfg = convnext_model_cfg(tokenizer, context_length)
        self.model = open_clip.CLIP(**self.model_cfg)
        self.model.visual.load_state_dict(source.visual.state_dict())  # the random-init tower
        self.preprocess_cfg = dict(source.visual.preprocess_cfg)
        mean_std = (self.preprocess_cfg["mean"], self.preprocess_cfg["std"])
        self.spec = _spec(mean_std, CONVNEXT_MODEL_CFG["vision_cfg"]["image_size"])

    def loss(self, pixels: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        image = self.model.encode_image(normalize_pixels(pixels, self.spec), normalize=True)
        text = self.model.encode_text(ids, normalize=True)  # [B, D]
        return clip_loss(image, text, self.model.logit_scale)

    def after_step(self, step: int, num_steps: int) -> None:
        """Nothing beyond the optimizer step."""

    def save(self, out: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, out / "open_clip_model.safetensors")
        preprocess = {k: self.preprocess_cfg[k] for k in ("mean", "std")}
        config = dict(model_cfg=self.model_cfg, preprocess_cfg=preprocess)
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
