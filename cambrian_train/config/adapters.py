"""Pre-flight checks of LoRA adapters and quantised bases (``model.llm.lora``,
``model.llm.quantization``, ``model.towers.<name>.lora``); called by config/validate.py."""

from __future__ import annotations

from cambrian_train.config.schema import LoRAConfig, TrainConfig

QUANTIZATIONS = ("nf4", "int8")  # bitsandbytes 4-bit NormalFloat (QLoRA) and LLM.int8()
LORA_TOWER_SOURCES = ("hf_clip", "hf_siglip", "hf_dinov2")


def _check_lora(lora: LoRAConfig, key: str, errors: list[str]) -> None:
    if lora.r < 0:
        errors.append(f"{key}.r={lora.r} must be >= 0 (0 = no adapters)")
    if lora.r == 0:
        return
    if lora.alpha <= 0:
        errors.append(f"{key}.alpha={lora.alpha} must be > 0")
    if not 0 <= lora.dropout < 1:
        errors.append(f"{key}.dropout={lora.dropout} must be in [0, 1)")
    if not lora.target_modules:
        errors.append(f"{key}.target_modules is empty: name the Linear layers to adapt")


def check_adapters(cfg: TrainConfig, errors: list[str]) -> None:
    llm = cfg.model.llm
    _check_lora(llm.lora, "model.llm.lora", errors)
    for name, tower in cfg.model.towers.items():
        key = f"model.towers.{name}.lora"
        _check_lora(tower.lora, key, errors)
        if tower.lora.r > 0 and not tower.trainable:
            errors.append(
                f"{key}.r={tower.lora.r} on a frozen tower: adapters train only on a trainable "
                f"tower (set model.towers.{name}.trainable=true, or {key}.r=0)"
            )
        if tower.lora.r > 0 and tower.source not in LORA_TOWER_SOURCES:
            errors.append(
                f"{key}: adapters are supported on {list(LORA_TOWER_SOURCES)} towers, not "
                f"source={tower.source}"
            )
    if llm.quantization is None:
        return
    if llm.quantization not in QUANTIZATIONS:
        errors.append(
            f"model.llm.quantization={llm.quantization!r} is not one of {list(QUANTIZATIONS)} "
            "(or null)"
        )
        return
    if llm.lora.r == 0:
        errors.append(
            f"model.llm.quantization={llm.quantization}: a quantised base cannot train; set "
            "model.llm.lora.r > 0 (QLoRA trains adapters on the frozen quantised LLM)"
        )
    if cfg.backend.name != "cuda_fsdp":
        errors.append(
            f"model.llm.quantization={llm.quantization} needs bitsandbytes' CUDA kernels: "
            f"backend={cfg.backend.name} cannot run it (use backend=cuda_fsdp on a GPU, or "
            "model.llm.quantization=null and LoRA on the full-precision base)"
        )
    if llm.dtype != "bfloat16" and llm.quantization == "nf4":
        errors.append(
            f"model.llm.quantization=nf4 with model.llm.dtype={llm.dtype}: the 4-bit base "
            "computes in model.llm.dtype; set model.llm.dtype=bfloat16"
        )
