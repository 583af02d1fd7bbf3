"""Parameter sharding from rule tables (backend-neutral: names and mesh-axis tuples only).

A rule is ``(pattern, spec)``: ``pattern`` a regular expression matched against full parameter
names, ``spec`` one mesh-axis name (or None, or a tuple of names) per tensor dimension. The first
matching rule wins. A rule that matches no parameter is an error (a typo or a model change would
otherwise silently replicate weights), and so is a parameter no rule matches.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

Axis = Union[None, str, Tuple[str, ...]]
Rule = Tuple[str, Sequence[Axis]]

# FSDPv2-style: every matrix sharded along its first dimension over the fsdp axis, vectors
# (norms, biases, the image newline) replicated.
FSDP_RULES: List[Rule] = [
    (r".*\.(weight|pos_embed_\d+)$|.*vision_query$", ("fsdp", None)),
    (r".*", ()),
]

# Megatron-style tensor parallelism of the LLM (HF Llama / Qwen2 / Mistral names; weights are
# [out, in]) on the ``tensor`` axis, with FSDP on the other dimension: q/k/v and gate/up are
# column-parallel (output features split), o and down row-parallel (input features split), the
# embedding and the head vocab-parallel. XLA's SPMD partitioner inserts the collectives. With
# ``mesh.tensor == 1`` these specs shard exactly like FSDP_RULES.
_COLUMN = r"llm\..*\.(q_proj|k_proj|v_proj|gate_proj|up_proj)"
_ROW = r"llm\..*\.(o_proj|down_proj)"
_BASE = r"(\.base_layer)?\.weight$"  # a LoRA-adapted layer's base weight splits the same way
LLM_TENSOR_RULES: List[Rule] = [
    (_COLUMN + _BASE, ("tensor", "fsdp")),
    (_ROW + _BASE, ("fsdp", "tensor")),
    (r"llm\.(.*embed_tokens|lm_head)\.weight$", ("tensor", "fsdp")),  # one rule: may be tied
]

# LoRA adapters (models/lora.py): A is [r, in], B is [out, r]; the rank r is small, so neither
# is split along it. Under tensor parallelism an adapter follows its base: B of a
# column-parallel matrix splits its outputs, A of a row-parallel one its inputs.
ADAPTER_TENSOR_RULES: List[Rule] = [
    (_COLUMN + r"\.lora_B\.[^.]+\.weight$", ("tensor", None)),
    (_ROW + r"\.lora_A\.[^.]+\.weight$", (None, "tensor")),
]
ADAPTER_RULES: List[Rule] = [
    (r".*\.lora_A\.[^.]+\.weight$", (None, "fsdp")),
    (r".*\.lora_B\.[^.]+\.weight$", ("fsdp", None)),
]


def sharding_rules(tensor_parallel: bool, adapters: bool = False) -> List[Rule]:
    """The rule table of a mesh: tensor-parallel LLM rules first when the tensor axis is > 1,
    then the adapter rules when the model has LoRA adapters."""
    rules = list(LLM_TENSOR_RULES) if tensor_parallel else []
    if adapters:
        rules += (ADAPTER_TENSOR_RULES if tensor_parallel else []) + ADAPTER_RULES
    return rules + FSDP_RULES


def has_adapter_names(names: Iterable[str]) -> bool:
    """Whether any parameter name is a LoRA adapter's (the adapter rules then apply)."""
    return any(".lora_A." in name or ".lora_B." in name for name in names)


def _fits(spec: Sequence[Axis], ndim: int) -> bool:
    return len(spec) == 0 or len(spec) == ndim


def plan_sharding(
    params: Iterable[Tuple[str, object]], rules: Sequence[Rule]
) -> Dict[str, Tuple[Axis, ...]]:
    """Name → partition spec for every parameter (``()`` = replicated).

    A rule's spec applies to parameters of its rank; a parameter of another rank falls through
    to the next rule. ValueError for a rule that matches nothing or a parameter left unmatched.
    """
    compiled = [(re.compile(pattern), tuple(spec), pattern) for pattern, spec in rules]
    used = [False] * len(compiled)
    plan: Dict[str, Tuple[Axis, ...]] = {}
    for name, param in params:
        chosen: Optional[Tuple[Axis, ...]] = None
        for k, (regex, spec, _) in enumerate(compiled):
            if regex.fullmatch(name) and _fits(spec, param.ndim):
                chosen, used[k] = spec, True
                break
        if chosen is None:
            raise ValueError(f"no sharding rule matches parameter {name} (ndim {param.ndim})")
        plan[name] = chosen or (None,) * param.ndim
    unused = [pattern for (_, _, pattern), hit in zip(compiled, used) if not hit]
    if unused:
        raise ValueError(
            f"sharding rules that match no parameter: {unused} (with mesh.tensor > 1 the LLM "
            "must use HF Llama-style projection names; set mesh.tensor=1 otherwise)"
        )
    return plan


def per_device_numel(
    params: Iterable[Tuple[str, object]], plan: Dict[str, Tuple[Axis, ...]], axes: Dict[str, int]
) -> int:
    """Elements one device holds of ``params`` under ``plan`` on a mesh of ``axes`` sizes
    (a dimension split over several axes is divided by their product; ceil per dimension)."""
    total = 0
    for name, param in params:
        count = 1
        for size, spec in zip(param.shape, plan[name] or (None,) * param.ndim):
            names = () if spec is None else (spec,) if isinstance(spec, str) else spec
            ways = 1
            for axis in names:
                ways *= axes[axis]
            count *= -(-size // ways)
        total += count
    return total
