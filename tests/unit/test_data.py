"""Bad records are counted by reason and skipped, never replaced; batches stay full."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from PIL import Image

from cambrian_train.config.schema import LLMConfig
from cambrian_train.data.collate import collate
from cambrian_train.data.dataset import ImageTextEncoder, Sample, Skipped, SupervisedDataset
from cambrian_train.data.loader import DataError, EpochSampler, SkipStats, batch_stream
from cambrian_train.data.records import open_records
from cambrian_train.data.templates import get_template
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.models.vision.base import ImageSpec, normalize_pixels
from cambrian_train.tiny import ensure_asset

SPECS = {
    "a": ImageSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "b": ImageSpec(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


@pytest.fixture
def dirty(tmp_path):
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "ok.png")
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(tmp_path / "rgba.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    good = {"id": "good", "image": "ok.png", "conversations": [human("<image>\nq?"), gpt("red")]}
    lines = [
        json.dumps(good),
        '{"id": "bad-json", "conversations": [',
        json.dumps(
            {"id": "no-file", "image": "gone.png", "conversations": [human("<image>\nq"), gpt("x")]}
        ),
        json.dumps(
            {
                "id": "undecodable",
                "image": "broken.png",
                "conversations": [human("<image>\nq"), gpt("x")],
            }
        ),
        json.dumps({"id": "no-answer", "conversations": [human("hello")]}),
        json.dumps({"id": "bad-role", "conversations": [{"from": "bot", "value": "x"}, gpt("y")]}),
        json.dumps({"id": "tag-count", "image": "ok.png", "conversations": [human("q"), gpt("x")]}),
        json.dumps({"id": "too-long", "conversations": [human("word " * 200), gpt("x")]}),
        json.dumps(
            {
                "id": "two-images",
                "image": ["ok.png", "ok.png"],
                "conversations": [human("<image><image>q"), gpt("x")],
            }
        ),
        json.dumps({"id": "text-only", "conversations": [human("hi"), gpt("hello")]}),
        json.dumps(
            {"id": "rgba", "image": "rgba.png", "conversations": [human("<image>\nq"), gpt("blue")]}
        ),
        "",
    ]
    path = tmp_path / "dirty.jsonl"
    path.write_text("\n".join(lines))
    tokenizer = load_tokenizer(
        LLMConfig(
            checkpoint=ensure_asset("llama"), template="llama3", num_layers=4, hidden_size=128
        )
    )
    encoder = ImageTextEncoder(
        tokenizer,
        get_template("llama3"),
        SPECS,
        str(tmp_path),
        slot_len=6,
        max_images=1,
        max_length=64,
        system_prompt="",
    )
    return SupervisedDataset(open_records(str(path)), encoder)


EXPECTED = {
    "bad-json": "malformed_json",
    "no-file": "missing_image",
    "undecodable": "bad_image",
    "no-answer": "no_assistant_turn",
    "bad-role": "unknown_role",
    "tag-count": "image_count_mismatch",
    "too-long": "too_long",
    "two-images": "too_many_images",
}


def test_every_reason(dirty):
    assert len(dirty) == 11  # blank line ignored
    items = [dirty[i] for i in range(len(dirty))]
    skipped = {
        s.id if s.id != "#1" else "bad-json": s.reason for s in items if isinstance(s, Skipped)
    }
    assert skipped == EXPECTED
    good = {s.id: s for s in items if isinstance(s, Sample)}
    assert set(good) == {"good", "text-only", "rgba"}
    assert good["good"].pixel_values["a"].shape == (1, 3, 32, 32)
    assert good["good"].pixel_values["b"].shape == (1, 3, 16, 16)
    assert good["text-only"].pixel_values["a"].shape == (0, 3, 32, 32)
    # pad-to-square: the 40x20 red image has mean-coloured bands top and bottom
    pixels = good["good"].pixel_values["a"]
    assert pixels.dtype == torch.uint8  # normalised on the device, by the model
    top = normalize_pixels(pixels, SPECS["a"])[0, :, 0, 16]
    torch.testing.assert_close(top, torch.zeros(3), atol=0.02, rtol=0)


def test_stream_keeps_batches_full_and_counts(dirty):
    stats = SkipStats()
    fn = functools.partial(
        collate, seq_len=64, max_images=1, slot_len=6, pad_id=5, image_specs=SPECS
    )
    stream = batch_stream(dirty, EpochSampler(len(dirty), 0), 4, fn, stats)
    batches = [next(stream) for _ in range(3)]  # 12 valid samples > 3 valid records per epoch
    for b in batches:
        assert b.input_ids.shape == (4, 64)
    mask = torch.cat([b.image_mask[:, 0] for b in batches])
    assert mask.sum() == 8 and (~mask).sum() == 4  # text-only samples keep an empty slot
    assert set(stats.counts) == set(EXPECTED.values())
    assert stats.summary()["first_ids"]["missing_image"] == ["no-file"]


def test_strict_fails_on_first_bad_record(dirty):
    fn = functools.partial(
        collate, seq_len=64, max_images=1, slot_len=6, pad_id=5, image_specs=SPECS
    )
    stream = batch_stream(
        dirty, EpochSampler(len(dirty), 0, shuffle=False), 4, fn, SkipStats(strict=True)
    )
    with pytest.raises(DataError, match=r"record #1 skipped \(malformed_json\)"):
        next(stream)


def test_sampler_is_deterministic_and_sharded():
    a = EpochSampler(10, seed=1, rank=0, world_size=2)
    b = EpochSampler(10, seed=1, rank=1, world_size=2)
    assert a.epoch_indices(0) == EpochSampler(10, seed=1, rank=0, world_size=2).epoch_indices(0)
    assert sorted(a.epoch_indices(0) + b.epoch_indices(0)) == list(range(10))
    assert a.epoch_indices(0) != a.epoch_indices(1)
