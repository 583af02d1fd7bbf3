"""Deferred LLM weights: build the LLM without allocating its parameters, load them sharded later.

At 8B-34B parameters no process may hold the whole LLM, so training builds it with its
parameters on the meta device (buffers such as rotary frequencies are real and small), lets the
backend allocate every parameter already sharded (FSDP2 DTensors, XLA sharded tensors), and only
then reads the checkpoint. The read goes through ``torch.distributed.checkpoint`` with torch's
HuggingFace safetensors reader, which reads from each file only the slices the process's shards
cover (safetensors ``get_slice``), so host memory per process is bounded by its shards, not by
the model. Checkpoint names are the LLM's own state-dict names (HF layout: ``model.layers.0...``,
``lm_head.weight``; a LoRA-adapted layer's ``base_layer`` reads its plain name); a name the model
needs that no file holds is an error naming both.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List

import torch
from torch import nn

from cambrian_train.models.lora import base_name, is_adapter_name

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"


def checkpoint_dir(checkpoint: str) -> str:
    """A local directory holding the checkpoint's config and safetensors: the directory itself,
    or the hub snapshot (config, index and safetensors files only) in the HF cache."""
    if os.path.isdir(checkpoint):
        return checkpoint
    from huggingface_hub import snapshot_download

    return snapshot_download(checkpoint, allow_patterns=["*.json", "*.safetensors"])


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Within: every parameter a module registers is created on the meta device (no memory);
    buffers stay where they are built (the same idea as accelerate's
    ``init_empty_weights(include_buffers=False)``, without the dependency)."""
    original = nn.Module.register_parameter

    def register(module, name, param):
        original(module, name, param)
        if param is not None and not param.is_meta:
            kind = type(module._parameters[name])
            moved = module._parameters[name].to("meta")
            module._parameters[name] = kind(moved, requires_grad=param.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


@dataclass
class DeferredWeights:
    """Where the parameters of ``model.<prefix>`` come from: an HF safetensors directory."""

    prefix: str  # module path inside the VLM, e.g. "llm"
    checkpoint_dir: str

    def checkpoint_keys(self) -> List[str]:
        """Tensor names the directory's safetensors hold (from the index, or file headers)."""
        index = os.path.join(self.checkpoint_dir, SAFETENSORS_INDEX)
        if os.path.isfile(index):
            with open(index) as handle:
                return sorted(json.load(handle)["weight_map"])
        single = os.path.join(self.checkpoint_dir, SAFETENSORS_FILE)
        if not os.path.isfile(single):
            raise ValueError(
                f"{self.checkpoint_dir}: neither {SAFETENSORS_INDEX} nor {SAFETENSORS_FILE}; "
                "sharded loading reads HF safetensors checkpoints (save_pretrained layout)"
            )
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            return sorted(handle.keys())

    def state_to_load(self, model: nn.Module) -> Dict[str, torch.Tensor]:
        """{checkpoint name: the live (already sharded) parameter} for every parameter of the
        submodule; a tied parameter is loaded once, under the name the checkpoint has. Names are
        matched after transformers' checkpoint renamings (``hf_renamings``)."""
        module = model.get_submodule(self.prefix)
        stored = hf_renamings(module, self.checkpoint_keys(), self.checkpoint_dir)
        available = set(stored)
        names: Dict[int, List[str]] = {}
        params: Dict[int, torch.Tensor] = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            if is_adapter_name(name):
                continue  # LoRA adapters (models/lora.py) are initialised, not read
            names.setdefault(id(param), []).append(base_name(name))
            params[id(param)] = param
        state: Dict[str, torch.Tensor] = {}
        missing = []
        for key, aliases in names.items():
            found = [name for name in aliases if name in available]
            if found:
                state[stored[found[0]]] = params[key]
            else:
                missing.append(aliases[0])
        if missing:
            raise ValueError(
                f"{self.checkpoint_dir} has no tensor for {len(missing)} parameter(s) of "
                f"model.{self.prefix}, e.g. {missing[:3]} (names must match the model's state dict)"
            )
        return state


def hf_renamings(module: nn.Module, keys: List[str], where: str) -> Dict[str, str]:
    """{model parameter name: checkpoint name} of ``keys`` after the key renamings transformers
    applies when ``from_pretrained`` loads this model class (``conversion_mapping``: e.g. a
    DINOv2 checkpoint's ``attention.attention.query`` is the model's ``attention.q_proj``);
    the identity for modules that are not transformers models. A checkpoint key that only a
    tensor-changing conversion (fusing or splitting tensors) would load is an error: it cannot
    be read slice by slice under its own name."""
    from transformers import PreTrainedModel

    if not isinstance(module, PreTrainedModel):
        return {key: key for key in keys}
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(module)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if not isinstance(t, WeightRenaming)]
    names: Dict[str, str] = {}
    for key in keys:
        renamed, converted_by = rename_source_key(key, renamings, converters)
        if converted_by is not None:
            raise ValueError(
                f"{where}: tensor {key!r} needs transformers' weight conversion {converted_by!r} "
                f"({type(module).__name__}), which sharded loading cannot apply; convert the "
                "checkpoint once with from_pretrained + save_pretrained"
            )
        names[renamed] = key
    return names


def has_safetensors(checkpoint_dir: str) -> bool:
    """Whether ``checkpoint_dir`` holds HF safetensors (what deferred loading reads)."""
    return any(
        os.path.isfile(os.path.join(checkpoint_dir, name))
        for name in (SAFETENSORS_INDEX, SAFETENSORS_FILE)
    )


def has_meta_parameters(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def materialize_meta(module: nn.Module, device: torch.device) -> None:
    """Give every meta parameter of ``module`` uninitialised storage on ``device`` (buffers and
    real parameters untouched; tied parameters stay tied). On XLA the storage is lazy until the
    backend has marked it sharded; under FSDP2 call it one unit at a time, just before that
    unit's ``fully_shard``, so only one unit is ever whole."""
    replaced: Dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None or not param.is_meta:
                continue
            if id(param) not in replaced:
                empty = torch.empty_like(param, device=device)
                replaced[id(param)] = nn.Parameter(empty, requires_grad=param.requires_grad)
            sub._parameters[name] = replaced[id(param)]


def move_materialized(module: nn.Module, device: torch.device) -> None:
    """``module.to(device)`` for everything that is not on the meta device (a moved parameter
    is a new Parameter, as ``Module.to`` makes across device types; tied ones stay tied)."""
    moved: Dict[int, nn.Parameter] = {}
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None or param.is_meta or param.device == device:
                continue
            if id(param) not in moved:
                value = param.detach().to(device)
                moved[id(param)] = nn.Parameter(value, requires_grad=param.requires_grad)
            sub._parameters[name] = moved[id(param)]
        for name, buffer in sub._buffers.items():
            if buffer is not None and not buffer.is_meta:
                sub._buffers[name] = buffer.to(device)


def parameter_locations(module: nn.Module) -> Dict[int, List[tuple]]:
    """id(parameter) → every (submodule, attribute) holding it (tied parameters: several)."""
    where: Dict[int, List[tuple]] = {}
    for sub in module.modules():
        for name, param in sub._parameters.items():
            if param is not None:
                where.setdefault(id(param), []).append((sub, name))
    return where


def read_tensors(checkpoint_dir: str, names: List[str]) -> Iterator[tuple]:
    """(name, CPU tensor) for ``names``, one at a time, file by file (safetensors mmap)."""
    from safetensors import safe_open

    index = os.path.join(checkpoint_dir, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        with open(index) as handle:
            weight_map = json.load(handle)["weight_map"]
    else:
        weight_map = {name: SAFETENSORS_FILE for name in names}
    by_file: Dict[str, List[str]] = {}
    for name in names:
        by_file.setdefault(weight_map[name], []).append(name)
    for file, file_names in sorted(by_file.items()):
        with safe_open(os.path.join(checkpoint_dir, file), framework="pt") as handle:
            for name in file_names:
                yield name, handle.get_tensor(name)
