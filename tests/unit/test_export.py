"""Export / import / one-call loading / chat CLI on a tiny "trained" run checkpoint.

The checkpoint is written with ``save_stage_checkpoint`` from a tiny model (HF CLIP, OpenCLIP
ConvNeXt and a trainable timm ViT; SVA connector also inside the LLM) whose trained parameters
were moved off their pretrained values, so a load that skipped any of them would show.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cambrian_train.infer import chat
from cambrian_train.infer.export import export_checkpoint, export_connector
from cambrian_train.infer.export_cli import main as export_main
from cambrian_train.infer.generate import generate
from cambrian_train.infer.load import load_pretrained
from cambrian_train.models import build_model
from cambrian_train.models.convert import load_official
from cambrian_train.run import config_yaml
from cambrian_train.tiny import LLAMA_SPEC, ensure_asset
from cambrian_train.train.checkpoint import load_connector, save_stage_checkpoint
from tests.conftest import compose_config
from tests.unit.test_convert import to_official

# fixtures: images (two test images), one_thread (autouse)
from tests.unit.test_generate import images, one_thread, prompt_batch  # noqa: F401

MODEL = [
    "model/connector=tiny_sva",
    "model.connector.insert.count=1",
    "+model/vision_tower@model.towers.convnext=tiny_convnext",
    "model.towers.convnext.num_tokens=64",
    "+model/vision_tower@model.towers.vit=tiny_timm_vit",
    "model.towers.vit.trainable=true",
]
QUESTIONS = [("<image>\nwhat color is it?", "wide.png"), ("count the shapes", None)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, in-memory model, run checkpoint dir) of a tiny stage-2 run."""
    root = tmp_path_factory.mktemp("run")
    cfg = compose_config(["experiment=demo", f"output_dir={root}", *MODEL])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    trainable = {
        n for n, _ in model.named_parameters() if not n.startswith("towers.") or ".vit." in n
    }
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in trainable:
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    ckpt = root / "finetune" / "checkpoint"
    save_stage_checkpoint(
        model.state_dict(), trainable, ckpt, {"stage": "finetune"}, config_yaml(cfg)
    )
    return cfg, model, ckpt


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    assert export_main([str(trained[2]), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(exported):
    return load_pretrained(exported)


def logits_of(model, encoder, image_root):
    with torch.no_grad():
        return model.logits(prompt_batch(encoder, QUESTIONS, image_root))


def test_export_loads_with_identical_logits(trained, loaded, images):  # noqa: F811
    cfg, model, ckpt = trained
    from_export, _, encoder = loaded
    assert not from_export.training
    expected = logits_of(model, encoder, images)
    assert torch.equal(logits_of(from_export, encoder, images), expected)
    from_ckpt, _, ckpt_encoder = load_pretrained(ckpt.parent)  # the stage dir works too
    assert torch.equal(logits_of(from_ckpt, ckpt_encoder, images), expected)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in from_export.state_dict().items())
    # the prompt settings are the finetune stage's; the encoder is the one training used
    assert encoder.max_length == cfg.stages["finetune"].max_length
    assert encoder.system_prompt == "" and encoder.template.name == "llama3"


def test_export_directory_is_self_contained(trained, exported):
    cfg, model, _ = trained
    llm = AutoModelForCausalLM.from_pretrained(exported / "llm")  # transformers alone
    assert torch.equal(llm.lm_head.weight, model.llm.lm_head.weight)
    tokenizer = AutoTokenizer.from_pretrained(exported / "llm")
    assert tokenizer.eos_token == "<|eot_id|>"
    assert (exported / "towers/convnext/open_clip_config.json").is_file()
    assert (exported / "towers/vit/config.json").is_file()
    text = (exported / "cambrian.yaml").read_text()
    for rel in (
        "checkpoint: llm",
        "towers/clip",
        "local-dir:towers/convnext",
        "local-dir:towers/vit",
    ):
        assert rel in text
    assert str(ensure_asset("llama")) not in text  # nothing points outside the directory
    moved = exported.parent / "moved"
    exported.rename(moved)
    try:
        loaded, _, _ = load_pretrained(moved)
        qkv = loaded.towers["vit"].model.blocks[0].attn.qkv.weight
        assert torch.equal(qkv, model.towers["vit"].model.blocks[0].attn.qkv.weight)
    finally:
        moved.rename(exported)


def test_connector_only_export_is_an_init_from(trained, tmp_path):
    cfg, model, ckpt = trained
    out = tmp_path / "connector"
    assert export_main([str(ckpt), str(out), "--connector-only"]) == 0
    info = json.loads((out / "connector.json").read_text())
    assert info["connector"]["name"] == "sva" and info["image_token_len"] == 64
    assert sorted(info["towers"]) == ["clip", "convnext", "vit"]
    state = json.loads((ckpt / "state.json").read_text())
    assert info["digest"] == state["connector_digest"]
    fresh = build_model(cfg.model)
    assert load_connector(fresh, str(out)) == info["digest"]  # as stages.finetune.init_from
    assert load_connector(fresh, str(out / "connector.safetensors")) == info["digest"]
    own = model.state_dict()
    for name, value in fresh.state_dict().items():
        if name.startswith("connector.") or name == "image_newline":
            assert torch.equal(value, own[name]), name
    with pytest.raises(ValueError, match="not empty"):
        export_connector(ckpt, out)


def test_export_errors_name_the_problem(trained, tmp_path, capsys):
    assert export_main([str(tmp_path), str(tmp_path / "x")]) == 2
    assert "not a run checkpoint" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not empty"):
        export_checkpoint(trained[2], trained[2])
    with pytest.raises(ValueError, match="is not a directory"):
        load_pretrained(tmp_path / "absent")


def write_official(model, root, extra=None, drop=None):
    """A sharded official-named checkpoint of ``model``'s non-tower weights (random values)."""
    gen = torch.Generator().manual_seed(7)
    tensors = {
        to_official(k): torch.randn(v.shape, generator=gen)
        for k, v in model.state_dict().items()
        if not k.startswith("towers.")
    }
    tensors["model.vision_tower_aux_list.0.weight"] = torch.zeros(2)
    tensors.update(extra or {})
    for name in drop or []:
        del tensors[name]
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-2.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(root / shard))
        weight_map.update({k: shard for k in keys})
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    AutoTokenizer.from_pretrained(ensure_asset("tokenizer")).save_pretrained(root)
    return tensors


def test_import_official_round_trip(tmp_path, images, capsys):  # noqa: F811
    vocab = json.loads((Path(ensure_asset("llama")) / "config.json").read_text())["vocab_size"]
    arch = ",".join(f"{k}:{v}" for k, v in {**LLAMA_SPEC, "vocab_size": vocab}.items())
    overrides = [
        "model/connector=tiny_sva",
        "model.connector.insert.count=2",
        f"++model.llm.architecture={{model_type:llama,{arch}}}",
    ]
    cfg = compose_config(overrides)
    reference = build_model(cfg.model).eval()
    official = tmp_path / "official"
    official.mkdir()
    tensors = write_official(reference, official)
    load_official(reference, tensors)
    out = tmp_path / "imported"
    assert export_main(["import-official", str(official), str(out), *overrides]) == 0
    assert "1 vision-tower tensors skipped" in capsys.readouterr().out
    loaded, tokenizer, encoder = load_pretrained(out)
    own = reference.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in loaded.state_dict().items())
    assert torch.equal(logits_of(loaded, encoder, images), logits_of(reference, encoder, images))

    bad = tmp_path / "bad"
    bad.mkdir()
    write_official(reference, bad, extra={"mystery.weight": torch.zeros(1)})
    assert export_main(["import-official", str(bad), str(tmp_path / "o1"), *overrides]) == 2
    assert "'mystery.weight'" in capsys.readouterr().err
    write_official(reference, bad, drop=["model.vision_query"])
    assert export_main(["import-official", str(bad), str(tmp_path / "o2"), *overrides]) == 2
    assert "missing ['connector.vision_query']" in capsys.readouterr().err


def test_chat_one_shot_streams_the_greedy_answer(exported, loaded, images, capsys):  # noqa: F811
    image = str(images / "wide.png")
    argv = ["--model", str(exported), "--image", image, "--prompt", "what color is it?"]
    assert chat.main([*argv, "--max-new-tokens", "6", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    model, tokenizer, encoder = loaded
    batch = prompt_batch(encoder, QUESTIONS[:1], images)  # the eval prompt for the same question
    assert printed == generate(model, batch, tokenizer, 6)[0] + "\n"
    assert chat.main(["--model", str(exported), "--image", "nowhere.png", "--prompt", "hi"]) == 2
    assert "nowhere.png does not exist" in capsys.readouterr().err


def test_chat_loop_keeps_history_and_commands(exported, loaded, images, monkeypatch, capsys):  # noqa: F811
    model, _, encoder = loaded
    encoder = dataclasses.replace(encoder)  # the test shortens its max_length
    session = chat.ChatSession(model, encoder, chat.ChatOptions(max_new_tokens=3))
    session.set_image(str(images / "wide.png"))
    streamed = "".join(session.ask("what color is it?"))
    first = session.exchanges[0][1]
    assert session.exchanges == [("what color is it?", streamed.strip())]
    second = session.prompt_text("and the shape?", session.exchanges)
    assert second.count("<image>") == 1 and second.index("<image>") < second.index("what color")
    assert f"{first}<|eot_id|>" in second and second.endswith("assistant<|end_header_id|>\n\n")
    session.encoder.max_length = len(session.encode("and the shape?").input_ids) - 1
    encoded = session.encode("and the shape?")  # too long with the history: the oldest goes
    assert session.exchanges == [] and len(encoded.image_starts) == 1
    lines = "hello\n/image nowhere.png\n/bogus\n/reset\n/quit\nnot read\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert chat.main(["--model", str(exported), "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "error: image nowhere.png does not exist" in out
    assert "unknown command '/bogus'" in out and "(conversation cleared)" in out
