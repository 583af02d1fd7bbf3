"""Tests of the synthetic shapes data engine (cambrian_train.data.synthetic)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import subprocess
import sys
import threading
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cambrian_train.config.schema import SyntheticConfig
from cambrian_train.data import synthetic as syn

REPO = Path(__file__).resolve().parents[2]
ALL_TYPES = ["color", "shape", "count", "word"]


def small_cfg(**overrides) -> SyntheticConfig:
    defaults = {"seed": 3, "image_size": 32, "num_pretrain": 8, "num_train": 20, "num_test": 8}
    return SyntheticConfig(**{"question_types": ALL_TYPES, **defaults, **overrides})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def question_type_of(question: str) -> str:
    """Recover the question type of a train question from its wording."""
    for qtype, template in syn.QUESTION_TEMPLATES.items():
        prefix = template.split("{")[0]
        if question.startswith(prefix):
            return qtype
    raise AssertionError(f"unknown question {question!r}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> syn.SyntheticPaths:
    return syn.generate(tmp_path_factory.mktemp("syn") / "data", small_cfg(image_size=64))


def test_paths_layout(tmp_path):
    paths = syn.synthetic_paths(tmp_path / "d")
    assert paths.root == tmp_path / "d"
    assert paths.image_folder == tmp_path / "d" / "images"
    assert (paths.pretrain_path.name, paths.train_path.name, paths.test_path.name) == (
        "pretrain.jsonl",
        "train.jsonl",
        "test.jsonl",
    )
    assert not paths.root.exists()


def test_generate_is_deterministic(tmp_path):
    cfg = small_cfg()
    a, b = syn.generate(tmp_path / "a", cfg), syn.generate(tmp_path / "b", cfg)
    for name in ("pretrain.jsonl", "train.jsonl", "test.jsonl", "manifest.json"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name
    images_a = sorted(p.name for p in a.image_folder.iterdir())
    assert images_a == sorted(p.name for p in b.image_folder.iterdir())
    assert len(images_a) == cfg.num_pretrain + cfg.num_train + cfg.num_test
    for name in images_a:
        assert (a.image_folder / name).read_bytes() == (b.image_folder / name).read_bytes()
        pixels_a = np.asarray(Image.open(a.image_folder / name))
        assert np.array_equal(pixels_a, np.asarray(Image.open(b.image_folder / name)))

    c = syn.generate(tmp_path / "c", dataclasses.replace(cfg, seed=4))
    assert c.train_path.read_bytes() != a.train_path.read_bytes()
    assert c.pretrain_path.read_bytes() != a.pretrain_path.read_bytes()
    first = min(a.image_folder.iterdir()).name
    assert (c.image_folder / first).read_bytes() != (a.image_folder / first).read_bytes()


def test_images_exist_with_right_size(dataset):
    for path in (dataset.pretrain_path, dataset.train_path, dataset.test_path):
        for record in read_jsonl(path):
            assert "/" not in record["image"]
            with Image.open(dataset.image_folder / record["image"]) as image:
                assert image.format == "PNG"
                assert image.mode == "RGB"
                assert image.size == (64, 64)


def test_pretrain_records(dataset):
    records = read_jsonl(dataset.pretrain_path)
    assert len(records) == 8
    for record in records:
        assert record["id"].startswith("cap-")
        human, gpt = record["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n")
        assert human["value"].count("<image>") == 1
        assert human["value"].removeprefix("<image>\n") in syn.CAPTION_PROMPTS
        assert gpt["value"].startswith(("a ", "an ")) and "The word " in gpt["value"]
        assert gpt["value"].endswith(" is written.")


def test_train_records(dataset):
    cfg = small_cfg(image_size=64)
    records = read_jsonl(dataset.train_path)
    assert len(records) == cfg.num_train
    assert len({r["id"] for r in records}) == len(records)
    for record in records:
        assert set(record) == {"id", "image", "conversations"}
        assert record["id"].startswith("vqa-")
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
        question = human["value"].removeprefix("<image>\n")
        assert question.endswith(syn.ANSWER_SUFFIX)
        assert gpt["value"] in syn.choices_for(question_type_of(question), cfg)


def test_test_records(dataset):
    cfg = small_cfg(image_size=64)
    records = read_jsonl(dataset.test_path)
    assert len(records) == cfg.num_test
    for record in records:
        assert set(record) == {"id", "image", "question", "answer", "choices", "question_type"}
        assert record["id"].startswith("test-")
        assert "<image>" not in record["question"]
        assert record["question"].endswith(syn.ANSWER_SUFFIX)
        assert question_type_of(record["question"]) == record["question_type"]
        assert record["choices"] == syn.choices_for(record["question_type"], cfg)
        assert record["answer"] in record["choices"]


def test_test_images_not_shared_with_train(dataset):
    def digests(path):
        return {
            hashlib.sha256(Image.open(dataset.image_folder / r["image"]).tobytes()).hexdigest()
            for r in read_jsonl(path)
        }

    assert not digests(dataset.test_path) & (
        digests(dataset.train_path) | digests(dataset.pretrain_path)
    )


def test_manifest(dataset):
    manifest = json.loads((dataset.root / "manifest.json").read_text())
    assert manifest["config"] == dataclasses.asdict(small_cfg(image_size=64))
    assert manifest["counts"] == {"pretrain": 8, "train": 20, "test": 8}


@pytest.mark.parametrize("image_size", [32, 64, 128])
def test_scene_constraints(image_size):
    cfg = small_cfg(image_size=image_size)
    for seed in range(150):
        rng = random.Random(seed)
        kwargs = [{}, {"count": 3}, {"fixed": ("triangle", "yellow")}, {"word": "CAT"}][seed % 4]
        scene = syn._sample_scene(rng, cfg, **kwargs)
        kinds = [s.kind for s in scene.shapes]
        colors = [s.color for s in scene.shapes]
        assert 1 <= len(kinds) <= cfg.max_shapes
        assert len(set(kinds)) == len(kinds) and len(set(colors)) == len(colors)
        assert set(kinds) <= set(syn.SHAPES) and set(colors) <= set(syn.COLORS)
        assert scene.word in syn.WORDS and scene.word_box is not None
        if "count" in kwargs:
            assert len(kinds) == 3
        if "fixed" in kwargs:
            assert ("triangle", "yellow") in zip(kinds, colors)
        if "word" in kwargs:
            assert scene.word == "CAT"
        boxes = [s.box for s in scene.shapes] + [scene.word_box]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= image_size and 0 <= y0 < y1 <= image_size
        for shape in scene.shapes:
            side = shape.box[2] - shape.box[0]
            assert side == shape.box[3] - shape.box[1] and side >= 0.18 * image_size
        for a, b in combinations(boxes, 2):  # disjoint boxes, so the shapes cannot overlap
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        centers = [s.box[0] + s.box[2] for s in scene.shapes]
        assert centers == sorted(centers)  # left to right, the caption order


def test_no_word_unless_asked():
    cfg = small_cfg(question_types=["color", "shape", "count"])
    for seed in range(20):
        scene = syn._sample_scene(random.Random(seed), cfg)
        assert scene.word is None and scene.word_box is None
        assert "word" not in syn._caption(scene)


def test_caption_wording():
    def shape(kind, color, x):
        return syn.ShapeSpec(kind, color, (x, 0, x + 10, 10))

    one = syn.Scene((shape("circle", "red", 0),), (240, 240, 240))
    assert syn._caption(one) == "a red circle."
    two = syn.Scene((shape("circle", "red", 0), shape("square", "blue", 20)), (240, 240, 240))
    assert syn._caption(two) == "a red circle and a blue square."
    three = syn.Scene(
        (shape("circle", "red", 0), shape("square", "orange", 20), shape("triangle", "green", 40)),
        (240, 240, 240),
        word="CAT",
        word_box=(0, 20, 18, 31),
    )
    assert syn._caption(three) == (
        "a red circle, an orange square and a green triangle. The word CAT is written."
    )


def test_rendered_colours_are_present():
    cfg = small_cfg(image_size=64)
    scene = syn._sample_scene(random.Random(0), cfg, count=3)
    pixels = {tuple(p) for p in np.asarray(syn._render(scene, 64)).reshape(-1, 3)}
    for shape in scene.shapes:
        assert syn.PALETTE[shape.color] in pixels
    assert syn.WORD_COLOR in pixels


@pytest.mark.parametrize("qtype", ["count", "color", "shape", "word"])
def test_answers_are_balanced(qtype):
    cfg = small_cfg(question_types=[qtype])
    answers = Counter()
    for index in range(600):
        scene, question, answer = syn._sample_question(random.Random(index), cfg, qtype)
        answers[answer] += 1
        if qtype == "count":
            assert len(scene.shapes) == int(answer)
        elif qtype == "color":
            asked = question.split("the ")[1].split("?")[0]
            assert [s.color for s in scene.shapes if s.kind == asked] == [answer]
        elif qtype == "shape":
            asked = question.split("is ")[1].split("?")[0]
            assert [s.kind for s in scene.shapes if s.color == asked] == [answer]
        else:
            assert scene.word == answer.upper()
    choices = syn.choices_for(qtype, cfg)
    assert set(answers) == set(choices)
    expected = 600 / len(choices)
    for count in answers.values():
        assert 0.7 * expected <= count <= 1.3 * expected, answers


def test_question_types_are_mixed(tmp_path):
    paths = syn.generate(tmp_path / "d", small_cfg(num_pretrain=0, num_train=120, num_test=0))
    questions = [r["conversations"][0]["value"] for r in read_jsonl(paths.train_path)]
    assert set(Counter(question_type_of(q[len("<image>\n") :]) for q in questions)) == set(
        ALL_TYPES
    )
    assert paths.test_path.read_text() == "" and paths.pretrain_path.read_text() == ""


def test_ensure_is_noop_when_up_to_date(tmp_path):
    cfg = small_cfg(num_pretrain=2, num_train=3, num_test=2)
    root = tmp_path / "d"
    paths = syn.ensure_synthetic(root, cfg)
    assert paths == syn.synthetic_paths(root)
    manifest = root / "manifest.json"
    before = (manifest.read_bytes(), manifest.stat().st_mtime_ns)
    assert syn.ensure_synthetic(root, cfg) == paths
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == before
    assert (tmp_path / "d.lock").exists()

    changed = dataclasses.replace(cfg, num_train=5)
    syn.ensure_synthetic(root, changed)
    assert len(read_jsonl(paths.train_path)) == 5
    assert json.loads(manifest.read_text())["config"]["num_train"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "d.lock"]  # no leftovers


def test_ensure_generates_once_under_concurrency(tmp_path, monkeypatch):
    cfg = small_cfg(num_pretrain=2, num_train=3, num_test=2)
    calls = []
    real_generate = syn.generate
    monkeypatch.setattr(syn, "generate", lambda *a: calls.append(a) or real_generate(*a))
    threads = [
        threading.Thread(target=syn.ensure_synthetic, args=(tmp_path / "d", cfg)) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(read_jsonl(tmp_path / "d" / "train.jsonl")) == 3


def test_failed_generate_keeps_previous_data(tmp_path, monkeypatch):
    root = tmp_path / "d"
    syn.generate(root, small_cfg(num_pretrain=1, num_train=2, num_test=1))
    before = (root / "manifest.json").read_bytes()

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(syn, "_render", boom)
    with pytest.raises(OSError, match="disk full"):
        syn.generate(root, small_cfg(num_train=4))
    assert (root / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        ({"question_types": ["color", "colour"]}, r"question_types.*'colour'"),
        ({"image_size": 16}, r"image_size.*16"),
        ({"max_shapes": 0}, r"max_shapes.*0"),
        ({"max_shapes": 4}, r"max_shapes.*4"),
        ({"num_pretrain": -1}, r"num_pretrain.*-1"),
        ({"num_train": -2}, r"num_train.*-2"),
        ({"num_test": -3}, r"num_test.*-3"),
        ({"question_types": []}, r"question_types"),
    ],
)
def test_validation_errors(tmp_path, overrides, pattern):
    cfg = small_cfg(**overrides)
    with pytest.raises(ValueError, match=pattern):
        syn.generate(tmp_path / "d", cfg)
    with pytest.raises(ValueError, match=pattern):
        syn.ensure_synthetic(tmp_path / "d", cfg)
    assert not (tmp_path / "d").exists()


def test_cli_writes_files(tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, str(REPO / "tools" / "make_synthetic.py"), "--out", str(out)]
    command += ["--seed", "1", "--num-pretrain", "3", "--num-train", "4", "--num-test", "2"]
    command += ["--image-size", "32", "--max-shapes", "2", "--question-types", "color,word"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "(4 records)" in result.stdout and str(out / "train.jsonl") in result.stdout
    assert len(read_jsonl(out / "pretrain.jsonl")) == 3
    assert len(read_jsonl(out / "test.jsonl")) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["question_types"] == ["color", "word"]
    assert manifest["config"]["max_shapes"] == 2

    bad = subprocess.run(
        command[:2] + ["--out", str(out), "--question-types", "size"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "'size'" in bad.stderr
