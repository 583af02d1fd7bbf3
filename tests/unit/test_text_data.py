"""Text-only fine-tuning (SageMaker JumpStart style): instruction rendering and labels, block
packing, splits, length rules, template errors, the validation loss, and a short CLI run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cambrian_train.config.schema import LLMConfig, TextDataConfig
from cambrian_train.data.dataset import Skipped
from cambrian_train.data.instruct import InstructionEncoder, parse_template
from cambrian_train.data.text_corpus import BlockDataset, split_indices
from cambrian_train.data.text_data import build_text_data, resolve_max_input_length
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.tiny import ensure_asset

TEMPLATE = {"prompt": "Q: {instruction}\nC: {context}\nA:", "completion": " {response}"}
RECORD = {"instruction": "Name a colour.", "context": "Sky", "response": "Blue is one."}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(
        LLMConfig(
            checkpoint=ensure_asset("llama"), template="llama3", num_layers=4, hidden_size=128
        )
    )


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMBRIAN_INDEX_DIR", str(tmp_path / "cache"))


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_instruction_ids_and_labels(tok):
    encoder = InstructionEncoder(tok, parse_template(json.dumps(TEMPLATE), "t.json"), 512)
    ids, labels = encoder.encode(RECORD)
    prompt = ids_of(tok, "Q: Name a colour.\nC: Sky\nA:")
    answer = ids_of(tok, " Blue is one.")
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert ids == [bos, *prompt, *answer, eos]
    assert labels == [-100] * (1 + len(prompt)) + [*answer, eos]


def test_instruction_truncation_keeps_the_prompt_head(tok):
    template = parse_template(json.dumps(TEMPLATE), "t.json")
    prompt = ids_of(tok, "Q: Name a colour.\nC: Sky\nA:")
    answer = ids_of(tok, " Blue is one.")
    limit = 1 + len(prompt) + 1  # room for one completion token
    ids, labels = InstructionEncoder(tok, template, limit).encode(RECORD)
    assert ids == [tok.bos_token_id, *prompt, answer[0]]
    assert labels == [-100] * (1 + len(prompt)) + [answer[0]]
    with pytest.raises(Exception, match="prompt_too_long"):
        InstructionEncoder(tok, template, 1 + len(prompt)).encode(RECORD)


def test_missing_field_is_skipped_naming_it(tok, tmp_path):
    (tmp_path / "template.json").write_text(json.dumps(TEMPLATE))
    records = [RECORD, {"instruction": "x", "response": "y"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = TextDataConfig(instruction_tuned=True, validation_path=str(tmp_path / "train.jsonl"))
    data = build_text_data(cfg, str(tmp_path / "train.jsonl"), tok)
    skipped = data.train[1]
    assert isinstance(skipped, Skipped) and skipped.reason == "missing_field"
    assert "'context'" in skipped.detail
    assert not isinstance(data.train[0], Skipped)


@pytest.mark.parametrize(
    "raw, message",
    [
        ('{"prompt": "{instruction}"}', "missing: \\['completion'\\]"),
        ('{"prompt": "{a}", "completion": " {b}", "extra": 1}', "unknown: \\['extra'\\]"),
        ('{"prompt": "{a}", "completion": " fixed text"}', "names no field"),
        ('{"prompt": "{a.b}", "completion": " {c}"}', "only plain"),
        ('{"prompt": "{a", "completion": " {c}"}', "not a valid template"),
        ("[1, 2]", "must be a JSON object"),
        ("{nope", "not valid JSON"),
    ],
)
def test_template_errors_name_the_file(raw, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_template(raw, "/data/template.json")
    assert "/data/template.json" in str(err.value)


def test_blocks_follow_group_texts():
    stream = np.arange(10, dtype=np.uint32)
    blocks = BlockDataset(stream, 4)
    assert len(blocks) == 2 and blocks.dropped_tokens == 2  # tokens 8, 9 dropped
    assert blocks[0].input_ids == [0, 1, 2, 3] and blocks[1].input_ids == [4, 5, 6, 7]
    assert blocks[1].labels == [4, 5, 6, 7]  # every token supervised
    assert len(BlockDataset(stream, 4, max_blocks=1)) == 1
    assert len(BlockDataset(stream, 4, max_blocks=9)) == 2
    with pytest.raises(IndexError):
        blocks[2]


def test_split_sizes_and_determinism():
    train, val = split_indices(10, 0.25, seed=0)
    assert len(val) == 3 and len(train) == 7  # ceil(2.5) held out
    assert sorted([*train, *val]) == list(range(10))
    # HF train_test_split's membership: the first ceil(ratio n) of default_rng(seed)'s permutation
    reference = np.random.default_rng(0).permutation(10)
    assert list(val) == list(reference[:3]) and list(train) == list(reference[3:])
    again = split_indices(10, 0.25, seed=0)
    assert list(again[1]) == list(val)
    assert list(split_indices(10, 0.25, seed=1)[1]) != list(val)
    assert len(split_indices(10, 0.0, seed=0)[1]) == 0
    with pytest.raises(ValueError, match="validation_split_ratio"):
        split_indices(10, 1.0, seed=0)


def test_instruction_split_and_max_samples(tok, tmp_path):
    (tmp_path / "template.json").write_text(json.dumps(TEMPLATE))
    records = [dict(RECORD, id=f"r{i}") for i in range(10)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    path = str(tmp_path / "train.jsonl")
    cfg = TextDataConfig(instruction_tuned=True, validation_split_ratio=0.2)
    data = build_text_data(cfg, path, tok)
    order = np.random.default_rng(0).permutation(10)
    assert [data.val[i].id for i in range(2)] == [f"r{i}" for i in order[:2]]
    assert [data.train[i].id for i in range(8)] == [f"r{i}" for i in order[2:]]
    small = TextDataConfig(instruction_tuned=True, max_train_samples=3, max_val_samples=1)
    data = build_text_data(small, path, tok)
    assert len(data.train) == 3 and len(data.val) == 1
    assert [data.train[i].id for i in range(3)] == [f"r{i}" for i in order[2:5]]


def test_max_input_length_rules(tok):
    assert resolve_max_input_length(-1, SimpleNamespace(model_max_length=int(1e30))) == 1024
    assert resolve_max_input_length(-1, SimpleNamespace(model_max_length=512)) == 512
    assert resolve_max_input_length(4096, SimpleNamespace(model_max_length=2048)) == 2048
    assert resolve_max_input_length(100, SimpleNamespace(model_max_length=2048)) == 100
    with pytest.raises(ValueError, match="max_input_length=0"):
        resolve_max_input_length(0, SimpleNamespace(model_max_length=2048))
    with pytest.raises(ValueError, match="positions"):
        resolve_max_input_length(-1, SimpleNamespace(model_max_length=4096), max_positions=512)


def test_domain_corpus_formats_and_cache(tok, tmp_path, monkeypatch):
    docs = ["the cat sat.", "a dog ran far away.", "birds sing."]
    txt = tmp_path / "corpus.txt"
    txt.write_text(f"{docs[0]}\n\n{docs[1]}\n{docs[2]}\n")  # the blank line is no document
    csv_file = tmp_path / "corpus.csv"
    csv_file.write_text('body,other\n"the cat sat.",1\n"a dog ran far away.",2\nbirds sing.,3\n')
    jsonl = tmp_path / "corpus.jsonl"
    rows = [{"text": docs[0]}, {"text": docs[1]}, {"text": 7}, {"text": docs[2]}]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wrapped = [[tok.bos_token_id, *ids_of(tok, d), tok.eos_token_id] for d in docs]
    expected = [t for w in wrapped for t in w]
    for path in (txt, csv_file, jsonl):  # csv: no "text" column, so its first one
        cfg = TextDataConfig(max_input_length=4, validation_path=str(txt))
        data = build_text_data(cfg, str(path), tok)
        stream = data.train.stream
        assert list(np.asarray(stream)) == expected, path.name
        assert len(data.train) == len(expected) // 4
        assert data.train.dropped_tokens == len(expected) % 4
    assert data.summary["documents"]["train"]["skipped"] == 1  # the non-string text
    # a second build reads the cache: no tokenizer call
    monkeypatch.setattr(
        "cambrian_train.data.text_corpus._encode_documents",
        lambda *a: pytest.fail("tokenised again"),
    )
    again = build_text_data(
        TextDataConfig(max_input_length=8, validation_path=str(txt)), str(txt), tok
    )
    assert (
        list(np.asarray(again.train.stream)) == expected and len(again.train) == len(expected) // 8
    )


def test_domain_split_is_over_documents(tok, tmp_path):
    docs = [f"document number {i} says hello." for i in range(10)]
    (tmp_path / "c.txt").write_text("".join(d + "\n" for d in docs))
    cfg = TextDataConfig(max_input_length=4, validation_split_ratio=0.2, train_data_split_seed=3)
    data = build_text_data(cfg, str(tmp_path / "c.txt"), tok)
    held_out = set(np.random.default_rng(3).permutation(10)[:2].tolist())

    def stream_of(indices):
        return [
            t
            for i in sorted(indices)
            for t in [tok.bos_token_id, *ids_of(tok, docs[i]), tok.eos_token_id]
        ]

    assert list(np.asarray(data.val.stream)) == stream_of(held_out)
    assert list(np.asarray(data.train.stream)) == stream_of(set(range(10)) - held_out)


def test_val_loss_is_the_mean_over_validation_tokens(tok):
    from cambrian_train.backends.cpu import CPUBackend
    from cambrian_train.config.schema import BackendConfig, MeshConfig
    from cambrian_train.data.collate import collate
    from cambrian_train.data.instruct import InstructionDataset
    from cambrian_train.models import build_model
    from cambrian_train.train.val_loss import ValidationSet, validation_loss
    from tests.conftest import compose_config

    cfg = compose_config(["experiment=text_finetune", "output_dir=/tmp/unused"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    records = [
        {"instruction": f"Question {i}?", "context": "c" * (i + 1), "response": f"Answer {i}."}
        for i in range(5)
    ]
    encoder = InstructionEncoder(tok, parse_template(json.dumps(TEMPLATE), "t.json"), 48)
    dataset = InstructionDataset(records, encoder)
    collate_fn = lambda rows: collate(  # noqa: E731
        rows, 48, 0, 1, tok.pad_token_id, model.image_specs()
    )
    backend = CPUBackend(BackendConfig(), MeshConfig(num_devices=1, fsdp=1))
    val = ValidationSet(dataset, 2, collate_fn, tok.pad_token_id)
    got = validation_loss(model, backend, val)
    # reference: each record alone through the HF LLM, token losses summed then averaged
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(5):
            ids, labels = encoder.encode(records[i])
            logits = model.llm(input_ids=torch.tensor([ids])).logits[0]
            target = torch.tensor(labels[1:])
            total += F.cross_entropy(logits[:-1], target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    assert got["val_tokens"] == count
    assert math.isclose(got["val_loss"], total / count, rel_tol=1e-5)
    assert model.training  # put back
    # two processes' shards: every record once, equal batch counts
    shards = [ValidationSet(dataset, 2, collate_fn, tok.pad_token_id, r, 2) for r in (0, 1)]
    batches = [list(s.batches([])) for s in shards]
    assert len(batches[0]) == len(batches[1]) == 2
    labelled = sum(int((b.labels[:, 1:] != -100).sum()) for bs in batches for b in bs)
    assert labelled == count


def test_text_config_validation(compose):
    from cambrian_train.config.validate import ConfigError, validate

    cfg = compose(["experiment=text_finetune", "output_dir=/tmp/x"])
    validate(cfg)  # no image folder, no test file, max_images=0: all fine for text
    assert cfg.stages["text"].epochs == 5 and cfg.stages["text"].per_device_batch_size == 16
    bad = compose(
        [
            "experiment=text_finetune",
            "output_dir=/tmp/x",
            "data.packing=true",
            "data.text.validation_split_ratio=1.5",
            "data.text.max_train_samples=0",
        ]
    )
    with pytest.raises(ConfigError) as err:
        validate(bad)
    text = str(err.value)
    assert "data.packing=true with data.text" in text
    assert "validation_split_ratio=1.5" in text
    assert "max_train_samples=0" in text
    with pytest.raises(ConfigError, match="max_images=0 must be >= 1"):
        validate(compose(["experiment=demo", "output_dir=/tmp/x", "data.max_images=0"]))


@pytest.mark.integration
def test_cli_text_finetune_runs(tmp_path):
    root = tmp_path / "data"
    args = [
        "experiment=text_finetune",
        f"output_dir={tmp_path / 'run'}",
        f"data.root={root}",
        "data.text.synthetic.num_records=60",
        "stages.text.max_steps=4",
        "stages.text.global_batch_size=8",
        "stages.text.per_device_batch_size=8",
        "logger.wandb=false",
        "logger.progress_bar=false",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "cambrian_train", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "CAMBRIAN_INDEX_DIR": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stage = json.loads((tmp_path / "run" / "results.json").read_text())["stages"]["text"]
    assert stage["text_data"]["train_samples"] == 48 and stage["text_data"]["val_samples"] == 12
    steps = [v["step"] for v in stage["val_history"]]
    assert steps == [0, 4]  # before training, and at the end (an epoch is 6 steps)
    assert stage["val_loss"] < stage["first_val_loss"]
    assert (root / "template.json").is_file() and (root / "train.jsonl").is_file()


def test_bad_template_fails_validation(compose, tmp_path):
    from cambrian_train.config.validate import ConfigError, validate

    (tmp_path / "train.jsonl").write_text(json.dumps(RECORD) + "\n")
    (tmp_path / "template.json").write_text('{"prompt": "{instruction}", "answer": " {response}"}')
    cfg = compose(
        [
            "experiment=text_finetune",
            "output_dir=/tmp/x",
            f"data.train_path={tmp_path / 'train.jsonl'}",
            "data.text.synthetic=null",
        ]
    )
    with pytest.raises(ConfigError, match="template.json: keys must be exactly"):
        validate(cfg)
