"""Typed configuration schema for cambrian-train.

Hydra composes YAML from ``configs/``; the root schema :class:`TrainConfig` is registered in
the ConfigStore as ``train_schema`` and heads ``configs/train.yaml``'s defaults, so every
composed value is type-checked and unknown keys are rejected. ``cli.main`` converts the composed
config to these dataclasses once (``OmegaConf.to_object``); code below it never sees a DictConfig.
Cross-field checks live in :mod:`cambrian_train.config.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class LoRAConfig:
    """Low-rank adapters (peft; models/lora.py) on a frozen base: with ``r`` > 0 a stage that
    trains this part trains only its adapters (plus the connector)."""

    r: int = 0  # adapter rank; 0 = no adapters (the whole part trains when its stage says so)
    alpha: float = 16.0  # scale alpha / r (alpha / sqrt(r) with rslora)
    dropout: float = 0.05  # on the adapter's input, training only
    # module-name suffixes of the Linear layers to adapt, or [all-linear] (every Linear but the
    # output head). Llama-style LLM projections by default; a tower names its own
    # (CLIP/SigLIP: q_proj, k_proj, v_proj, out_proj; DINOv2: query, key, value, dense)
    target_modules: List[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
    )
    rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r)
    seed: int = 0  # the adapters' initial A matrices (B starts at zero)


@dataclass
class LLMConfig:
    """A decoder LLM loaded with ``from_pretrained`` (hub name or local directory)."""

    source: str = "hf_causal_lm"  # key in LLMS
    checkpoint: str = MISSING  # hub name or local directory
    tokenizer: Optional[str] = None  # defaults to ``checkpoint``
    template: str = MISSING  # chat template name (data/templates.py)
    num_layers: int = MISSING  # decoder depth, known before loading (checked after loading)
    hidden_size: int = MISSING  # model width, known before loading (checked after loading)
    dtype: str = "float32"  # parameter dtype at load: float32 | bfloat16
    # HF attention implementation (sdpa | eager | flash_attention_2 | ...); training runs
    # sdpa as mask-free causal SDPA (models/llm.py); others build HF's masks each forward
    attn_implementation: str = "sdpa"
    # HF config fields (model_type, sizes, vocab) to build the model without its checkpoint,
    # e.g. on the meta device for parameter counts and sharding plans
    architecture: Dict[str, Any] = field(default_factory=dict)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # r > 0: train adapters, not the LLM
    # a quantised frozen base for QLoRA (bitsandbytes, CUDA only): null | nf4 | int8; needs
    # lora.r > 0 and backend=cuda_fsdp on one GPU
    quantization: Optional[str] = None


@dataclass
class VisionTowerConfig:
    """One vision tower; ``model.towers`` maps a name to one of these."""

    source: str = MISSING  # key in VISION_TOWERS: hf_clip | hf_siglip | ...
    checkpoint: str = MISSING
    image_size: int = MISSING  # input resolution (square)
    num_tokens: int = MISSING  # perfect square; the feature grid is resized to it
    select_layer: int = -2  # hidden-state index the features come from
    select_feature: str = "patch"  # patch | cls_patch
    multi_stage: bool = False
    trainable: bool = False
    # the family's config fields plus image_mean/image_std, to build without the checkpoint
    architecture: Dict[str, Any] = field(default_factory=dict)
    # adapters on a trainable tower (models/lora.py): with r > 0 only they train; HF towers
    # (hf_clip, hf_siglip, hf_dinov2) only
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(target_modules=["all-linear"]))


@dataclass
class InsertConfig:
    """Where SVA layers are re-inserted between LLM decoder layers (count 0 = connector only)."""

    start: int = 0
    stride: int = 3
    count: int = 0


@dataclass
class ConnectorConfig:
    """The vision→LLM connector. ``name`` selects the CONNECTORS entry; SVA fields apply to sva,
    ``perceiver_*`` fields (and width, depth, heads, padding_rule) to perceiver."""

    name: str = MISSING  # mlp2x_gelu | sva | perceiver
    vision_hidden_size: int = 1024
    num_query_group: int = 1
    query_num_list: List[int] = field(default_factory=lambda: [576])
    connector_depth: int = 3
    num_heads: int = 16
    insert: InsertConfig = field(default_factory=InsertConfig)
    # -- SVA semantics. Defaults are the original code's (cambrian-mllm/cambrian), so official
    # checkpoints compute what they computed; the alternatives are explicit choices.
    # cross-attention output projection bias: the original has none; true adds one (ours before)
    o_proj_bias: bool = False
    # what the SVA layers inside the LLM take as context: "connector" = the connector's global
    # context (mean of the first tower's projected features, vision width; the original), or
    # "llm_mean" = the mean of the LLM hidden states at the image's positions (LLM width; it
    # follows the representation the layer refines)
    llm_context: str = "connector"
    # the global context as a mean over valid (unpadded) tokens only; the original averages
    # every token, padding included (true keeps pad-to-square bands out of the context)
    context_masked: bool = False
    # a window whose tokens are all padding: "attend_all" = attends to all of them (the
    # original, per tower), "zero" = adds nothing (no attention to pad-to-square filler)
    empty_window: str = "attend_all"
    # which tower-grid cells of a pad-to-square image are padding: "original" = integer-rounded
    # symmetric bands per grid (the original's unmask_attention_mask), "centre" = cells whose
    # centre lies outside the content box (exact for any aspect ratio)
    padding_rule: str = "original"
    # initial scales (training from scratch only): position embeddings ~ N(0, pos_embed_std²)
    # (original 1.0), queries ~ N(0, 1/llm_hidden) (original) or ~ N(0, vision_query_std²)
    pos_embed_std: float = 1.0
    vision_query_std: Optional[float] = None
    # -- perceiver (models/connectors/perceiver.py): width vision_hidden_size, connector_depth
    # layers, num_heads heads, model.image_token_len latents; padding cells by padding_rule
    perceiver_ff_mult: int = 4  # feed-forward inner width = ff_mult x vision_hidden_size
    # pad-to-square filler cells of the media are left out of the keys (false: attended)
    perceiver_mask_padding: bool = True
    # a learned embedding per tower token position added to the media (Flamingo has none: the
    # towers' features already carry their positions)
    perceiver_position_embed: bool = False


@dataclass
class ModelConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    towers: Dict[str, VisionTowerConfig] = field(default_factory=dict)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    image_token_len: int = 576  # visual tokens per image handed to the LLM (a perfect square)
    image_newline: bool = True  # learned vector closing every row of the visual grid
    # tokens per chunk of the next-token loss (models/loss.py: the head runs chunk by chunk and
    # no [B*L, vocab] logits exist); 0 = the plain full-logits computation
    loss_chunk_size: int = 512


@dataclass
class SyntheticConfig:
    """Parameters of the synthetic shapes data set (data/synthetic.py), or of the four-category
    synthetic suite (``kind: suite``, data/suite.py)."""

    kind: str = "shapes"  # shapes | suite
    seed: int = 0
    image_size: int = 64
    num_pretrain: int = 2000  # caption records (stage 1)
    num_train: int = 4000  # VQA records (stage 2)
    num_test: int = 300  # held-out questions (suite: per task)
    max_shapes: int = 3  # shapes only
    question_types: List[str] = field(default_factory=lambda: ["color", "shape", "count"])
    tasks: List[str] = field(default_factory=list)  # suite only; empty = every task
    mcq_fraction: float = 0.5  # suite only: share of multiple-choice questions


@dataclass
class DataSourceConfig:
    """One source of a data mixture (``data.sources.NAME``); data/mixture.py."""

    path: str = MISSING  # LLaVA JSON/JSONL
    image_folder: Optional[str] = None  # its records' image root; None = data.image_folder
    weight: Optional[float] = None  # share of the mixture (relative to the other weights)
    category: Optional[str] = None  # or: a key of data.category_ratios (exactly one of the two)


@dataclass
class TextSyntheticConfig:
    """A generated text data set (data/text_synthetic.py): instruction records (with their
    template.json) or a plain-text corpus, written at ``data.train_path`` when missing."""

    seed: int = 0
    num_records: int = 2000  # instruction records, or corpus documents (one per line)


@dataclass
class TextDataConfig:
    """Text-only fine-tuning of the LLM, SageMaker JumpStart style (data/text_data.py): every
    stage of the run reads ``data.train_path`` as text (no images, no chat template). Names and
    defaults are SageMaker's."""

    instruction_tuned: bool = False  # JSONL + template.json; false: domain adaptation (blocks)
    template: Optional[str] = None  # template.json; None = template.json beside data.train_path
    validation_path: Optional[str] = None  # None = split one off data.train_path
    validation_split_ratio: float = 0.2  # share of the records held out (0 = no validation)
    train_data_split_seed: int = 0
    max_train_samples: int = -1  # -1 = all; else the first N after the split
    max_val_samples: int = -1
    # tokens per sequence: -1 = min(1024, tokenizer.model_max_length); a positive value is
    # capped at model_max_length. It is the row length of a text stage (replaces max_length).
    max_input_length: int = -1
    txt_unit: str = "line"  # domain .txt files: "line" (a line a document) | "file"
    synthetic: Optional[TextSyntheticConfig] = None  # generate data.train_path when missing


@dataclass
class TilingConfig:
    """Dynamic tiling of images (data/tiling.py, InternVL2's rule): each image is cut into a grid
    of ``tile_size`` squares, each one image slot (they count against data.max_images)."""

    max_num: Optional[int] = None  # most tiles per image (e.g. 12); None or 0 = tiling off
    min_num: int = 1  # fewest tiles per image
    tile_size: int = 448  # tile side in pixels (each tower then resizes a tile to its own size)
    thumbnail: bool = True  # append the whole image at tile size when there is > 1 tile


@dataclass
class VideoConfig:
    """Video records (data/video.py): ``"video": file or [frame files]`` with a <video> tag."""

    num_frames: int = 8  # frames sampled per video, one image slot each (not tiled)


@dataclass
class DataConfig:
    name: str = MISSING
    root: Optional[str] = None  # directory of a generated data set (with ``synthetic``)
    # LLaVA JSON/JSONL used by stages that train on instruction data; null with ``sources``
    train_path: Optional[str] = MISSING
    pretrain_path: Optional[str] = None  # stage-1 alignment data; None = train_path
    image_folder: str = MISSING  # record "image" paths are relative to this
    test_path: Optional[str] = None  # held-out JSONL: image, question, answer, optional choices
    synthetic: Optional[SyntheticConfig] = None  # when set, the files are generated if missing
    image_aspect_ratio: str = "pad"  # pad | resize
    system_prompt: Optional[str] = None  # None = the template's default, "" = none
    max_images: int = 1  # image slots per sample (I); 0 only with ``text`` (no image slots)
    num_workers: int = 0
    strict: bool = False  # fail on the first bad record instead of counting and skipping it
    # a mixture read instead of train_path (data/mixture.py), sources keyed by name
    sources: Dict[str, DataSourceConfig] = field(default_factory=dict)
    category_ratios: Dict[str, float] = field(default_factory=dict)  # category -> share (sum 1)
    mixture_size: Optional[int] = None  # records per mixture epoch; None = sum of source sizes
    # batches of one modality and similar true token length (data/sampler.py); false = shuffle
    group_by_length: bool = True
    length_group_batches: int = 16  # steps per length-sorted megabatch
    # several samples per row (data/packing.py); a stage's global_batch_size then counts rows
    packing: bool = False
    pack_length: Optional[int] = None  # tokens per packed row; None = the stage's max_length
    pack_images: Optional[int] = None  # image slots per packed row; None = what fits the row
    # image slots shared by the rows of one device's micro-batch (batch.py), instead of slots
    # per row: text-only rows then run no tower; None = per row (max_images / pack_images)
    image_budget: Optional[int] = None
    # text-only fine-tuning (SageMaker style, data/text_data.py); None = LLaVA / document records
    text: Optional[TextDataConfig] = None
    tiling: TilingConfig = field(default_factory=TilingConfig)  # off unless tiling.max_num > 0
    video: VideoConfig = field(default_factory=VideoConfig)


@dataclass
class StageConfig:
    """One training stage: what is trained, on what data, with which optimisation settings."""

    name: str = MISSING
    train_llm: bool = False  # connector always trains; towers follow tower.trainable
    dataset: str = "train"  # train | pretrain: which data path this stage reads
    template: Optional[str] = None  # chat template; None = model.llm.template
    init_from: Optional[str] = None  # checkpoint dir whose connector initialises this stage
    require_init: bool = False  # true: error when run first without init_from
    global_batch_size: int = MISSING
    per_device_batch_size: Optional[int] = None  # None = global / (accumulation x dp size)
    grad_accum_steps: int = 1
    lr: float = MISSING  # connector lr (and LLM lr when train_llm)
    sva_lr: Optional[float] = None  # lr of SVA parameters; None = lr
    llm_lr: Optional[float] = None  # None = lr
    tower_lr: Optional[float] = None  # None = lr
    base_batch_size: Optional[int] = None  # lr scaling: lr * sqrt(global / base); None = off
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.03
    lr_schedule: str = "cosine"  # cosine | constant
    epochs: float = 1.0
    max_steps: Optional[int] = None  # overrides epochs when set
    max_length: int = 2048  # sequence length L (static)
    grad_clip: float = 1.0
    max_nonfinite_steps: int = 5  # stop after this many skipped (NaN/Inf) steps in a row
    gradient_checkpointing: bool = False
    log_every: int = 10
    eval_after: bool = True  # evaluate on data.test_path after the stage


@dataclass
class BackendConfig:
    name: str = "cpu"  # key in BACKENDS: cpu | cuda_fsdp | xla_spmd
    dtype: str = "float32"  # compute dtype: float32 | bfloat16
    compile: bool = False  # torch.compile (cuda) — ignored elsewhere
    num_threads: Optional[int] = None  # cpu: torch threads
    compile_warmup_steps: int = 3  # steps after which the compile count must stay constant
    on_recompile: str = "warn"  # off | warn | error: compiles after warm-up (XLA)
    # dense bf16 peak TFLOP/s of one device for the logged MFU; None = from the device's kind
    # (train/mfu.py PEAK_TFLOPS), no MFU where it is unknown (CPU)
    peak_tflops: Optional[float] = None
    # the LLM's training attention: auto (the TPU flash kernel on TPU, SDPA elsewhere) |
    # sdpa | flash (torch_xla's Pallas kernel; TPU only). model.llm.attn_implementation must
    # be sdpa for either to apply.
    attention: str = "auto"


@dataclass
class MeshConfig:
    """Device mesh. The data-parallel size (batch split) is data * fsdp.

    ``num_devices: 0`` means all devices of the run and ``fsdp: 0`` what data x tensor leave
    (the ``auto`` mesh), resolved at start-up.
    """

    name: str = "auto"
    num_devices: int = 0
    data: int = 1
    fsdp: int = 0
    tensor: int = 1


@dataclass
class LoggerConfig:
    wandb: bool = True
    wandb_mode: str = "offline"  # offline | online | auto (online when WANDB_API_KEY is set)
    project: str = "cambrian-train"
    entity: Optional[str] = None
    run_name: Optional[str] = None  # None = experiment name
    progress_bar: bool = True


@dataclass
class EvalConfig:
    batch_size: int = 16
    max_new_tokens: int = 8
    max_samples: Optional[int] = None
    # longest evaluation prompt (tokens, image placeholders included), independent of the
    # stages' training max_length; None = the LLM's max_position_embeddings - max_new_tokens.
    # Checked against data.test_path before training starts.
    max_length: Optional[int] = None


@dataclass
class CheckpointConfig:
    """Sharded training-state checkpoints for resuming (train/resume.py).

    The end-of-stage ``<output_dir>/<stage>/checkpoint`` (whole tensors, for export and the next
    stage) is always written; these are the mid-stage ones.
    """

    dir: Optional[str] = None  # local path or gs://...; None = <output_dir>/checkpoints
    save_every: int = 0  # optimiser steps between saves; 0 = only on preemption
    keep_last: int = 2  # committed checkpoints kept per stage (older ones are deleted)


@dataclass
class TrainConfig:
    """The root config: everything a run needs."""

    name: str = "run"
    output_dir: str = MISSING
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: Dict[str, StageConfig] = field(default_factory=dict)
    run_stages: List[str] = field(default_factory=list)  # which of ``stages`` run, in order
    backend: BackendConfig = field(default_factory=BackendConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # null: start fresh | auto: the latest complete checkpoint of this output_dir, if any |
    # a step-checkpoint directory
    resume: Optional[str] = None
    # name -> overrides: run each variant and compare them (repro/; experiment=repro_small)
    variants: Dict[str, List[str]] = field(default_factory=dict)
    only_variants: List[str] = field(default_factory=list)  # run just these of ``variants``
    # each variant runs once per seed (``seed=<k>``, output_dir <output_dir>/<variant>/seed-<k>);
    # the comparison reports means and 95 % t-intervals over them
    variant_seeds: List[int] = field(default_factory=lambda: [0])
    variant_quick: bool = False  # true: only the first of variant_seeds, for a quick look
