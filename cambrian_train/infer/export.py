"""Export a trained VLM as a self-contained directory, a connector on its own, or import the
official Cambrian-1 weights into the same layout.

An export directory holds ``llm/`` (the LLM and its tokenizer via ``save_pretrained``: loadable by
transformers alone), ``towers/<name>/`` (each tower in its family's own format, loaded by the same
``from_pretrained`` / ``create_model("local-dir:...")`` code as the original),
``connector.safetensors`` (connector + image newline) and ``cambrian.yaml`` (infer/load.py: the
model config with those relative checkpoints, and the prompt settings); ``load_pretrained`` reads
it in one call.

A connector-only export is ``connector.safetensors`` + ``connector.json`` (what it fits: connector
config, image tokens, towers, LLM width); its directory or file is a valid
``stages.finetune.init_from``. The CLI is infer/export_cli.py (``cambrian-export``).

Inputs and outputs may be fsspec URLs (storage.py). An export is built in a staging directory
(``<out>.tmp`` beside a local ``out``, a local temporary directory for a URL) and then published:
renamed into place, or uploaded with its ``cambrian.yaml`` / ``connector.json`` last.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Union

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from cambrian_train import storage
from cambrian_train.config.schema import LoRAConfig, ModelConfig, TrainConfig, VisionTowerConfig
from cambrian_train.infer.load import (
    EXPORT_CONFIG,
    LOCAL_DIR,
    ExportedConfig,
    PromptSettings,
    model_from_checkpoint,
    prompt_settings,
    read_run_checkpoint,
)
from cambrian_train.models import build_model, lora
from cambrian_train.models.convert import load_official, official_name
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.models.vision.base import VisionTower
from cambrian_train.models.vlm import VisionLanguageModel
from cambrian_train.train.checkpoint import CONNECTOR_FILE, connector_state, tensors_digest

log = logging.getLogger(__name__)

CONNECTOR_CONFIG = "connector.json"
ADAPTER_DIR = "llm_adapter"  # a peft adapter of the LLM in llm/ (exports with adapters="peft")
ADAPTER_MODES = ("merge", "peft")
OFFICIAL_INDEX = "model.safetensors.index.json"
OFFICIAL_SINGLE = "model.safetensors"
PathLike = Union[str, Path]


# ---- towers, each in its family's own loadable format ----------------------------------------


def _copy_weights(full: nn.Module, pruned: nn.Module, checkpoint: str) -> None:
    """Copy a pruned copy's weights (a tower keeps only the layers it uses) into the full model."""
    source = pruned.state_dict()
    own = full.state_dict()
    bad = [k for k, v in source.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise ValueError(f"tower {checkpoint}: weights {bad[:5]} do not fit its full model")
    full.load_state_dict(source, strict=False)


def _save_hf_tower(tower: VisionTower, cfg: VisionTowerConfig, out: Path) -> str:
    from transformers import AutoImageProcessor

    tower.model.save_pretrained(out)
    AutoImageProcessor.from_pretrained(cfg.checkpoint).save_pretrained(out)
    return ""


def _save_open_clip_tower(tower: VisionTower, cfg: VisionTowerConfig, out: Path) -> str:
    import open_clip

    full = open_clip.create_model(cfg.checkpoint)  # the text tower too: open_clip's own layout
    _copy_weights(full.visual.trunk, tower.trunk, cfg.checkpoint)
    full = full.to(next(tower.parameters()).dtype)
    save_file(
        {k: v.contiguous() for k, v in full.state_dict().items()},
        str(out / "open_clip_model.safetensors"),
    )
    config = dict(
        model_cfg=open_clip.get_model_config(cfg.checkpoint),
        preprocess_cfg=dict(full.visual.preprocess_cfg),
    )
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return LOCAL_DIR


def _save_timm_tower(tower: VisionTower, cfg: VisionTowerConfig, out: Path) -> str:
    import timm
    from timm.models import save_for_hf

    full = timm.create_model(cfg.checkpoint, pretrained=True, img_size=cfg.image_size)
    _copy_weights(full, tower.model, cfg.checkpoint)
    full = full.to(next(tower.parameters()).dtype)
    spec = tower.image_spec
    data_config = dict(mean=spec.mean, std=spec.std)
    save_for_hf(full, out, safe_serialization=True, data_config=data_config)
    return LOCAL_DIR


# tower source → writer of its directory; returns the checkpoint prefix its loader expects
TOWER_WRITERS: Dict[str, Callable[[VisionTower, VisionTowerConfig, Path], str]] = {
    "hf_clip": _save_hf_tower,
    "hf_siglip": _save_hf_tower,
    "hf_dinov2": _save_hf_tower,
    "open_clip": _save_open_clip_tower,
    "timm": _save_timm_tower,
}


# ---- export directories ------------------------------------------------------------------------


def _staging_dir(out_dir: str, overwrite: bool) -> Path:
    """A fresh local directory to build ``out_dir``'s content in."""
    if storage.ls(out_dir) and not overwrite:
        raise ValueError(
            f"output directory {out_dir} exists and is not empty (overwrite to replace)"
        )
    if storage.is_url(out_dir):
        return Path(tempfile.mkdtemp(prefix="cambrian-export-"))
    tmp = Path(out_dir + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _publish(tmp: Path, out_dir: str, last: str) -> str:
    """Put the staged directory at ``out_dir`` (replacing it); ``last`` marks it complete."""
    if not storage.is_url(out_dir):
        return storage.publish_dir(tmp, out_dir, last)
    try:
        return storage.upload_dir(tmp, out_dir, last)
    finally:
        shutil.rmtree(tmp)


def write_export(
    model: VisionLanguageModel,
    tokenizer,
    model_cfg: ModelConfig,
    prompt: PromptSettings,
    out_dir: PathLike,
    source: str = "",
    overwrite: bool = False,
    adapters: str = "merge",
) -> str:
    """Write ``model`` as an export directory at ``out_dir`` (local or URL; staged, then
    published). LoRA adapters (models/lora.py) are merged into the LLM (``adapters="merge"``:
    plain HF weights) or written beside the base LLM as a peft adapter (``"peft"``:
    ``llm_adapter/``, which ``PeftModel.from_pretrained(llm, llm_adapter)`` also reads); tower
    adapters are always merged. Either way ``model``'s adapters are folded or removed in place."""
    if adapters not in ADAPTER_MODES:
        raise ValueError(f"adapters={adapters!r}: use one of {list(ADAPTER_MODES)}")
    out_dir = storage.absolute(out_dir)
    tmp = _staging_dir(out_dir, overwrite)
    exported = dataclasses.replace(model_cfg, towers=dict(model_cfg.towers))
    llm_lora, adapter_dir = LoRAConfig(), None
    if lora.has_adapters(model.llm) and adapters == "peft":
        tensors = lora.strip_lora(model.llm)  # llm/ gets the base, llm_adapter/ the adapter
        lora.write_peft_adapter(tensors, model_cfg.llm.lora, "../llm", str(tmp / ADAPTER_DIR))
        llm_lora, adapter_dir = model_cfg.llm.lora, ADAPTER_DIR
    elif lora.has_adapters(model.llm):
        log.info("merged LoRA adapters of %d LLM layers", lora.merge_lora(model.llm))
    model.llm.save_pretrained(tmp / "llm")
    tokenizer.save_pretrained(tmp / "llm")
    exported.llm = dataclasses.replace(
        model_cfg.llm, checkpoint="llm", tokenizer=None, lora=llm_lora, quantization=None
    )
    for name, tower_cfg in model_cfg.towers.items():
        if lora.has_adapters(model.towers[name]):  # a tower is saved in its family's format
            lora.merge_lora(model.towers[name])
            tower_cfg = dataclasses.replace(tower_cfg, lora=LoRAConfig(r=0))
        if tower_cfg.source not in TOWER_WRITERS:
            raise ValueError(
                f"model.towers.{name}.source={tower_cfg.source!r}: no exporter; known "
                f"{sorted(TOWER_WRITERS)}"
            )
        rel = f"towers/{name}"
        (tmp / rel).mkdir(parents=True)
        prefix = TOWER_WRITERS[tower_cfg.source](model.towers[name], tower_cfg, tmp / rel)
        exported.towers[name] = dataclasses.replace(tower_cfg, checkpoint=prefix + rel)
    save_file(connector_state(model), str(tmp / CONNECTOR_FILE))
    config = ExportedConfig(model=exported, prompt=prompt, source=source, llm_adapter=adapter_dir)
    (tmp / EXPORT_CONFIG).write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    log.info("exported %s to %s", source or "model", out_dir)
    return _publish(tmp, out_dir, last=EXPORT_CONFIG)


def export_checkpoint(
    checkpoint: PathLike, out_dir: PathLike, overwrite: bool = False, adapters: str = "merge"
) -> str:
    """A run checkpoint (``<run>/<stage>/checkpoint``) → a self-contained export directory
    (``adapters``: what becomes of LoRA adapters, see :func:`write_export`)."""
    model, cfg, stage = model_from_checkpoint(checkpoint, full_precision_base=True)
    tokenizer = load_tokenizer(cfg.model.llm)
    source = storage.absolute(checkpoint)
    prompt = prompt_settings(cfg, stage)
    return write_export(model, tokenizer, cfg.model, prompt, out_dir, source, overwrite, adapters)


def connector_fit(cfg: ModelConfig) -> dict:
    """What a connector file fits: its config, visual tokens, the towers feeding it, LLM width."""
    return dict(
        connector=dataclasses.asdict(cfg.connector),
        image_token_len=cfg.image_token_len,
        image_newline=cfg.image_newline,
        towers={
            name: dict(source=t.source, checkpoint=t.checkpoint, num_tokens=t.num_tokens)
            for name, t in cfg.towers.items()
        },
        llm=dict(checkpoint=cfg.llm.checkpoint, hidden_size=cfg.llm.hidden_size),
    )


def export_connector(checkpoint: PathLike, out_dir: PathLike, overwrite: bool = False) -> str:
    """A run checkpoint's connector → ``connector.safetensors`` + ``connector.json`` in
    ``out_dir`` (usable as ``stages.finetune.init_from``, the directory or the file)."""
    ckpt, cfg, stage = read_run_checkpoint(checkpoint)
    out_dir = storage.absolute(out_dir)
    tmp = _staging_dir(out_dir, overwrite)
    storage.download(storage.join(ckpt, CONNECTOR_FILE), tmp / CONNECTOR_FILE)
    info = dict(
        connector_fit(cfg.model),
        stage=stage,
        digest=tensors_digest(load_file(str(tmp / CONNECTOR_FILE))),
        source=storage.absolute(ckpt),
    )
    (tmp / CONNECTOR_CONFIG).write_text(json.dumps(info, indent=2))
    return _publish(tmp, out_dir, last=CONNECTOR_CONFIG)


# ---- official Cambrian-1 checkpoints -----------------------------------------------------------


@dataclass
class ImportReport:
    out_dir: str
    converted: int  # tensors loaded into the model
    skipped_towers: List[str] = field(default_factory=list)  # tower tensors (towers load their own)


def read_official_state(official_dir: PathLike) -> Dict[str, torch.Tensor]:
    """All tensors of a (sharded) safetensors checkpoint; the index must match the shards."""
    root = Path(official_dir)
    index = root / OFFICIAL_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: no 'weight_map' of tensor name → shard file")
        state: Dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (root / shard).is_file():
                raise ValueError(f"{index}: shard {shard} is missing from {root}")
            state.update(load_file(str(root / shard)))
        absent = sorted(set(weight_map) - set(state))
        if absent:
            raise ValueError(
                f"{index}: {len(absent)} indexed tensors are in no shard: {absent[:5]}"
            )
        return state
    if (root / OFFICIAL_SINGLE).is_file():
        return load_file(str(root / OFFICIAL_SINGLE))
    raise ValueError(f"{root}: neither {OFFICIAL_INDEX} nor {OFFICIAL_SINGLE} (safetensors only)")


def unknown_names(names: Sequence[str]) -> List[str]:
    """Official tensor names with no counterpart in this model's naming."""
    unknown = []
    for name in names:
        try:
            official_name(name)
        except ValueError:
            unknown.append(name)
    return unknown


def model_for_import(cfg: ModelConfig) -> VisionLanguageModel:
    """The model to load official weights into: towers from their own checkpoints; the LLM from
    its ``architecture`` fields when the config has them (its weights all come from the official
    checkpoint, nothing is downloaded), else from its checkpoint."""
    return build_model(cfg, pretrained=True, pretrained_llm=not cfg.llm.architecture)


def official_tokenizer(official_dir: Path, cfg: ModelConfig):
    """The official directory's tokenizer when it ships one, else the configured LLM's."""
    if (official_dir / "tokenizer_config.json").is_file():
        return load_tokenizer(dataclasses.replace(cfg.llm, tokenizer=str(official_dir)))
    return load_tokenizer(cfg.llm)


def import_official(
    official_dir: PathLike, out_dir: PathLike, cfg: TrainConfig, overwrite: bool = False
) -> ImportReport:
    """Official Cambrian-named weights → an export directory of the model ``cfg`` describes.

    Unknown tensor names, missing or unexpected parameters and shape mismatches are all errors
    that list the names; vision-tower tensors are skipped (towers load from their checkpoints).
    A URL ``official_dir`` is downloaded into the local cache first.
    """
    source = storage.absolute(official_dir)
    official_dir = Path(storage.download_dir(official_dir))
    if not cfg.run_stages:
        raise ValueError("run_stages is empty: the last stage names the prompt settings to export")
    state = read_official_state(official_dir)
    unknown = unknown_names(list(state))
    if unknown:
        raise ValueError(
            f"{official_dir}: {len(unknown)} tensor names have no counterpart in this model: "
            f"{unknown[:10]}"
        )
    model = model_for_import(cfg.model)
    conversion = load_official(model, state)
    tokenizer = official_tokenizer(official_dir, cfg.model)
    prompt = prompt_settings(cfg, cfg.run_stages[-1])
    out = write_export(model.eval(), tokenizer, cfg.model, prompt, out_dir, source, overwrite)
    converted = len(conversion.state_dict)
    return ImportReport(out, converted, conversion.skipped_towers)
