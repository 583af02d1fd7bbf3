"""LoRA adapters through peft: injected into the LLM (and trainable towers), merged at export.

``peft.inject_adapter_in_model`` replaces each targeted ``nn.Linear`` by a LoRA layer that
keeps the original as ``base_layer``: parameter names gain ``.base_layer`` for the base weight
and ``.lora_A.default`` / ``.lora_B.default`` for the adapter. The model stays the HF module it
was (no ``PeftModel`` wrapper), so the VLM, the backends' shard units and the checkpoint code
see one module tree; only the names change, and :func:`base_name` maps them back to the
checkpoint's for deferred (sharded) loading.

Adapters are created in float32 (master weights), whatever the base's dtype, and on the host
even when the base is on the meta device (deferred loading): they are small (r·(in+out) per
matrix), every process draws them from the same seeded generator, and the backend shards them
with the rest. ``lora_B`` starts at zero, so the adapted model equals its base at step 0.

Why peft rather than hand-written adapters: its layers, merge/unmerge arithmetic, dropout and
scaling (``alpha / r``, or rsLoRA) and its adapter file format are what users load elsewhere
(``PeftModel.from_pretrained``); :func:`write_peft_adapter` writes that format.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, List

import torch
from torch import nn

from cambrian_train.config.schema import LoRAConfig

ADAPTER = "default"  # peft's adapter name
PEFT_PREFIX = "base_model.model."  # how PeftModel.save_pretrained prefixes adapter tensors
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_ADAPTER_PART = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.")


def enabled(cfg: LoRAConfig) -> bool:
    return cfg.r > 0


def peft_config(cfg: LoRAConfig):
    from peft import LoraConfig

    targets = cfg.target_modules
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        # "all-linear": every Linear but the output head (peft's rule), else module names
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        use_rslora=cfg.rslora,
        bias="none",
    )


def add_lora(module: nn.Module, cfg: LoRAConfig, where: str) -> int:
    """Inject adapters into ``module`` (``where`` names its config for errors); → the number of
    adapted layers. The base parameters keep their ``requires_grad`` (the stage freezes them)."""
    from peft import inject_adapter_in_model

    try:
        inject_adapter_in_model(peft_config(cfg), module, adapter_name=ADAPTER)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise ValueError(
            f"{where}.lora.target_modules={list(cfg.target_modules)}: {err}; name the module "
            "suffixes of this model's Linear layers (or use [all-linear])"
        ) from None
    layers = lora_layers(module)
    generator = torch.Generator().manual_seed(cfg.seed)
    for layer in layers:
        _materialize_adapter(layer, generator)
    return len(layers)


def _is_lora(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def lora_layers(module: nn.Module) -> List[nn.Module]:
    return [m for m in module.modules() if _is_lora(m)]


def has_adapters(module: nn.Module) -> bool:
    return bool(lora_layers(module))


def is_adapter_name(name: str) -> bool:
    """Whether a parameter name (any prefix) is a LoRA adapter's."""
    return _ADAPTER_PART.search("." + name) is not None


def adapter_parameters(module: nn.Module) -> List[nn.Parameter]:
    return [p for n, p in module.named_parameters() if is_adapter_name(n)]


def base_name(name: str) -> str:
    """A parameter name of an adapted model → the name of the same tensor in the base
    checkpoint (``q_proj.base_layer.weight`` → ``q_proj.weight``)."""
    return name.replace(".base_layer.", ".")


def _materialize_adapter(layer: nn.Module, generator: torch.Generator) -> None:
    """Real float32 host tensors for the layer's adapter, initialised as peft does (A:
    Kaiming-uniform with a=√5, B: zeros) from ``generator`` — also when the base is on the meta
    device, where peft would have put the adapter."""
    for part in (layer.lora_A, layer.lora_B):
        linear = part[ADAPTER]
        weight = torch.empty(linear.weight.shape, dtype=torch.float32)
        linear.weight = nn.Parameter(weight, requires_grad=linear.weight.requires_grad)
        if linear.bias is not None:
            linear.bias = nn.Parameter(torch.zeros(linear.bias.shape), requires_grad=False)
    fan_in = layer.lora_A[ADAPTER].weight.shape[1]
    bound = 1.0 / fan_in**0.5  # kaiming_uniform_(a=sqrt(5)) of a Linear: U(-1/√fan_in, …)
    with torch.no_grad():
        a = layer.lora_A[ADAPTER].weight
        a.copy_(torch.rand(a.shape, generator=generator) * 2 * bound - bound)
        layer.lora_B[ADAPTER].weight.zero_()


def merge_lora(module: nn.Module) -> int:
    """Fold every adapter into its base weight (W += scale·B·A, in the base's dtype) and put
    the base layers back, so ``module`` has its original names and no peft layer; → merged."""
    for layer in lora_layers(module):
        layer.merge(safe_merge=True, adapter_names=[ADAPTER])
    return _put_back_base_layers(module)


def _put_back_base_layers(module: nn.Module) -> int:
    """Replace every LoRA layer of ``module`` by its base layer; → how many."""
    count = 0
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if _is_lora(child):
                setattr(parent, child_name, child.get_base_layer())
                count += 1
    return count


def strip_lora(module: nn.Module) -> Dict[str, torch.Tensor]:
    """Remove the adapters without merging (the base layers go back); → the adapter tensors
    in peft's file naming (``base_model.model.<name>.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    tensors = {
        PEFT_PREFIX + k: v.detach().cpu().contiguous()
        for k, v in get_peft_model_state_dict(module, adapter_name=ADAPTER).items()
    }
    _put_back_base_layers(module)
    return tensors


def write_peft_adapter(
    tensors: Dict[str, torch.Tensor], cfg: LoRAConfig, base_model: str, out_dir: str
) -> None:
    """A peft adapter directory (``PeftModel.from_pretrained(base, out_dir)`` loads it)."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    config = peft_config(cfg)
    config.base_model_name_or_path = base_model
    config.task_type = "CAUSAL_LM"
    config.save_pretrained(out_dir)
    save_file(tensors, os.path.join(out_dir, ADAPTER_WEIGHTS), metadata={"format": "pt"})


def load_peft_adapter(module: nn.Module, adapter_dir: str) -> int:
    """Load a peft adapter directory into ``module``'s injected adapters; → tensors loaded.
    Every adapter tensor of the module must be in the file and the file must hold no other."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    with open(os.path.join(adapter_dir, ADAPTER_CONFIG)) as handle:
        json.load(handle)  # a readable adapter config is part of the format
    tensors = load_file(os.path.join(adapter_dir, ADAPTER_WEIGHTS))
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()}
    result = set_peft_model_state_dict(module, state, adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if is_adapter_name(k)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{adapter_dir}: adapter does not fit the model (missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]})"
        )
    return len(state)
