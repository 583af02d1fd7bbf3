"""Tiny random-init checkpoints of real model families, for CPU tests and the demo.

Nothing can be downloaded here, so the tiny presets point at directories generated on first use
(deterministically, from fixed seeds) in the libraries' own hub layouts (``save_pretrained``,
open_clip's ``open_clip_config.json`` + weights, timm's ``save_for_hf``). They are then loaded
through exactly the same code that loads a hub checkpoint (``from_pretrained``, or
``create_model("local-dir:<dir>")`` where a hub one is ``create_model("hf-hub:<repo>")``). The
config resolver ``${tiny_asset:NAME}`` returns (and if needed creates) the directory of asset NAME.

Assets: ``tokenizer`` (byte-level BPE with a Llama-3-style chat template), ``llama`` (HF Llama),
``clip`` (HF CLIP vision tower + image processor), ``siglip`` (HF SigLIP vision tower + processor),
``dinov2`` (HF DINOv2 + processor), ``convnext`` (OpenCLIP model with a timm ConvNeXt image
tower) and ``timm_vit`` (timm ViT with a CLS and two register tokens).

Pre-trained assets ``clip_pt``, ``siglip_pt``, ``dinov2_pt`` and ``convnext_pt``: the same
towers after pre-training on synthetic scenes with their families' objectives
(cambrian_train/vision_pretrain/; about a minute each on one core), saved in the same layouts.
``llama_pt``: the tiny Llama after pre-training on text drills (option letters, short answers,
word classes, sums, word counts; cambrian_train/llm_pretrain/), saved like ``llama``.
Their directory names carry a digest of the recipe, so a changed recipe (or a reduced budget,
``$CAMBRIAN_TINY_PRETRAIN_STEPS`` steps per model, as the tests use) never reuses another's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict

from cambrian_train.fileutil import file_lock

log = logging.getLogger(__name__)

SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<pad>",
    "<image>",
]
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] "
    "+ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
LLAMA_SPEC = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
VISION_SPEC = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4
)
VISION_IMAGE_SIZE = 64
VISION_PATCH_SIZE = 8
DINOV2_SPEC = dict(hidden_size=64, mlp_ratio=2, num_hidden_layers=3, num_attention_heads=4)
# OpenCLIP model_cfg: timm convnext_atto stages 40/80/160/320 wide (16², 8², 4², 2² maps at 64 px);
# drop-path 0.1 as in the real ConvNeXt-XXL config (a frozen tower must stay deterministic).
CONVNEXT_MODEL_CFG = dict(
    embed_dim=32,
    vision_cfg=dict(
        timm_model_name="convnext_atto",
        timm_model_pretrained=False,
        timm_pool="",
        timm_proj="linear",
        timm_drop=0.0,
        timm_drop_path=0.1,
        image_size=VISION_IMAGE_SIZE,
    ),
    text_cfg=dict(context_length=16, vocab_size=64, width=32, heads=2, layers=1),
)
TIMM_VIT_ARCH = "vit_base_patch16_224"
TIMM_VIT_SPEC = dict(
    img_size=VISION_IMAGE_SIZE,
    patch_size=VISION_PATCH_SIZE,
    embed_dim=64,
    depth=3,
    num_heads=4,
    mlp_ratio=2.0,
    reg_tokens=2,
    num_classes=0,
)
VOCAB_SIZE = 1024
_CORPUS_WORDS = (
    "a an the and or of in on at to is are was be this that what which how many there image "
    "picture shows describe briefly answer with single word phrase question color colour shape "
    "shapes red green blue yellow purple orange black white grey gray circle square triangle "
    "one two three four five 1 2 3 4 5 6 7 8 9 0 left right top bottom middle small large big "
    "written text letter cat dog sun box map cup hat yes no you i it is can see it's . , ? ! : "
    "user assistant system hello thanks please model vision language token"
)


def tiny_root() -> Path:
    """Where tiny assets live: $CAMBRIAN_TINY_DIR or ~/.cache/cambrian-train/tiny/<spec hash>."""
    base = os.environ.get("CAMBRIAN_TINY_DIR")
    if base:
        return Path(base)
    spec = json.dumps(
        [LLAMA_SPEC, VISION_SPEC, VOCAB_SIZE, SPECIAL_TOKENS, _CORPUS_WORDS]
        + [DINOV2_SPEC, CONVNEXT_MODEL_CFG, TIMM_VIT_ARCH, TIMM_VIT_SPEC]
    )
    digest = hashlib.sha256(spec.encode()).hexdigest()[:10]
    return Path.home() / ".cache" / "cambrian-train" / "tiny" / digest


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    words = _CORPUS_WORDS.split()
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE
    fast.save_pretrained(out)


def build_llama(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ensure_asset("tokenizer"))
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **LLAMA_SPEC,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)


def build_clip(out: Path) -> None:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        image_size=VISION_IMAGE_SIZE, patch_size=VISION_PATCH_SIZE, **VISION_SPEC
    )
    torch.manual_seed(1)
    CLIPVisionModel(config).save_pretrained(out)
    size = {"shortest_edge": VISION_IMAGE_SIZE}
    crop = {"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE}
    CLIPImageProcessor(size=size, crop_size=crop).save_pretrained(out)


def build_siglip(out: Path) -> None:
    import torch
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        image_size=VISION_IMAGE_SIZE, patch_size=VISION_PATCH_SIZE, **VISION_SPEC
    )
    torch.manual_seed(2)
    SiglipVisionModel(config).save_pretrained(out)
    size = {"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE}
    SiglipImageProcessor(size=size).save_pretrained(out)


def build_dinov2(out: Path) -> None:
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(image_size=VISION_IMAGE_SIZE, patch_size=VISION_PATCH_SIZE, **DINOV2_SPEC)
    torch.manual_seed(3)
    Dinov2Model(config).save_pretrained(out)
    BitImageProcessor(
        size={"shortest_edge": VISION_IMAGE_SIZE},
        crop_size={"height": VISION_IMAGE_SIZE, "width": VISION_IMAGE_SIZE},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)


def build_convnext(out: Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(4)
    model = open_clip.CLIP(**CONVNEXT_MODEL_CFG)
    save_file(model.state_dict(), out / "open_clip_model.safetensors")
    preprocess = dict(
        mean=list(open_clip.OPENAI_DATASET_MEAN), std=list(open_clip.OPENAI_DATASET_STD)
    )
    config = dict(model_cfg=CONVNEXT_MODEL_CFG, preprocess_cfg=preprocess)
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))


def build_timm_vit(out: Path) -> None:
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(5)
    model = timm.create_model(TIMM_VIT_ARCH, pretrained=False, **TIMM_VIT_SPEC)
    data_config = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    save_for_hf(model, out, safe_serialization=True, data_config=data_config)


BUILDERS: Dict[str, Callable[[Path], None]] = {
    "tokenizer": build_tokenizer,
    "llama": build_llama,
    "clip": build_clip,
    "siglip": build_siglip,
    "dinov2": build_dinov2,
    "convnext": build_convnext,
    "timm_vit": build_timm_vit,
}


PRETRAINED_FAMILIES = ("clip", "siglip", "dinov2", "convnext")
PRETRAIN_STEPS_ENV = "CAMBRIAN_TINY_PRETRAIN_STEPS"


def pretrain_steps_override() -> int | None:
    """Steps per tower from ``$CAMBRIAN_TINY_PRETRAIN_STEPS`` (None: each recipe's own)."""
    value = os.environ.get(PRETRAIN_STEPS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{PRETRAIN_STEPS_ENV}={value!r} must be a positive integer")
    return int(value)


def _pretrained_family(name: str) -> str | None:
    family = name.removesuffix("_pt")
    return family if name.endswith("_pt") and family in PRETRAINED_FAMILIES else None


# the tiny Llama after text-drill pre-training (cambrian_train/llm_pretrain/)
LLM_PRETRAINED = "llama_pt"


def asset_names() -> list[str]:
    return sorted(BUILDERS) + [f"{family}_pt" for family in PRETRAINED_FAMILIES] + [LLM_PRETRAINED]


def _asset_dir_name(name: str) -> str:
    """``name`` for a random-init asset; ``<name>-<recipe digest>`` for a pre-trained one."""
    if name == LLM_PRETRAINED:
        from cambrian_train.llm_pretrain import train as llm

        return f"{name}-{llm.recipe_digest(llm.recipe_with(pretrain_steps_override()))}"
    family = _pretrained_family(name)
    if family is None:
        return name
    from cambrian_train.vision_pretrain.train import recipe_digest, recipe_for

    return f"{name}-{recipe_digest(recipe_for(family, pretrain_steps_override()))}"


def _builder(name: str) -> Callable[[Path], None]:
    if name == LLM_PRETRAINED:
        from cambrian_train.llm_pretrain.train import pretrain_llm, recipe_with

        recipe = recipe_with(pretrain_steps_override())

        def build_llm(out: Path) -> None:
            log.info(
                "pre-training the tiny Llama on text drills (once; cached under %s)", tiny_root()
            )
            pretrain_llm(out, ensure_asset("llama"), recipe)

        return build_llm
    family = _pretrained_family(name)
    if family is None:
        return BUILDERS[name]
    from cambrian_train.vision_pretrain.train import pretrain_tower, recipe_for

    recipe = recipe_for(family, pretrain_steps_override())

    def build(out: Path) -> None:
        log.info("pre-training tiny tower %s (once; cached under %s)", name, tiny_root())
        pretrain_tower(family, out, recipe)

    return build


def ensure_asset(name: str) -> str:
    """Return the directory of tiny asset ``name``, building it first if missing.

    Builds into a temporary directory renamed into place, under a file lock, so concurrent
    processes (torchrun ranks, pytest workers) never see a half-written checkpoint.
    """
    if name not in BUILDERS and _pretrained_family(name) is None and name != LLM_PRETRAINED:
        raise ValueError(f"tiny asset {name!r} is not one of {asset_names()}")
    root = tiny_root()
    dir_name = _asset_dir_name(name)
    target = root / dir_name
    if target.is_dir():
        return str(target)
    with file_lock(root / f".{dir_name}.lock"):
        if not target.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{dir_name}-", dir=root))
            try:
                _builder(name)(tmp)
                os.rename(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            log.info("built tiny asset %s at %s", name, target)
    return str(target)
