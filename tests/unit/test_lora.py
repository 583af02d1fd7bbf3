"""LoRA adapters (models/lora.py): what trains, what is saved, merged and peft exports.

Expected values come from outside the code under test: the base LLM as transformers loads it
from the tiny checkpoint, parameter counts from the LLM config's shapes, and peft's own
``PeftModel.from_pretrained`` reading the exported adapter.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from cambrian_train.backends.cpu import CPUBackend
from cambrian_train.config.validate import ConfigError, validate
from cambrian_train.infer.export_cli import main as export_main
from cambrian_train.infer.load import load_pretrained, model_from_checkpoint
from cambrian_train.models import build_model, lora
from cambrian_train.train.checkpoint import TRAINABLE_FILE
from cambrian_train.train.stage import apply_stage, count_params
from tests.conftest import compose_config

# fixtures: images (two test images), one_thread (autouse)
from tests.unit.test_generate import images, one_thread, prompt_batch  # noqa: F401

LORA = ["model.llm.lora.r=4", "model.llm.lora.alpha=8", "model.llm.lora.dropout=0.0"]
QUESTIONS = [("<image>\nwhat color is it?", "wide.png"), ("count the shapes", None)]


def tiny_cfg(tmp_path, *extra):
    return compose_config(["experiment=demo", f"output_dir={tmp_path}", *LORA, *extra])


def token_ids(vocab: int):
    return torch.randint(3, vocab, (2, 9), generator=torch.Generator().manual_seed(0))


def test_adapters_start_as_the_base_and_only_adapters_train(tmp_path):
    cfg = tiny_cfg(tmp_path)
    model = build_model(cfg.model).eval()
    base = AutoModelForCausalLM.from_pretrained(cfg.model.llm.checkpoint).eval()
    ids = token_ids(base.config.vocab_size)
    with torch.no_grad():  # lora_B starts at zero: the adapted LLM is its checkpoint
        assert torch.equal(model.llm(ids).logits, base(ids).logits)

    groups = apply_stage(model, cfg.stages["finetune"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(
        n.startswith(("connector.", "image_newline")) or lora.is_adapter_name(n) for n in trained
    )
    assert {g.name for g in groups} >= {"llm", "connector"}
    # r·(in + out) per adapted matrix, from the config's shapes
    c = base.config
    head_dim = c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    shapes = [(c.hidden_size, q), (c.hidden_size, kv), (c.hidden_size, kv), (q, c.hidden_size)]
    shapes += [(c.hidden_size, c.intermediate_size)] * 2 + [(c.intermediate_size, c.hidden_size)]
    per_layer = sum(4 * (i + o) for i, o in shapes)
    adapters = sum(p.numel() for n, p in model.named_parameters() if lora.is_adapter_name(n))
    assert adapters == per_layer * c.num_hidden_layers
    connector = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("llm."))
    connector -= sum(p.numel() for p in model.towers.parameters())
    assert count_params(model, trainable_only=True) == adapters + connector
    assert all(p.dtype == torch.float32 for p in lora.adapter_parameters(model.llm))


def test_deferred_build_reads_the_base_and_seeds_the_same_adapters(tmp_path):
    cfg = tiny_cfg(tmp_path)
    eager = build_model(cfg.model)
    deferred = build_model(cfg.model, defer_weights=True)
    assert lora.has_adapters(deferred.llm) and any(p.is_meta for p in deferred.llm.parameters())
    assert not any(p.is_meta for p in lora.adapter_parameters(deferred.llm))
    deferred = CPUBackend(cfg.backend, cfg.mesh).prepare_model(deferred)
    want = eager.llm.state_dict()
    got = deferred.llm.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want), "base or adapters differ"


def test_tower_adapters_train_alone_on_a_trainable_tower(tmp_path):
    cfg = tiny_cfg(
        tmp_path,
        "model.llm.lora.r=0",
        "model.towers.clip.trainable=true",
        "model.towers.clip.lora.r=2",
    )
    model = build_model(cfg.model)
    apply_stage(model, cfg.stages["finetune"])
    tower = {n for n, p in model.towers.named_parameters() if p.requires_grad}
    assert tower and all(lora.is_adapter_name(n) for n in tower)
    assert all(p.requires_grad for p in model.llm.parameters())  # no LLM adapters: it all trains


@pytest.mark.parametrize(
    "extra, message",
    [
        (["model.llm.quantization=nf4", "model.llm.dtype=bfloat16"], "backend=cuda_fsdp"),
        (["model.llm.lora.r=0", "model.llm.quantization=int8"], "model.llm.lora.r > 0"),
        (["model.llm.quantization=fp8"], "'fp8' is not one of"),
        (["model.llm.lora.dropout=1.5"], "model.llm.lora.dropout=1.5"),
        (["model.towers.clip.lora.r=2"], "set model.towers.clip.trainable=true"),
        (["model.llm.lora.target_modules=[]"], "target_modules is empty"),
    ],
)
def test_bad_adapter_settings_fail_before_start(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        validate(tiny_cfg(tmp_path, *extra), check_paths=False)


def test_unknown_target_module_names_the_setting(tmp_path):
    cfg = tiny_cfg(tmp_path, "model.llm.lora.target_modules=[attn_q]")
    with pytest.raises(ValueError, match=r"model.llm.lora.target_modules=\['attn_q'\]"):
        build_model(cfg.model)


@pytest.fixture(scope="module")
def lora_run(synthetic_root, tmp_path_factory):
    """A short LoRA finetune through the command line; → its stage checkpoint."""
    run = tmp_path_factory.mktemp("lora") / "run"
    args = [
        "experiment=demo",
        f"output_dir={run}",
        "data.synthetic=null",
        f"data.root={synthetic_root}",
        "run_stages=[finetune]",
        "stages.finetune.require_init=false",
        "stages.finetune.eval_after=false",
        "stages.finetune.max_steps=4",
        "stages.finetune.lr=5e-3",
        "logger.wandb=false",
        "logger.progress_bar=false",
        *LORA,
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "cambrian_train", *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run / "finetune" / "checkpoint"


def logits_of(model, encoder, image_root):
    with torch.no_grad():
        return model.logits(prompt_batch(encoder, QUESTIONS, image_root))


def test_trained_checkpoint_holds_adapters_and_an_untouched_base(lora_run):
    with safe_open(str(lora_run / TRAINABLE_FILE), framework="pt") as f:
        names = set(f.keys())
    llm_names = {n for n in names if n.startswith("llm.")}
    assert llm_names and all(lora.is_adapter_name(n) for n in llm_names)
    model, cfg, _ = model_from_checkpoint(lora_run)
    assert any(p.abs().sum() > 0 for n, p in model.llm.named_parameters() if ".lora_B." in n)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.llm.checkpoint).state_dict()
    own = model.llm.state_dict()
    for name, value in base.items():
        adapted = name.replace(".weight", ".base_layer.weight")
        assert torch.equal(own.get(adapted, own.get(name)), value), name


def test_merged_export_equals_the_adapter_model(lora_run, tmp_path, images):  # noqa: F811
    model, _, _ = model_from_checkpoint(lora_run)
    out = tmp_path / "merged"
    assert export_main([str(lora_run), str(out)]) == 0
    merged, _, encoder = load_pretrained(out)
    assert not lora.has_adapters(merged.llm)
    exported = OmegaConf.load(out / "cambrian.yaml")
    assert exported.model.llm.lora.r == 0 and exported.llm_adapter is None
    plain = AutoModelForCausalLM.from_pretrained(out / "llm")  # transformers alone reads it
    assert not any("lora" in n or "base_layer" in n for n in plain.state_dict())
    expected = logits_of(model, encoder, images)
    torch.testing.assert_close(logits_of(merged, encoder, images), expected, atol=1e-5, rtol=1e-5)


def test_peft_export_loads_in_peft_and_here(lora_run, tmp_path, images):  # noqa: F811
    from peft import PeftModel

    model, _, _ = model_from_checkpoint(lora_run)
    out = tmp_path / "peft"
    assert export_main([str(lora_run), str(out), "--lora", "peft"]) == 0
    assert (out / "llm_adapter" / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(out / "llm").eval()
    assert not any("lora" in n for n in base.state_dict())
    peft_model = PeftModel.from_pretrained(base, out / "llm_adapter").eval()
    ids = token_ids(base.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, model.llm(ids).logits)
    loaded, _, encoder = load_pretrained(out)
    assert lora.has_adapters(loaded.llm)
    expected = logits_of(model, encoder, images)
    assert torch.equal(logits_of(loaded, encoder, images), expected)
