"""Config composition, the paper presets' values, and pre-flight validation errors."""

from __future__ import annotations

import pytest
from hydra.errors import HydraException
from omegaconf.errors import ConfigKeyError

from cambrian_train.cli import CONFIG_DIR
from cambrian_train.config.schema import TrainConfig
from cambrian_train.config.validate import ConfigError, validate

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
PAPER_DATA = ["data.train_path=/data/train.jsonl", "data.image_folder=/data/images"]
PAPER = {  # size: (global batch, finetune lr, llm layers)
    "8b": (512, 4e-5, 32),
    "13b": (512, 4e-5, 40),
    "34b": (1024, 2e-5, 60),
}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(compose, name):
    overrides = [f"experiment={name}"]
    if name.startswith("cambrian"):
        overrides += PAPER_DATA
    if "finetune" in name:
        overrides.append("stages.finetune.init_from=/ckpt/pretrain/checkpoint")
    cfg = compose(overrides)
    assert isinstance(cfg, TrainConfig)
    assert cfg.name == name
    for stage in cfg.run_stages:
        assert stage in cfg.stages


def test_demo_and_default_validate(compose):
    compose(["experiment=demo"], validate_it=True)
    compose([], validate_it=True)


@pytest.mark.parametrize("size", sorted(PAPER))
def test_paper_values(compose, size):
    batch, ft_lr, layers = PAPER[size]
    pre = compose([f"experiment=cambrian{size}_pretrain_v4_512", *PAPER_DATA])
    fine = compose(
        [f"experiment=cambrian{size}_finetune_v4_512", "stages.finetune.init_from=/x", *PAPER_DATA]
    )
    m = pre.model
    assert {n: (t.num_tokens, t.image_size) for n, t in m.towers.items()} == {
        "siglip": (576, 384),
        "clip": (576, 336),
        "dino": (576, 378),
        "convnext": (9216, 1024),
    }
    assert m.towers["convnext"].multi_stage and m.image_token_len == 576
    c = m.connector
    assert (c.name, c.num_query_group, c.query_num_list, c.connector_depth) == ("sva", 1, [576], 3)
    assert c.vision_hidden_size == 1024
    # the released scripts' insertion schedules and templates (cambrian-mllm/cambrian
    # scripts/cambrian/*.sh): 8B 10/0/3 llama_v3, 13B 10/0/4 v1, 34B 9/0/7 chatml_direct
    schedule, template = {
        "8b": ((10, 0, 3), "llama3"),
        "13b": ((10, 0, 4), "vicuna_v1"),
        "34b": ((9, 0, 7), "chatml"),
    }[size]
    assert (c.insert.count, c.insert.start, c.insert.stride) == schedule
    assert m.llm.template == template
    # the original's SVA semantics, so official weights compute what they computed
    assert (c.num_heads, c.o_proj_bias, c.llm_context, c.context_masked) == (
        16,
        False,
        "connector",
        False,
    )
    assert (c.empty_window, c.padding_rule) == ("attend_all", "original")
    assert m.llm.num_layers == layers
    p = pre.stages["pretrain"]
    assert pre.run_stages == ["pretrain"] and not p.train_llm
    assert (p.global_batch_size, p.lr, p.sva_lr, p.warmup_ratio) == (batch, 1e-3, 1e-4, 0.06)
    assert (p.lr_schedule, p.epochs, p.max_length, p.weight_decay) == ("cosine", 1, 2048, 0.0)
    assert p.per_device_batch_size * p.grad_accum_steps * pre.mesh.fsdp == batch
    f = fine.stages["finetune"]
    assert fine.run_stages == ["finetune"] and f.train_llm
    assert (f.global_batch_size, f.lr, f.warmup_ratio, f.max_length) == (batch, ft_lr, 0.03, 2048)
    assert pre.mesh.num_devices == 256 and pre.backend.name == "xla_spmd"


def test_finetune_experiment_requires_init_from(compose):
    cfg = compose(["experiment=cambrian8b_finetune_v4_512", *PAPER_DATA])
    assert "stages.finetune.init_from is not set and no earlier stage runs" in _errors(cfg)
    demo = compose(
        ["experiment=demo", "run_stages=[finetune]", "stages.finetune.require_init=false"]
    )
    validate(demo, check_paths=False)


def test_tower_dict_add_drop_override(compose):
    cfg = compose(
        [
            "model.towers.clip.num_tokens=16",
            "+model/vision_tower@model.towers.sig=tiny_siglip",
        ]
    )
    assert set(cfg.model.towers) == {"clip", "sig"}
    assert cfg.model.towers["sig"].source == "hf_siglip"
    dropped = compose(
        ["~model/vision_tower@model.towers.clip", "+model/vision_tower@model.towers.s=tiny_siglip"]
    )
    assert set(dropped.model.towers) == {"s"}


def test_unknown_key_and_preset_are_clear(compose):
    with pytest.raises((ConfigKeyError, HydraException), match="nonexistent"):
        compose(["model.nonexistent=1"])
    with pytest.raises(HydraException, match="cambrian_99b"):
        compose(["model=cambrian_99b"])


def _errors(cfg) -> str:
    with pytest.raises(ConfigError) as info:
        validate(cfg, check_paths=False)
    return str(info.value)


def test_validation_non_square_tokens(compose):
    cfg = compose(["model.towers.clip.num_tokens=15", "model.image_token_len=15"])
    msg = _errors(cfg)
    assert "model.towers.clip.num_tokens=15 is not a perfect square" in msg
    assert "model.image_token_len=15 is not a perfect square" in msg


def test_validation_mlp_token_mismatch(compose):
    msg = _errors(compose(["model.towers.clip.num_tokens=16"]))
    assert "model.towers.clip.num_tokens=16 differs from model.image_token_len=64" in msg


def test_validation_query_grid_must_divide_tower_grid(compose):
    cfg = compose(
        [
            "model/connector=sva",
            "model.connector.query_num_list=[9]",
            "model.connector.num_heads=4",
            "model.connector.vision_hidden_size=64",
        ]
    )
    assert "entry 9 (grid side 3) does not divide model.towers.clip.num_tokens=64" in _errors(cfg)


def test_validation_query_groups_count(compose):
    cfg = compose(
        [
            "model/connector=sva",
            "model.connector.num_query_group=2",
            "model.connector.query_num_list=[16]",
        ]
    )
    assert "num_query_group=2 differs from len(model.connector.query_num_list)=1" in _errors(cfg)


def test_validation_insertion_beyond_depth(compose):
    cfg = compose(
        [
            "model/connector=sva",
            "model.connector.query_num_list=[16]",
            "model.connector.insert.count=3",
            "model.connector.insert.stride=2",
        ]
    )
    msg = _errors(cfg)
    assert "after decoder layer 4" in msg and "model.llm.num_layers=4" in msg


def test_validation_global_batch(compose):
    cfg = compose(
        [
            "experiment=demo",
            "mesh=single",
            "stages.finetune.per_device_batch_size=16",
            "stages.finetune.grad_accum_steps=3",
        ]
    )
    msg = _errors(cfg)
    assert (
        "stages.finetune.global_batch_size=32 != per_device_batch_size=16 x "
        "grad_accum_steps=3 x data-parallel size=1 (= 48); set stages.finetune."
        "grad_accum_steps=2" in msg
    )


def test_validation_mesh_product(compose):
    cfg = compose(["experiment=cambrian8b_pretrain_v4_512", "mesh.fsdp=128", *PAPER_DATA])
    msg = _errors(cfg)
    assert "mesh.data=1 x mesh.fsdp=128 x mesh.tensor=1 != mesh.num_devices=256" in msg


def test_validation_missing_data_path(compose, tmp_path):
    cfg = compose(
        ["data=llava", f"data.train_path={tmp_path}/nope.jsonl", f"data.image_folder={tmp_path}"]
    )
    with pytest.raises(ConfigError, match=f"data.train_path={tmp_path}/nope.jsonl does not exist"):
        validate(cfg)


def test_auto_mesh_and_derived_per_device_batch(compose):
    from cambrian_train.backends.mesh import resolve_batches, resolve_mesh

    cfg = compose(["experiment=demo"])
    validate(cfg, check_paths=False)  # auto mesh: the batch identity waits for the devices
    mesh = resolve_mesh(cfg.mesh, 4)
    assert (mesh.num_devices, mesh.fsdp) == (4, 4)
    resolved = resolve_batches(cfg, mesh)
    assert resolved.stages["pretrain"].per_device_batch_size == 8  # 32 / (1 x 4)
    assert resolved.stages["finetune"].per_device_batch_size == 4  # 32 / (2 x 4)
    with pytest.raises(ConfigError, match="not divisible by grad_accum_steps=2 x data-parallel"):
        resolve_batches(cfg, resolve_mesh(cfg.mesh, 3))
    with pytest.raises(ConfigError, match="does not fit the 2 devices"):
        resolve_mesh(compose(["mesh=xla_cpu_4"]).mesh, 2)


@pytest.mark.parametrize("size", sorted(PAPER))
def test_paper_presets_keep_float32_master_weights(compose, size):
    """bf16 compute everywhere; the LLM that stage 2 trains is held in float32 (its AdamW
    updates at lr 2e-5-4e-5 are below bf16 resolution); the frozen stage-1 LLM may be bf16."""
    finetune = compose(
        [f"experiment=cambrian{size}_finetune_v4_512", *PAPER_DATA, "stages.finetune.init_from=/c"]
    )
    assert finetune.backend.dtype == "bfloat16"
    assert finetune.model.llm.dtype == "float32"
    validate(finetune, check_paths=False)
    pretrain = compose([f"experiment=cambrian{size}_pretrain_v4_512", *PAPER_DATA])
    assert pretrain.backend.dtype == "bfloat16"
    assert not pretrain.stages["pretrain"].train_llm
    validate(pretrain, check_paths=False)


def test_validation_bf16_master_weights_of_a_trained_llm(compose):
    cfg = compose(["experiment=demo", "model.llm.dtype=bfloat16"])
    msg = _errors(cfg)
    assert "model.llm.dtype=bfloat16 while stage finetune trains the LLM" in msg
    assert "pretrain" not in msg.split("while stage")[1].split(":")[0]  # stage 1: LLM frozen
    compose(["experiment=demo", "model.llm.dtype=bfloat16", "run_stages=[pretrain]"], True)


def test_validation_tensor_parallel_only_on_xla(compose):
    cfg = compose(
        ["experiment=demo", "backend=cuda_fsdp", "mesh=xla_cpu_4", "mesh.fsdp=2", "mesh.tensor=2"]
    )
    assert "mesh.tensor=2: tensor parallelism is implemented on backend=xla_spmd" in _errors(cfg)
    compose(
        ["experiment=demo", "backend=xla_spmd", "mesh=xla_cpu_4", "mesh.fsdp=2", "mesh.tensor=2"],
        True,
    )


def test_attention_implementation_is_passed_through_or_rejected(compose):
    from cambrian_train.models.llm import load_causal_lm

    cfg = compose(["experiment=demo", "model.llm.attn_implementation=eager"], True)
    assert load_causal_lm(cfg.model.llm).config._attn_implementation == "eager"
    bad = compose(["experiment=demo", "model.llm.attn_implementation=flashy"])
    assert "model.llm.attn_implementation='flashy' is not one of ['eager'" in _errors(bad)
