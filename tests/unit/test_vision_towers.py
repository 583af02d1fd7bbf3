"""Every vision tower family on its tiny checkpoint, checked against the library's own outputs.

Towers are built from the YAML presets through ``VISION_TOWERS`` exactly as ``build_model`` does;
the reference values come from loading the same checkpoint with the library's own API.
"""

from __future__ import annotations

import functools
from pathlib import Path

import open_clip
import pytest
import timm
import torch
from omegaconf import OmegaConf
from timm.data import resolve_data_config
from transformers import (
    AutoImageProcessor,
    CLIPVisionModel,
    Dinov2Model,
    SiglipVisionModel,
)

from cambrian_train.config.schema import VisionTowerConfig
from cambrian_train.config.store import register_configs
from cambrian_train.models.vision import hf as _hf  # noqa: F401  (fills VISION_TOWERS)
from cambrian_train.models.vision import open_clip as _open_clip  # noqa: F401
from cambrian_train.models.vision import timm as _timm  # noqa: F401
from cambrian_train.models.vision.resample import resample_tokens
from cambrian_train.registry import VISION_TOWERS

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "model" / "vision_tower"
HF_MODELS = {
    "tiny_clip": CLIPVisionModel,
    "tiny_siglip": SiglipVisionModel,
    "tiny_dinov2": Dinov2Model,
}
CONVNEXT_WIDTHS = [40, 80, 160, 320]
# preset, overrides, native token count, hidden size
FAMILIES = {
    "clip": ("tiny_clip", {}, 64, 64),
    "siglip": ("tiny_siglip", {}, 64, 64),
    "dinov2": ("tiny_dinov2", {}, 64, 64),
    "convnext_multi": ("tiny_convnext", {}, 16, sum(CONVNEXT_WIDTHS)),
    "convnext_stage2": ("tiny_convnext", {"multi_stage": False, "select_layer": 2}, 16, 160),
    "timm": ("tiny_timm_vit", {}, 64, 64),
}


def tower_cfg(preset: str, **overrides) -> VisionTowerConfig:
    register_configs()  # the ${tiny_asset:NAME} resolver
    node = OmegaConf.merge(
        OmegaConf.structured(VisionTowerConfig),
        OmegaConf.load(PRESETS / f"{preset}.yaml"),
        overrides,
    )
    return OmegaConf.to_object(node)


@functools.cache
def _cached(preset: str, items: tuple):
    cfg = tower_cfg(preset, **dict(items))
    return VISION_TOWERS.get(cfg.source)(cfg).eval()


def build(preset: str, **overrides):
    return _cached(preset, tuple(sorted(overrides.items())))


def pixels(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def checkpoint(preset: str) -> str:
    return tower_cfg(preset).checkpoint


@functools.cache
def hf_model(preset: str):
    return HF_MODELS[preset].from_pretrained(checkpoint(preset)).eval()


@functools.cache
def convnext_trunk():
    return open_clip.create_model(checkpoint("tiny_convnext")).visual.trunk.eval()


@functools.cache
def timm_model():
    return timm.create_model(checkpoint("tiny_timm_vit"), pretrained=True).eval()


def stage_map(stage: int, px: torch.Tensor) -> torch.Tensor:
    """The ConvNeXt's own stage output [N, C, H, W], run module by module."""
    trunk = convnext_trunk()
    x = trunk.stem(px)
    for block in trunk.stages[: stage + 1]:
        x = block(x)
    return x


def as_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    return feature_map.flatten(2).transpose(1, 2)  # [N, H*W, C]


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_output_shape_native_and_resized(family):
    preset, overrides, native, hidden = FAMILIES[family]
    for num_tokens in (native, 4):
        tower = build(preset, num_tokens=num_tokens, **overrides)
        assert tower.hidden_size == hidden
        assert tower(pixels()).shape == (2, num_tokens, hidden)


@pytest.mark.parametrize("preset", ["tiny_dinov2", "tiny_timm_vit"])
@torch.no_grad()
def test_position_embeddings_follow_image_size(preset):
    tower = build(preset, image_size=96, num_tokens=144)  # checkpoint at 64 px: 8x8 → 12x12
    assert tower(pixels(size=96)).shape == (2, 144, 64)
    assert tower.image_spec.image_size == 96


def test_clip_rejects_other_image_size():
    with pytest.raises(ValueError, match="image_size=96"):
        build("tiny_clip", image_size=96)


def test_image_spec_is_the_library_processors():
    for preset in HF_MODELS:
        proc = AutoImageProcessor.from_pretrained(checkpoint(preset))
        spec = build(preset).image_spec
        assert (spec.mean, spec.std) == (tuple(proc.image_mean), tuple(proc.image_std))
    pp = open_clip.create_model(checkpoint("tiny_convnext")).visual.preprocess_cfg
    spec = build("tiny_convnext").image_spec
    assert (spec.mean, spec.std) == (tuple(pp["mean"]), tuple(pp["std"]))
    assert spec.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    data_cfg = resolve_data_config(model=timm_model())
    spec = build("tiny_timm_vit").image_spec
    assert (spec.mean, spec.std) == (tuple(data_cfg["mean"]), tuple(data_cfg["std"]))
    assert spec.mean == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("preset", list(HF_MODELS))
@torch.no_grad()
def test_hf_select_layer_is_the_models_hidden_state(preset):
    px = pixels()
    hidden = hf_model(preset)(pixel_values=px, output_hidden_states=True).hidden_states
    skip = 0 if preset == "tiny_siglip" else 1  # CLS dropped
    outs = []
    for layer in (1, -1):
        out = build(preset, select_layer=layer, num_tokens=64)(px)
        torch.testing.assert_close(out, hidden[layer][:, skip:])
        outs.append(out)
    assert not torch.allclose(*outs)


@torch.no_grad()
def test_timm_select_layer_is_the_models_intermediate():
    px, model = pixels(), timm_model()
    outs = []
    for layer, block in ((1, 0), (-1, 2)):
        out = build("tiny_timm_vit", select_layer=layer, num_tokens=64)(px)
        (ref,) = model.forward_intermediates(px, indices=[block], output_fmt="NLC")[1]
        torch.testing.assert_close(out, ref)
        outs.append(out)
    assert not torch.allclose(*outs)
    with pytest.raises(ValueError, match="select_layer=0"):
        build("tiny_timm_vit", select_layer=0)


@torch.no_grad()
def test_convnext_select_layer_is_the_stage_map():
    px = pixels()
    for stage in (0, -1):
        tower = build("tiny_convnext", multi_stage=False, select_layer=stage, num_tokens=16)
        assert tower.hidden_size == CONVNEXT_WIDTHS[stage]
        ref = resample_tokens(as_tokens(stage_map(stage % 4, px)), 16)
        torch.testing.assert_close(tower(px), ref)
    with pytest.raises(ValueError, match="select_layer=4"):
        build("tiny_convnext", multi_stage=False, select_layer=4)


@torch.no_grad()
def test_convnext_multi_stage_concatenates_resized_stage_maps():
    px = pixels()
    tower = build("tiny_convnext")
    assert tower.hidden_size == sum(info["num_chs"] for info in convnext_trunk().feature_info)
    out = tower(px)  # [2, 16, 600]
    start = 0
    for stage, width in enumerate(CONVNEXT_WIDTHS):
        ref = resample_tokens(as_tokens(stage_map(stage, px)), 16)
        torch.testing.assert_close(out[..., start : start + width], ref)
        start += width
    assert start == out.shape[-1]


@torch.no_grad()
def test_cls_patch_puts_the_models_cls_first():
    px = pixels()
    hf_refs = {
        preset: hf_model(preset)(pixel_values=px, output_hidden_states=True).hidden_states[-2]
        for preset in ("tiny_clip", "tiny_dinov2")
    }
    (_, prefix) = timm_model().forward_intermediates(
        px, indices=[1], return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True
    )[0]
    cls_refs = {**{k: v[:, 0] for k, v in hf_refs.items()}, "tiny_timm_vit": prefix[:, 0]}
    for preset, cls_ref in cls_refs.items():
        out = build(preset, select_feature="cls_patch", num_tokens=16)(px)
        assert out.shape == (2, 17, 64)
        torch.testing.assert_close(out[:, 0], cls_ref)
        torch.testing.assert_close(out[:, 1:], build(preset, num_tokens=16)(px))


@pytest.mark.parametrize("preset", ["tiny_siglip", "tiny_convnext"])
def test_cls_patch_without_cls_token_is_rejected(preset):
    with pytest.raises(ValueError, match="select_feature=cls_patch") as err:
        build(preset, select_feature="cls_patch")
    assert checkpoint(preset) in str(err.value)


def test_multi_stage_on_a_vit_is_rejected():
    with pytest.raises(ValueError, match="multi_stage=true"):
        build("tiny_clip", multi_stage=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_tower_builds_no_graph_and_trainable_does(family):
    preset, overrides, _, _ = FAMILIES[family]
    px = pixels().requires_grad_(True)
    frozen = build(preset, **overrides)
    frozen.train()  # a frozen tower stays in eval mode (no drop-path noise in stage training)
    assert not frozen.training
    out = frozen(px)
    assert not out.requires_grad
    torch.testing.assert_close(out, frozen(px))
    trainable = build(preset, trainable=True, **overrides)
    trainable.train()
    assert trainable.training
    out = trainable(px)
    assert out.requires_grad
    out.sum().backward()
    assert any(p.grad is not None for p in trainable.parameters())
    trainable.eval()
