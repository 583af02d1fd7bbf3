"""One-call loading of a trained VLM for inference: ``load_pretrained(path)``.

``path`` is either an export directory (infer/export.py: ``cambrian.yaml`` beside ``llm/``,
``towers/<name>/`` and ``connector.safetensors``) or a run checkpoint
(``<run>/<stage>/checkpoint/``, or the stage directory holding it). An export is self-contained;
a run checkpoint is rebuilt from the pretrained checkpoints its ``config.yaml`` names, then its
``trainable.safetensors`` and ``connector.safetensors`` are loaded on top. Either way the result is
the model in eval mode, its tokenizer, and the :class:`ImageTextEncoder` that builds prompts the
way the model was trained (template, aspect ratio, system prompt, length).

Paths may be fsspec URLs (storage.py): a run checkpoint is read in place; an export is downloaded
once into the local cache, since ``from_pretrained`` reads local directories.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple, Union

import torch
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cambrian_train import storage
from cambrian_train.config.schema import ModelConfig, TilingConfig, TrainConfig
from cambrian_train.config.store import register_configs
from cambrian_train.config.validate import vision_slot_len
from cambrian_train.data.dataset import ImageTextEncoder
from cambrian_train.data.templates import get_template
from cambrian_train.models import build_model
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.models.lora import load_peft_adapter
from cambrian_train.models.vlm import VisionLanguageModel
from cambrian_train.train.checkpoint import (
    CONFIG_FILE,
    CONNECTOR_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    load_connector,
)

log = logging.getLogger(__name__)

EXPORT_CONFIG = "cambrian.yaml"
LOCAL_DIR = "local-dir:"  # open_clip / timm prefix of a local checkpoint directory


@dataclass
class PromptSettings:
    """How prompts are built for the model: what its training used."""

    template: str = MISSING  # data/templates.py name
    image_aspect_ratio: str = "pad"
    system_prompt: Optional[str] = None  # None = the template's default, "" = none
    max_length: int = 2048  # longest prompt accepted (the training sequence length)
    max_images: int = 1  # image slots per prompt
    # the training run's data.tiling: images are tiled at inference exactly as in training
    tiling: TilingConfig = field(default_factory=TilingConfig)
    num_frames: int = 8  # data.video.num_frames


@dataclass
class ExportedConfig:
    """``cambrian.yaml``: the model config (checkpoints relative to the export directory) and
    the prompt settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptSettings = field(default_factory=PromptSettings)
    source: str = ""  # what was exported (a run checkpoint or an official checkpoint)
    # a peft adapter directory of the LLM (relative), loaded into model.llm.lora's adapters
    llm_adapter: Optional[str] = None


def parse_config(path: Union[str, Path], schema):
    """A YAML file (local or URL) → the ``schema`` dataclass; type errors name the file and the
    key."""
    register_configs()  # ${tiny_asset:...} interpolations, should a file still hold one
    try:
        loaded = OmegaConf.create(storage.read_text(path))
        merged = OmegaConf.merge(OmegaConf.structured(schema), loaded)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ValueError(f"{path}: {key + ': ' if key else ''}{str(err).splitlines()[0]}") from None


def prompt_settings(cfg: TrainConfig, stage: str) -> PromptSettings:
    """The prompt settings of ``stage`` of a run config (its template and sequence length)."""
    if stage not in cfg.stages:
        raise ValueError(f"stage {stage!r} is not one of the config's stages {sorted(cfg.stages)}")
    st = cfg.stages[stage]
    return PromptSettings(
        template=st.template or cfg.model.llm.template,
        image_aspect_ratio=cfg.data.image_aspect_ratio,
        system_prompt=cfg.data.system_prompt,
        max_length=st.max_length,
        max_images=cfg.data.max_images,
        tiling=cfg.data.tiling,
        num_frames=cfg.data.video.num_frames,
    )


def checkpoint_dir(path: Union[str, Path]) -> str:
    """A run checkpoint directory, given it or the stage directory holding ``checkpoint/``."""
    for candidate in (str(path), storage.join(path, "checkpoint")):
        if storage.isfile(storage.join(candidate, TRAINABLE_FILE)):
            return candidate
    raise ValueError(f"{path}: not a run checkpoint (no {TRAINABLE_FILE} here or in checkpoint/)")


def read_run_checkpoint(path: Union[str, Path]) -> Tuple[str, TrainConfig, str]:
    """→ (checkpoint dir, its run config, the key in ``stages`` of the stage that wrote it)."""
    ckpt = checkpoint_dir(path)
    for name in (CONFIG_FILE, STATE_FILE):
        if not storage.isfile(storage.join(ckpt, name)):
            raise ValueError(f"{ckpt}: run checkpoint without {name}; cannot rebuild the model")
    cfg = parse_config(storage.join(ckpt, CONFIG_FILE), TrainConfig)
    name = json.loads(storage.read_text(storage.join(ckpt, STATE_FILE))).get("stage")
    keys = [k for k, st in cfg.stages.items() if k == name] or [
        k for k, st in cfg.stages.items() if st.name == name
    ]
    if len(keys) != 1:
        raise ValueError(
            f"{storage.join(ckpt, STATE_FILE)}: stage={name!r} is not one of {sorted(cfg.stages)}"
        )
    return ckpt, cfg, keys[0]


def load_trainable(model: VisionLanguageModel, path: str) -> int:
    """Load ``trainable.safetensors`` into ``model``; every tensor must fit. → tensors loaded."""
    tensors = storage.load_safetensors(path)
    own = model.state_dict()
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} tensors are not in this model: {unknown[:5]}")
    for name, value in tensors.items():
        if own[name].shape != value.shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(own[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    return len(tensors)


def model_from_checkpoint(
    path: Union[str, Path], full_precision_base: bool = False
) -> Tuple[VisionLanguageModel, TrainConfig, str]:
    """Rebuild a run checkpoint's model: pretrained parts, then the trained and connector
    tensors. → (model in eval mode, run config, stage name). ``full_precision_base``: a
    QLoRA / int8 run's adapters go onto the unquantised LLM (what an export merges into)."""
    ckpt, cfg, stage = read_run_checkpoint(path)
    if full_precision_base and cfg.model.llm.quantization is not None:
        cfg.model.llm.quantization = None
    model = build_model(cfg.model, pretrained=True)
    count = load_trainable(model, storage.join(ckpt, TRAINABLE_FILE))
    load_connector(model, storage.join(ckpt, CONNECTOR_FILE))
    log.info("loaded %s: %d trained tensors (stage %s)", ckpt, count, stage)
    return model.eval(), cfg, stage


def absolute_checkpoint(root: Path, checkpoint: str, key: str) -> str:
    """A checkpoint path relative to an export directory → absolute (``local-dir:`` kept)."""
    prefix = LOCAL_DIR if checkpoint.startswith(LOCAL_DIR) else ""
    local = root / checkpoint[len(prefix) :]
    if not local.is_dir():
        raise ValueError(f"{root / EXPORT_CONFIG}: {key}={checkpoint!r} is not a directory of it")
    return prefix + str(local.resolve())


def read_export(path: Union[str, Path]) -> ExportedConfig:
    """Read a local export's ``cambrian.yaml`` with every checkpoint made absolute."""
    root = Path(path)
    cfg = parse_config(root / EXPORT_CONFIG, ExportedConfig)
    llm = cfg.model.llm
    llm.checkpoint = absolute_checkpoint(root, llm.checkpoint, "model.llm.checkpoint")
    if llm.tokenizer is not None:
        llm.tokenizer = absolute_checkpoint(root, llm.tokenizer, "model.llm.tokenizer")
    for name, tower in cfg.model.towers.items():
        key = f"model.towers.{name}.checkpoint"
        tower.checkpoint = absolute_checkpoint(root, tower.checkpoint, key)
    if cfg.llm_adapter is not None:
        cfg.llm_adapter = absolute_checkpoint(root, cfg.llm_adapter, "llm_adapter")
    return cfg


def model_from_export(path: Union[str, Path]) -> Tuple[VisionLanguageModel, ExportedConfig]:
    """Build an exported model (every part from the local export directory), in eval mode."""
    cfg = read_export(path)
    model = build_model(cfg.model, pretrained=True)
    if cfg.llm_adapter is not None:
        load_peft_adapter(model.llm, cfg.llm_adapter)
    load_connector(model, str(Path(path) / CONNECTOR_FILE))
    return model.eval(), cfg


def make_encoder(tokenizer, model: VisionLanguageModel, prompt: PromptSettings) -> ImageTextEncoder:
    """The prompt encoder for inference; image paths are taken as given (absolute or cwd)."""
    return ImageTextEncoder(
        tokenizer=tokenizer,
        template=get_template(prompt.template, tokenizer),
        image_specs=model.image_specs(),
        image_folder="",
        slot_len=vision_slot_len(model.cfg.image_token_len, model.cfg.image_newline),
        max_images=prompt.max_images,
        max_length=prompt.max_length,
        aspect_ratio=prompt.image_aspect_ratio,
        system_prompt=prompt.system_prompt,
        tiling=prompt.tiling,
        num_frames=prompt.num_frames,
    )


def is_export(path: Union[str, Path]) -> bool:
    return storage.isfile(storage.join(path, EXPORT_CONFIG))


def load_pretrained(
    path: Union[str, Path], device: Union[str, torch.device] = "cpu"
) -> Tuple[VisionLanguageModel, object, ImageTextEncoder]:
    """An export dir or a run checkpoint, local or a URL → (model in eval mode on ``device``,
    tokenizer, prompt encoder)."""
    if not storage.isdir(path):
        raise ValueError(f"model path {path} is not a directory")
    if is_export(path):
        model, cfg = model_from_export(storage.download_dir(path))
        model_cfg, prompt = cfg.model, cfg.prompt
    else:
        model, run_cfg, stage = model_from_checkpoint(path)
        model_cfg, prompt = run_cfg.model, prompt_settings(run_cfg, stage)
    tokenizer = load_tokenizer(model_cfg.llm)
    model = model.to(device)
    return model, tokenizer, make_encoder(tokenizer, model, prompt)
