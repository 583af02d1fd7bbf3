"""Model construction: towers, connector and LLM from their registries into one VLM."""

from __future__ import annotations

from typing import Optional

from cambrian_train.config.schema import ModelConfig
from cambrian_train.models import llm as _llm  # noqa: F401  (fills LLMS)
from cambrian_train.models import lora
from cambrian_train.models.connectors import mlp as _mlp  # noqa: F401  (fills CONNECTORS)
from cambrian_train.models.connectors import perceiver as _perceiver  # noqa: F401
from cambrian_train.models.connectors import sva as _sva  # noqa: F401  (fills CONNECTORS)
from cambrian_train.models.vision import hf as _hf  # noqa: F401  (fills VISION_TOWERS)
from cambrian_train.models.vision import open_clip as _open_clip  # noqa: F401
from cambrian_train.models.vision import timm as _timm  # noqa: F401
from cambrian_train.models.vlm import VisionLanguageModel
from cambrian_train.models.weights import DeferredWeights, checkpoint_dir
from cambrian_train.registry import CONNECTORS, LLMS, VISION_TOWERS


def build_model(
    cfg: ModelConfig,
    pretrained: bool = True,
    pretrained_llm: Optional[bool] = None,
    defer_weights: bool = False,
) -> VisionLanguageModel:
    """Load the LLM and towers through ``from_pretrained`` and build a fresh connector.

    ``pretrained=False`` builds every part from the ``architecture`` fields of the configs
    instead (no checkpoint needed); call it under ``torch.device("meta")`` to allocate nothing.
    ``pretrained_llm`` (default: ``pretrained``) decides for the LLM alone, e.g. when its weights
    come from elsewhere (an official checkpoint being imported). ``defer_weights=True``
    (training): the parameters of the LLM and of towers whose family supports it (HF towers
    with safetensors) stay on the meta device, and ``model.deferred_weights`` says which
    checkpoint the backend loads into them once they are sharded. ``model.llm.lora`` (and a
    tower's ``lora``) with r > 0 inject peft adapters (models/lora.py), real and seeded even
    on a meta base.
    """
    llm_pretrained = pretrained if pretrained_llm is None else pretrained_llm
    if defer_weights:
        llm = LLMS.get(cfg.llm.source)(cfg.llm, deferred=True)
    else:
        llm = LLMS.get(cfg.llm.source)(cfg.llm, pretrained=llm_pretrained)
    if lora.enabled(cfg.llm.lora):  # before the VLM attaches anything to the LLM
        lora.add_lora(llm, cfg.llm.lora, "model.llm")
    towers = {}
    for name, tower in cfg.towers.items():
        family = VISION_TOWERS.get(tower.source)
        options = {"deferred": True} if defer_weights and family.supports_deferred else {}
        towers[name] = family(tower, dtype=cfg.llm.dtype, pretrained=pretrained, **options)
        if lora.enabled(tower.lora):
            lora.add_lora(towers[name].model, tower.lora, f"model.towers.{name}")
    connector = CONNECTORS.get(cfg.connector.name)(
        cfg.connector,
        tower_sizes={name: t.hidden_size for name, t in towers.items()},
        tower_tokens={name: t.num_tokens for name, t in towers.items()},
        llm_hidden_size=llm.config.hidden_size,
        image_token_len=cfg.image_token_len,
    )
    model = VisionLanguageModel(cfg, towers, connector, llm)
    if defer_weights:
        model.deferred_weights = []
        if cfg.llm.quantization is None:  # a quantised LLM is loaded whole on its GPU
            llm_dir = checkpoint_dir(cfg.llm.checkpoint)
            model.deferred_weights.append(DeferredWeights("llm", llm_dir))
        model.deferred_weights += [
            DeferredWeights(f"towers.{name}.{t.deferred.prefix}", t.deferred.checkpoint_dir)
            for name, t in towers.items()
            if getattr(t, "deferred", None) is not None
        ]
    return model
