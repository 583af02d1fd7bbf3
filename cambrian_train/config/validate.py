"""Cross-field checks of a :class:`TrainConfig`, run by ``cli.main`` before anything is built.

Every failure is a :class:`ConfigError` whose message is one line naming the field and its value.
``validate`` collects all failures, so a user fixes a config in one round trip. What needs the
runtime's device count (sizing an ``auto`` mesh, deriving per-device batches) is in
backends/mesh.py. This module sits below models and backends: it imports neither at module level,
only ``validate`` / ``validate_model`` import them, to fill the registries whose keys they check.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from cambrian_train.config.adapters import check_adapters
from cambrian_train.config.connector_checks import check_connector, is_square
from cambrian_train.config.schema import TrainConfig
from cambrian_train.config.text_checks import check_text
from cambrian_train.registry import BACKENDS, CONNECTORS, LLMS, VISION_TOWERS

SELECT_FEATURES = ("patch", "cls_patch")
ASPECT_RATIOS = ("pad", "resize")
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A user configuration error; the message names the offending field and value."""


def data_parallel_size(cfg: TrainConfig) -> Optional[int]:
    """Number of batch shards (the mesh's data x fsdp axes); None while the mesh is ``auto``."""
    if cfg.mesh.num_devices == 0 or cfg.mesh.fsdp == 0:
        return None
    return cfg.mesh.data * cfg.mesh.fsdp


def vision_slot_len(image_token_len: int, image_newline: bool) -> int:
    """Sequence positions one image occupies: h*w tokens plus one newline per row."""
    side = math.isqrt(image_token_len)
    return side * (side + 1) if image_newline else side * side


def _check_model(cfg: TrainConfig, errors: list[str]) -> None:
    m = cfg.model
    if not is_square(m.image_token_len):
        errors.append(f"model.image_token_len={m.image_token_len} is not a perfect square")
    if not m.towers:
        errors.append("model.towers is empty: configure at least one vision tower")
    conn = m.connector
    if conn.name not in CONNECTORS:
        errors.append(f"model.connector.name={conn.name!r} is not one of {CONNECTORS.names()}")
    if m.llm.source not in LLMS:
        errors.append(f"model.llm.source={m.llm.source!r} is not one of {LLMS.names()}")
    for name, tower in m.towers.items():
        key = f"model.towers.{name}"
        if tower.source not in VISION_TOWERS:
            errors.append(f"{key}.source={tower.source!r} is not one of {VISION_TOWERS.names()}")
        if not is_square(tower.num_tokens):
            errors.append(f"{key}.num_tokens={tower.num_tokens} is not a perfect square")
        if tower.select_feature not in SELECT_FEATURES:
            errors.append(
                f"{key}.select_feature={tower.select_feature!r} is not one of "
                f"{list(SELECT_FEATURES)}"
            )
        if tower.select_feature == "cls_patch":
            errors.append(
                f"{key}.select_feature='cls_patch' adds a CLS token to the grid; the "
                f"{conn.name} connector takes a square token grid: use 'patch'"
            )
        if tower.image_size <= 0:
            errors.append(f"{key}.image_size={tower.image_size} must be positive")
        if conn.name == "mlp2x_gelu" and tower.num_tokens != m.image_token_len:
            errors.append(
                f"{key}.num_tokens={tower.num_tokens} differs from model.image_token_len="
                f"{m.image_token_len}; the mlp2x_gelu connector concatenates towers token by "
                "token, so every tower needs image_token_len tokens"
            )
    check_connector(cfg, errors)
    if m.llm.dtype not in DTYPES:
        errors.append(f"model.llm.dtype={m.llm.dtype!r} is not one of {list(DTYPES)}")
    from transformers import AttentionInterface  # heavy: only when validating

    attention = ["eager", *sorted(AttentionInterface._global_mapping)]
    impl = m.llm.attn_implementation
    if impl not in attention and "/" not in impl:  # "/": a kernel from the HF hub
        errors.append(f"model.llm.attn_implementation={impl!r} is not one of {attention}")


def trained_stages(cfg: TrainConfig):
    """(name, stage) of the stages this run trains (others are not checked)."""
    return [(name, cfg.stages[name]) for name in cfg.run_stages if name in cfg.stages]


def batch_errors(cfg: TrainConfig, dp: int) -> list[str]:
    """The identity global = per-device x accumulation x data-parallel size, per stage.

    A ``per_device_batch_size`` left unset is derived from it and must come out whole.
    """
    errors = []
    for name, st in trained_stages(cfg):
        key = f"stages.{name}"
        if st.grad_accum_steps < 1 or st.global_batch_size < 1:
            errors.append(
                f"{key}: global_batch_size={st.global_batch_size} and grad_accum_steps="
                f"{st.grad_accum_steps} must be >= 1"
            )
            continue
        if st.per_device_batch_size is None:
            if st.global_batch_size % (st.grad_accum_steps * dp):
                errors.append(
                    f"{key}.global_batch_size={st.global_batch_size} is not divisible by "
                    f"grad_accum_steps={st.grad_accum_steps} x data-parallel size={dp}"
                )
            continue
        product = st.per_device_batch_size * st.grad_accum_steps * dp
        if st.global_batch_size != product:
            hint = ""
            denom = st.per_device_batch_size * dp
            if denom and st.global_batch_size % denom == 0:
                hint = f"; set {key}.grad_accum_steps={st.global_batch_size // denom}"
            errors.append(
                f"{key}.global_batch_size={st.global_batch_size} != per_device_batch_size="
                f"{st.per_device_batch_size} x grad_accum_steps={st.grad_accum_steps} x "
                f"data-parallel size={dp} (= {product}){hint}"
            )
    return errors


def _check_stages(cfg: TrainConfig, errors: list[str]) -> None:
    if not cfg.run_stages:
        errors.append("run_stages is empty: name at least one of stages")
    dp = data_parallel_size(cfg)
    slot = vision_slot_len(cfg.model.image_token_len, cfg.model.image_newline)
    for k, name in enumerate(cfg.run_stages):
        if name not in cfg.stages:
            errors.append(f"run_stages entry {name!r} is not in stages {sorted(cfg.stages)}")
        elif k == 0 and cfg.stages[name].require_init and cfg.stages[name].init_from is None:
            errors.append(
                f"stages.{name}.init_from is not set and no earlier stage runs: point it at a "
                f"stage-1 checkpoint, or set stages.{name}.require_init=false to start from a "
                "freshly initialised connector"
            )
    if dp is not None:  # known before start-up unless the mesh is sized from the devices
        errors.extend(batch_errors(cfg, dp))
    for name, st in trained_stages(cfg):
        key = f"stages.{name}"
        if st.dataset not in ("train", "pretrain"):
            errors.append(f"{key}.dataset={st.dataset!r} is not one of ['train', 'pretrain']")
        if st.lr_schedule not in SCHEDULES:
            errors.append(f"{key}.lr_schedule={st.lr_schedule!r} is not one of {list(SCHEDULES)}")
        if not 0.0 <= st.warmup_ratio < 1.0:
            errors.append(f"{key}.warmup_ratio={st.warmup_ratio} must be in [0, 1)")
        if st.lr <= 0:
            errors.append(f"{key}.lr={st.lr} must be positive")
        if st.max_steps is not None and st.max_steps < 1:
            errors.append(f"{key}.max_steps={st.max_steps} must be >= 1")
        if st.epochs <= 0:
            errors.append(f"{key}.epochs={st.epochs} must be positive")
        if st.max_length <= cfg.data.max_images * slot:
            errors.append(
                f"{key}.max_length={st.max_length} leaves no room for text after "
                f"data.max_images={cfg.data.max_images} x {slot} vision positions"
            )
        if cfg.data.packing:
            length, images = pack_shape(cfg.data, st, slot)
            if length < st.max_length:
                errors.append(
                    f"data.pack_length={length} is shorter than {key}.max_length="
                    f"{st.max_length}: a sample of that length could never be packed; raise "
                    "data.pack_length (or leave it null: the stage's max_length)"
                )
            if images < cfg.data.max_images:
                errors.append(
                    f"data.pack_images={images} < data.max_images={cfg.data.max_images}: a "
                    "sample with that many images could never be packed"
                )


def pack_shape(data, stage, slot_len: int) -> tuple:
    """(tokens, image slots) of a packed row for ``stage``: ``data.pack_length`` (None = the
    stage's max_length) and ``data.pack_images`` (None = as many images as the row could hold,
    at least ``data.max_images``)."""
    length = data.pack_length or stage.max_length
    images = data.pack_images
    if images is None:
        images = max(data.max_images, length // slot_len)
    return length, images


def _check_media(cfg: TrainConfig, errors: list[str]) -> None:
    """Tiling and video settings; the image slots must hold one fully tiled image."""
    from cambrian_train.data.tiling import enabled, max_tiles

    d, t = cfg.data, cfg.data.tiling
    if d.video.num_frames < 1:
        errors.append(f"data.video.num_frames={d.video.num_frames} must be >= 1")
    if t.max_num is not None and t.max_num < 0:
        errors.append(f"data.tiling.max_num={t.max_num} must be >= 1 (or 0 / null: tiling off)")
    if not enabled(t):
        return
    if t.tile_size < 1:
        errors.append(f"data.tiling.tile_size={t.tile_size} must be >= 1")
    if not 1 <= t.min_num <= t.max_num:
        errors.append(
            f"data.tiling.min_num={t.min_num} must be in [1, data.tiling.max_num={t.max_num}]"
        )
        return
    slots = max_tiles(t)
    if d.max_images < slots:
        thumb = " + 1 thumbnail (data.tiling.thumbnail=true)" if slots > t.max_num else ""
        errors.append(
            f"data.max_images={d.max_images} image slots cannot hold one tiled image: "
            f"data.tiling.max_num={t.max_num} tiles{thumb} = {slots} slots; raise "
            f"data.max_images to >= {slots} or lower data.tiling.max_num"
        )


def _is_remote(path: str) -> bool:
    return "://" in path


def _check_data(cfg: TrainConfig, errors: list[str]) -> None:
    d = cfg.data
    if d.image_aspect_ratio not in ASPECT_RATIOS:
        errors.append(
            f"data.image_aspect_ratio={d.image_aspect_ratio!r} is not one of {list(ASPECT_RATIOS)}"
        )
    if d.max_images < (0 if d.text else 1):  # text data: batches have no image slots
        errors.append(f"data.max_images={d.max_images} must be >= 1 (0 only with data.text)")
    if d.pack_length is not None and d.pack_length < 1:
        errors.append(f"data.pack_length={d.pack_length} must be >= 1 (or null)")
    if d.pack_images is not None and d.pack_images < 0:
        errors.append(f"data.pack_images={d.pack_images} must be >= 0 (or null)")
    if d.image_budget is not None:
        if d.image_budget < d.max_images:
            errors.append(
                f"data.image_budget={d.image_budget} < data.max_images={d.max_images}: a "
                "sample with that many images could never be batched"
            )
        if d.pack_images is not None:
            errors.append(
                "data.pack_images (slots per packed row) and data.image_budget (slots per "
                "micro-batch) are both set: keep one"
            )
    if not d.packing and (d.pack_length is not None or d.pack_images is not None):
        errors.append(
            "data.pack_length / data.pack_images are set but data.packing=false: set "
            "data.packing=true to pack, or leave them null"
        )
    if d.synthetic is not None:
        _check_synthetic_paths(cfg, errors)
        return  # generated before training when missing
    if d.text is not None:
        return  # its files: config/text_checks.py
    needed = {"data.image_folder": d.image_folder}
    for name in cfg.run_stages:
        st = cfg.stages.get(name)
        if st is None:
            continue
        if st.dataset == "pretrain" and d.pretrain_path is not None:
            needed["data.pretrain_path"] = d.pretrain_path
        elif d.sources:
            for key, source in d.sources.items():
                needed[f"data.sources.{key}.path"] = source.path
                if source.image_folder is not None:
                    needed[f"data.sources.{key}.image_folder"] = source.image_folder
        elif d.train_path is None:
            errors.append(
                f"stages.{name} reads data.train_path, which is null, and data.sources is empty"
            )
        else:
            needed["data.train_path"] = d.train_path
        if st.eval_after:
            if d.test_path is None:
                errors.append(f"stages.{name}.eval_after=true but data.test_path is not set")
            else:
                needed["data.test_path"] = d.test_path
    for key, path in needed.items():
        if not _is_remote(path) and not os.path.exists(path):
            errors.append(f"{key}={path} does not exist")


def _check_synthetic_paths(cfg: TrainConfig, errors: list[str]) -> None:
    """With the synthetic set configured (``data.synthetic``), the paths that stages read must
    all be the set's or all be the user's: a user's train_path / image_folder beside the set's
    stage-1 captions (``data.pretrain_path``) would read those captions against the user's
    images."""
    d = cfg.data
    if d.root is None:
        return
    root = os.path.normpath(str(d.root))
    fields = {"data.image_folder": d.image_folder, "data.train_path": d.train_path}
    if any(cfg.stages[s].dataset == "pretrain" for s in cfg.run_stages if s in cfg.stages):
        fields["data.pretrain_path"] = d.pretrain_path
    if d.test_path is not None:
        fields["data.test_path"] = d.test_path
    inside = {
        key: os.path.normpath(str(path)).startswith(root + os.sep)
        for key, path in fields.items()
        if path is not None
    }
    if len(set(inside.values())) > 1:
        own = [f"{k}={fields[k]}" for k, v in inside.items() if not v]
        synthetic = [f"{k}={fields[k]}" for k, v in inside.items() if v]
        errors.append(
            f"{', '.join(own)} point at your data but {', '.join(synthetic)} are still the "
            f"synthetic set's (data.root={d.root}): a stage would read one against the other "
            "(stage 1 reads data.pretrain_path). For your own data use data=llava "
            "data.train_path=... data.image_folder=... [data.test_path=...] (stage 1 then reads "
            "data.train_path unless data.pretrain_path is set)"
        )


def _check_mixture(cfg: TrainConfig, errors: list[str]) -> None:
    """``data.sources`` / ``category_ratios`` / ``mixture_size`` and the sampler's fields."""
    d = cfg.data
    if d.length_group_batches < 1:
        errors.append(f"data.length_group_batches={d.length_group_batches} must be >= 1")
    if d.mixture_size is not None and d.mixture_size < 1:
        errors.append(f"data.mixture_size={d.mixture_size} must be >= 1")
    if not d.sources:
        for key, value in (
            ("category_ratios", d.category_ratios),
            ("mixture_size", d.mixture_size),
        ):
            if value:
                errors.append(f"data.{key}={value} is set but data.sources is empty")
        return
    kinds = set()
    for key, source in d.sources.items():
        if (source.weight is None) == (source.category is None):
            errors.append(
                f"data.sources.{key}: set exactly one of weight and category (weight="
                f"{source.weight}, category={source.category!r})"
            )
            continue
        kinds.add("weight" if source.weight is not None else "category")
        if source.weight is not None and not (math.isfinite(source.weight) and source.weight > 0):
            errors.append(f"data.sources.{key}.weight={source.weight} must be > 0")
    if len(kinds) > 1:
        errors.append(
            "data.sources mixes weights and categories: give every source a weight, or every "
            "source a category of data.category_ratios"
        )
    categories = {s.category for s in d.sources.values() if s.category is not None}
    if d.category_ratios:
        _check_ratios(d.category_ratios, categories, errors)
    elif categories:
        errors.append(
            f"data.sources have categories {sorted(categories)} but data.category_ratios is empty"
        )


def _check_ratios(ratios: dict, categories: set, errors: list[str]) -> None:
    for category, ratio in ratios.items():
        if not (math.isfinite(ratio) and ratio > 0):
            errors.append(f"data.category_ratios.{category}={ratio} must be > 0")
        if category not in categories:
            errors.append(
                f"data.category_ratios.{category} has no source: no data.sources entry has "
                f"category={category!r}"
            )
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        errors.append(f"data.category_ratios sum to {total:.8g}, not 1 (within 1e-6)")
    for category in sorted(categories - set(ratios)):
        errors.append(
            f"data.sources category {category!r} has no data.category_ratios.{category} entry"
        )


def _check_runtime(cfg: TrainConfig, errors: list[str]) -> None:
    mesh = cfg.mesh
    if min(mesh.data, mesh.tensor) < 1 or min(mesh.fsdp, mesh.num_devices) < 0:
        errors.append(f"mesh axes must be >= 1 (fsdp, num_devices: 0 = auto), got {mesh}")
    elif data_parallel_size(cfg) is None:
        pass  # sized from the runtime's devices at start-up (backends/mesh.py resolve_mesh)
    elif mesh.data * mesh.fsdp * mesh.tensor != mesh.num_devices:
        errors.append(
            f"mesh.data={mesh.data} x mesh.fsdp={mesh.fsdp} x mesh.tensor={mesh.tensor} != "
            f"mesh.num_devices={mesh.num_devices}"
        )
    from cambrian_train.backends import LAZY

    known = sorted(set(BACKENDS.names()) | set(LAZY))
    if cfg.backend.name not in known:
        errors.append(f"backend.name={cfg.backend.name!r} is not one of {known}")
    if cfg.backend.dtype not in DTYPES:
        errors.append(f"backend.dtype={cfg.backend.dtype!r} is not one of {list(DTYPES)}")
    if cfg.backend.attention not in ("auto", "sdpa", "flash"):
        errors.append(
            f"backend.attention={cfg.backend.attention!r} is not one of ['auto', 'sdpa', 'flash']"
        )
    elif cfg.backend.attention == "flash" and cfg.backend.name != "xla_spmd":
        errors.append(
            "backend.attention=flash is torch_xla's Pallas kernel, on backend=xla_spmd (TPU) "
            f"only; backend={cfg.backend.name} trains with sdpa (set backend.attention=auto)"
        )
    if mesh.tensor > 1 and cfg.backend.name != "xla_spmd":
        errors.append(
            f"mesh.tensor={mesh.tensor}: tensor parallelism is implemented on backend=xla_spmd "
            f"only; backend={cfg.backend.name} would compute duplicate replicas (set "
            "mesh.tensor=1)"
        )
    if cfg.model.llm.dtype != "float32" and cfg.model.llm.lora.r == 0:  # adapters are fp32
        for name, st in trained_stages(cfg):
            if st.train_llm:
                errors.append(
                    f"model.llm.dtype={cfg.model.llm.dtype} while stage {name} trains the LLM: "
                    f"AdamW updates at lr {st.llm_lr or st.lr:g} are below bf16 resolution and "
                    "are lost; keep float32 master weights (model.llm.dtype=float32) and compute "
                    "in bf16 with backend.dtype=bfloat16"
                )
    if cfg.backend.on_recompile not in ("off", "warn", "error"):
        errors.append(
            f"backend.on_recompile={cfg.backend.on_recompile!r} is not one of "
            "['off', 'warn', 'error']"
        )
    ckpt = cfg.checkpoint
    if ckpt.save_every < 0:
        errors.append(f"checkpoint.save_every={ckpt.save_every} must be >= 0 (0 = never)")
    if ckpt.keep_last < 1:
        errors.append(f"checkpoint.keep_last={ckpt.keep_last} must be >= 1")
    if cfg.logger.wandb_mode not in ("offline", "online", "auto"):
        errors.append(
            f"logger.wandb_mode={cfg.logger.wandb_mode!r} is not one of ['offline', 'online', "
            "'auto']"
        )


def raise_errors(errors: list[str]) -> None:
    """One ConfigError listing ``errors`` (one line each), if there are any."""
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


def validate_model(cfg: TrainConfig) -> None:
    """Only the model section's checks (for tools that build a model without training)."""
    import cambrian_train.models  # noqa: F401  (fills VISION_TOWERS, CONNECTORS, LLMS)

    errors: list[str] = []
    _check_model(cfg, errors)
    check_adapters(cfg, errors)
    raise_errors(errors)


def validate(cfg: TrainConfig, check_paths: bool = True) -> None:
    """Raise ConfigError listing every cross-field problem of ``cfg`` (one line each)."""
    import cambrian_train.backends  # noqa: F401  (fills BACKENDS)
    import cambrian_train.models  # noqa: F401  (fills VISION_TOWERS, CONNECTORS, LLMS)

    errors: list[str] = []
    _check_model(cfg, errors)
    check_adapters(cfg, errors)
    _check_stages(cfg, errors)
    _check_runtime(cfg, errors)
    _check_mixture(cfg, errors)
    check_text(cfg, errors, check_paths)
    _check_media(cfg, errors)
    if check_paths:
        _check_data(cfg, errors)
    raise_errors(errors)
