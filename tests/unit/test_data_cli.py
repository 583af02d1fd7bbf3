"""``cambrian-data``: validate (exact skip counts by reason), stats, inspect and convert on a small
dirty data set, composed like ``cambrian-train`` from ``experiment=demo`` plus overrides."""

from __future__ import annotations

import functools
import json

import pytest
import transformers
from PIL import Image
from transformers import AutoImageProcessor

from cambrian_train.config.schema import LLMConfig
from cambrian_train.data.cli import main, stage_files
from cambrian_train.data.templates import Turn, get_template
from cambrian_train.data.tokenize import encode
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.tiny import ensure_asset
from tests.conftest import compose_config

SLOT_LEN = 72  # demo: 64 tokens in an 8x8 grid, each row closed by a newline slot
EXPECTED_SKIPS = {  # stage pretrain (template plain, max_length 96): reason -> first ids
    "malformed_json": ["#1"],
    "missing_image": ["miss-1", "miss-2"],
    "bad_image": ["undec-1"],
    "no_assistant_turn": ["noans-1"],
    "unknown_role": ["role-1"],
    "image_count_mismatch": ["tags-1"],
    "too_long": ["long-1"],
    "empty_after_masking": ["empty-1"],
}


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


def record(rid, turns, image=None, **extra):
    return json.dumps(
        {"id": rid, **({"image": image} if image else {}), "conversations": turns, **extra}
    )


@pytest.fixture
def dirty(tmp_path):
    """A dirty LLaVA JSONL (11 records, 2 usable in stage pretrain) and the overrides to use it."""
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    lines = [
        record("good-1", [human("<image>\nWhat color?"), gpt("red")], "red.png"),
        '{"id": "bad-json", "conversations": [',
        record("miss-1", [human("<image>\nq"), gpt("x")], "gone.png"),
        record("undec-1", [human("<image>\nq"), gpt("x")], "broken.png"),
        record("noans-1", [human("hello")]),
        record("role-1", [{"from": "bot", "value": "x"}, gpt("y")]),
        "",
        record("tags-1", [human("no tag here"), gpt("x")], "red.png"),
        record("long-1", [human("hi"), gpt("word " * 150)]),
        record("empty-1", [human("hi"), gpt("")]),
        record("miss-2", [human("<image>\nq"), gpt("x")], "gone-too.png"),
        record("good-2", [human("hi"), gpt("hello")], source="web"),
    ]
    path = tmp_path / "dirty.jsonl"
    path.write_text("\n".join(lines) + "\n")
    overrides = [
        "experiment=demo",
        "data.synthetic=null",
        f"data.root={tmp_path}",
        f"data.pretrain_path={path}",
        f"data.train_path={path}",
        f"data.image_folder={tmp_path}",
        f"output_dir={tmp_path / 'run'}",
    ]
    return tmp_path, overrides


@pytest.fixture
def no_weights(monkeypatch):
    """Any model weight loading (LLM or tower) fails the test."""

    def refuse(cls, *args, **kwargs):
        raise AssertionError(f"{cls.__name__}.from_pretrained called: weights must not load")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))


def test_validate_counts_every_skip_reason(dirty, capsys, no_weights):
    root, overrides = dirty
    report = root / "report.json"
    args = ["validate", *overrides, "stage=pretrain", "--workers", "2", "--json", str(report)]
    assert main(args) == 0
    (result,) = json.loads(report.read_text())
    assert result["num_records"] == 11 and result["num_usable"] == 2
    assert result["counts"] == {k: len(v) for k, v in EXPECTED_SKIPS.items()}
    assert result["first_ids"] == EXPECTED_SKIPS
    out = capsys.readouterr().out
    assert "  records  11\n  usable   2\n  skipped  9\n" in out
    assert "    missing_image                2  first: miss-1, miss-2\n" in out

    assert main([*args, "--strict"]) == 1  # any skip fails under --strict
    assert (
        main(["validate", *overrides, "--stage", "pretrain", "--limit", "4", "--json", str(report)])
        == 0
    )
    (limited,) = json.loads(report.read_text())
    assert limited["num_records"] == 4 and limited["num_usable"] == 1
    assert limited["counts"] == {"malformed_json": 1, "missing_image": 1, "bad_image": 1}


def test_validate_every_run_stage_by_default(dirty, capsys):
    _, overrides = dirty
    assert main(["validate", *overrides, "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert out.count("/dirty.jsonl\n  records  11\n") == 2
    assert out.index("stage pretrain:") < out.index("stage finetune:")


@functools.cache
def demo_tokenizer():
    llm = LLMConfig(
        checkpoint=ensure_asset("llama"), template="llama3", num_layers=4, hidden_size=128
    )
    return load_tokenizer(llm)


def full_length(turns, template_name):
    """The true token count of a conversation, from the training tokenizer and encode()."""
    tokenizer = demo_tokenizer()
    turns = [Turn("user" if t["from"] == "human" else "assistant", t["value"]) for t in turns]
    template = get_template(template_name)
    encoded = encode(turns, template, tokenizer, SLOT_LEN, tokenizer.pad_token_id, 10**6, "")
    return len(encoded.input_ids)


def test_stats_summary_and_histogram(dirty, capsys, no_weights):
    root, overrides = dirty
    out_dir = root / "stats"
    assert (
        main(["stats", *overrides, "stage=finetune", "--out", str(out_dir), "--workers", "0"]) == 0
    )
    stats = json.loads((out_dir / "finetune.json").read_text())
    assert stats["num_records"] == 11
    assert stats["unreadable"] == {"malformed_json": 1, "unknown_role": 1, "no_assistant_turn": 1}
    assert (stats["with_image"], stats["text_only"], stats["num_images"]) == (5, 3, 5)
    assert stats["num_turns"] == 16
    assert stats["categories"] == {
        "good": 1,
        "miss": 2,
        "undec": 1,
        "tags": 1,
        "long": 1,
        "empty": 1,
        "web": 1,
    }
    longest = full_length([human("hi"), gpt("word " * 150)], "llama3")
    assert stats["tokens"]["max"] == longest > 112 and stats["tokens"]["over_max_length"] == 1
    with Image.open(out_dir / "finetune_token_lengths.png") as png:
        assert png.format == "PNG" and png.width > 100
    assert "over max_length=112: 1" in capsys.readouterr().out


def test_inspect_renders_placeholders_spans_and_tower_images(dirty, capsys, no_weights):
    root, overrides = dirty
    overrides = [*overrides, "+model/vision_tower@model.towers.siglip=tiny_siglip"]
    saved = root / "images"
    assert (
        main(
            [
                "inspect",
                "0",
                *overrides,
                "stage=finetune",
                "--color",
                "never",
                "--save-images",
                str(saved),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "status: usable" in out
    assert out.count(f"<image×{SLOT_LEN}>") == 1 and "<image>" not in out.split("text (")[1]
    text = out.split("text (supervised spans [[...]]):\n")[1]
    assert "[[red<|eot_id|>]]" in text and text.count("[[") == 1
    length = full_length([human("<image>\nWhat color?"), gpt("red")], "llama3")
    assert f"tokens: {length} = {SLOT_LEN} image placeholders" in out
    assert "red.png  40x20 RGB" in out
    for tower, asset in (("clip", "clip"), ("siglip", "siglip")):
        mean = AutoImageProcessor.from_pretrained(ensure_asset(asset)).image_mean
        with Image.open(saved / f"0-0-{tower}.png") as img:
            assert img.size == (64, 64)
            assert img.getpixel((32, 32)) == (255, 0, 0)  # the image
            # pad fill: the processor mean truncated, as LLaVA's / Cambrian's expand2square
            assert img.getpixel((32, 1)) == tuple(int(m * 255) for m in mean)


def test_inspect_skipped_records(dirty, capsys):
    _, overrides = dirty
    assert main(["inspect", "7", *overrides, "stage=finetune", "--color", "never"]) == 1
    out = capsys.readouterr().out
    assert "id: long-1\nstatus: skipped (too_long)" in out and "[[word word" in out
    assert main(["inspect", "1", *overrides, "stage=finetune"]) == 1
    assert "cannot render: malformed_json" in capsys.readouterr().out


def test_user_errors_exit_2(dirty, capsys, tmp_path):
    _, overrides = dirty
    assert main(["validate", *overrides, "stage=nope"]) == 2
    assert "stage='nope' is not one of ['finetune', 'pretrain']" in capsys.readouterr().err
    assert main(["inspect", "99", *overrides, "stage=finetune"]) == 2
    assert "INDEX=99 is outside the 11 records" in capsys.readouterr().err
    assert main(["inspect", "0", *overrides]) == 2  # two run stages: pick one
    assert main(["convert", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 2
    assert "one must end in .json and the other in .jsonl" in capsys.readouterr().err


def test_convert_round_trip(tmp_path, capsys):
    items = [{"id": f"r{i}", "conversations": [gpt("é" * i)]} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(items, indent=2))
    assert main(["convert", str(tmp_path / "a.json"), str(tmp_path / "b.jsonl")]) == 0
    assert "wrote 5 records" in capsys.readouterr().out
    assert [json.loads(x) for x in (tmp_path / "b.jsonl").read_text().splitlines()] == items
    assert main(["convert", str(tmp_path / "b.jsonl"), str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text()) == items
    (tmp_path / "bad.json").write_text('[{"id": 1}, {"id": ]')
    assert main(["convert", str(tmp_path / "bad.json"), str(tmp_path / "d.jsonl")]) == 2
    assert "bad.json: malformed JSON (Expecting value) at byte 19" in capsys.readouterr().err
    assert not (tmp_path / "d.jsonl").exists()


def test_mixture_sources_are_checked_one_file_each(tmp_path):
    names = ["language", "general", "ocr", "counting", "math", "code", "science"]
    cfg = compose_config(
        ["experiment=demo", "data=cambrian_7m_mixture", f"data.image_folder={tmp_path}"]
        + [f"data.sources.{n}.path={tmp_path / n}.jsonl" for n in names]
        + [f"data.sources.ocr.image_folder={tmp_path / 'ocr-images'}"]
    )
    files = stage_files(cfg, cfg.stages["finetune"])
    assert [f.label for f in files] == [f"stage finetune, source {n}" for n in names]
    assert [f.path for f in files] == [f"{tmp_path / n}.jsonl" for n in names]
    assert files[2].image_folder == str(tmp_path / "ocr-images")
    assert {f.image_folder for f in files[:2] + files[3:]} == {str(tmp_path)}
