"""Interleaved image-text documents (OBELICS style): token layout, rejections, sampler lengths,
a mixture with LLaVA records, and a short training run on documents of 2-3 images."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cambrian_train.config.schema import LLMConfig
from cambrian_train.data.dataset import ImageTextEncoder, Sample, Skipped, SupervisedDataset
from cambrian_train.data.lengths import LengthSpec, compute_lengths
from cambrian_train.data.mixture import MixtureRecords, MixtureSource
from cambrian_train.data.templates import get_template
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.models.vision.base import ImageSpec
from cambrian_train.tiny import ensure_asset

SPECS = {"a": ImageSpec(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
SLOT = 4


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(
        LLMConfig(
            checkpoint=ensure_asset("llama"), template="llama3", num_layers=4, hidden_size=128
        )
    )


def encoder(tok, folder, max_images=3, max_length=96):
    return ImageTextEncoder(
        tok, get_template("llama3"), SPECS, str(folder), SLOT, max_images, max_length, "pad", ""
    )


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.fixture
def folder(tmp_path):
    for name, colour in (("x.png", (255, 0, 0)), ("y.png", (0, 0, 255))):
        Image.new("RGB", (20, 10), colour).save(tmp_path / name)
    return tmp_path


DOC = {
    "id": "doc",
    "texts": ["A red box.", None, "Then a blue one", None, " and the end."],
    "images": [None, "x.png", None, "y.png", None],
}
LLAVA = {
    "id": "llava",
    "image": "x.png",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"},
        {"from": "gpt", "value": "Red."},
    ],
}


def test_token_layout(tok, folder):
    sample = SupervisedDataset([DOC], encoder(tok, folder))[0]
    assert isinstance(sample, Sample)
    a, b, c = (ids_of(tok, t) for t in ("A red box.", "Then a blue one", " and the end."))
    pad, bos, eos = tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    assert sample.input_ids == [bos, *a, *[pad] * SLOT, *b, *[pad] * SLOT, *c, eos]
    assert sample.labels == [-100, *a, *[-100] * SLOT, *b, *[-100] * SLOT, *c, eos]
    assert sample.image_starts == [1 + len(a), 1 + len(a) + SLOT + len(b)]
    pixels = sample.pixel_values["a"]
    assert pixels.shape == (2, 3, 16, 16)
    assert pixels[0, 0].float().mean() > pixels[0, 2].float().mean()  # the red one first


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"texts": ["a", None], "images": [None]}, "bad_document"),
        ({"texts": ["a", "b"], "images": [None, "x.png"]}, "bad_document"),  # both at 1
        ({"texts": ["a", None], "images": [None, None]}, "bad_document"),  # neither at 1
        ({"texts": "a", "images": []}, "bad_document"),
        ({"texts": [3], "images": [None]}, "bad_document"),
        ({"texts": ["see <image> here"], "images": [None]}, "image_tag_in_text"),
        ({"texts": ["a <|eot_id|> b"], "images": [None]}, "special_token_in_text"),
        ({"texts": [None, " "], "images": ["x.png", None]}, "no_text"),
        ({"texts": ["a", None, None], "images": [None, "x.png", "y.png"]}, "too_many_images"),
        ({"texts": ["word " * 200], "images": [None]}, "too_long"),
        ({"texts": ["a", None], "images": [None, "missing.png"]}, "missing_image"),
    ],
)
def test_rejections(tok, folder, record, reason):
    item = SupervisedDataset([record], encoder(tok, folder, max_images=1))[0]
    assert isinstance(item, Skipped) and item.reason == reason, item


def test_lengths_equal_encoded_lengths(tok, folder):
    enc = encoder(tok, folder)
    short = {"texts": ["Only text here."], "images": [None]}
    records = [DOC, LLAVA, short, {"texts": ["x"], "images": []}]
    lengths = compute_lengths(records, LengthSpec.from_encoder(enc), processes=1)
    dataset = SupervisedDataset(records, enc)
    for i in range(3):
        assert lengths.lengths[i] == len(dataset[i].input_ids), records[i].get("id", i)
    assert list(lengths.multimodal[:3]) == [True, True, False]
    assert list(lengths.estimated) == [False, False, False, True]  # the mismatched lists


def test_mixture_of_documents_and_llava(tok, folder, tmp_path):
    docs_dir, llava_dir = tmp_path / "obelics", tmp_path / "llava"
    for d in (docs_dir, llava_dir):
        d.mkdir()
        for name in ("x.png", "y.png"):
            (d / name).write_bytes((folder / name).read_bytes())
    sources = [
        MixtureSource("obelics", [DOC] * 3, str(docs_dir), weight=1.0),
        MixtureSource("llava", [LLAVA] * 3, str(llava_dir), weight=1.0),
    ]
    mixture = MixtureRecords(sources, seed=0)
    assert mixture[0]["images"][1] == str(docs_dir / "x.png")
    dataset = SupervisedDataset(mixture, encoder(tok, "/nonexistent"))
    samples = [dataset[i] for i in range(len(mixture))]
    assert all(isinstance(s, Sample) for s in samples)
    kinds = sorted(len(s.image_starts) for s in samples)
    assert kinds == [1, 1, 1, 2, 2, 2]  # both kinds in one stream


@pytest.mark.integration
def test_training_run_on_documents(synthetic_root, tmp_path, compose):
    from cambrian_train.run import run

    images = sorted(p.name for p in (synthetic_root / "images").iterdir())[:12]
    lines = []
    for i in range(12):
        k = 2 + i % 2  # 2 or 3 images
        texts, refs = [], []
        for j in range(k):
            texts += [f"Picture {j} of document {i}.", None]
            refs += [None, images[(i + j) % len(images)]]
        texts.append("The end.")
        refs.append(None)
        lines.append(json.dumps({"id": f"d{i}", "texts": texts, "images": refs}))
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    cfg = compose(
        [
            "experiment=demo",
            "data=llava",
            f"data.train_path={path}",
            f"data.image_folder={synthetic_root / 'images'}",
            "data.max_images=3",
            "data.num_workers=0",
            f"output_dir={tmp_path / 'run'}",
            "run_stages=[finetune]",
            "stages.finetune.require_init=false",
            "stages.finetune.eval_after=false",
            "stages.finetune.max_steps=3",
            "stages.finetune.max_length=320",
            "stages.finetune.global_batch_size=4",
            "stages.finetune.per_device_batch_size=4",
            "stages.finetune.grad_accum_steps=1",
            "logger.wandb=false",
            "logger.progress_bar=false",
        ],
        validate_it=True,
    )
    stage = run(cfg)["stages"]["finetune"]
    assert stage["steps"] == 3 and stage["skipped"]["total"] == 0
    assert stage["final_loss"] < stage["first_loss"]
