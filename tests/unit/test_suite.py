"""Tests of the four-category synthetic suite (cambrian_train.data.suite, suite_tasks).

Every task's answer is re-derived from the rendered pixels with code written here (exact palette
colours, since nothing is anti-aliased): shapes are recognised by drawing each candidate kind in
the shape's bounding box with PIL and keeping the best overlap, text by matching renderings of
every candidate string, chart values from the axis ticks, spatial relations from pixel extents.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from cambrian_train.config.schema import SyntheticConfig
from cambrian_train.data import suite
from cambrian_train.data.suite_tasks import TASKS
from cambrian_train.data.synthetic import PALETTE, generate, synthetic_paths

SIZE = 64
TICK_GREY = (120, 120, 120)
DARK = (20, 20, 20)
SIDES_BY_KIND = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
WORD_LIST = ["CAT", "DOG", "SUN", "BOX", "MAP", "CUP", "HAT", "PEN", "KEY", "BUS", "FOX", "OWL"]


def cfg(**overrides) -> SyntheticConfig:
    base = dict(kind="suite", seed=5, image_size=SIZE, num_pretrain=12, num_train=36, num_test=3)
    return SyntheticConfig(**{**base, **overrides})


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int64)


def mask_of(array: np.ndarray, rgb) -> np.ndarray:
    return np.all(array == np.array(rgb), axis=-1)


def colours_present(array: np.ndarray) -> set:
    return {name for name, rgb in PALETTE.items() if mask_of(array, rgb).any()}


def bbox(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _drawn(kind: str, box, shape) -> np.ndarray:
    """``kind`` filled in the square ``box`` with PIL's own primitives, as a bool mask."""
    canvas = Image.new("L", shape[::-1], 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=1)
    elif kind == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=1)
    elif kind == "triangle":
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=1)
    else:  # centred in the box, circumradius half its side
        centre = ((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, (x1 - x0 - 1) / 2)
        draw.regular_polygon(centre, SIDES_BY_KIND[kind], fill=1)
    return np.asarray(canvas, dtype=bool)


def kind_of(mask: np.ndarray) -> str:
    """The kind that, drawn in some square box around the mask, gives exactly the mask's pixels
    (a regular polygon does not touch every side of its box, so boxes up to 4 px larger than
    the pixels' bounding box are tried)."""
    x0, y0, x1, y1 = bbox(mask)
    pad = 6
    top, left = max(0, y0 - pad), max(0, x0 - pad)
    crop = mask[top : y1 + pad, left : x1 + pad]
    for kind in ("circle", "square", "triangle", "pentagon", "hexagon"):
        for side in range(max(x1 - x0, y1 - y0), max(x1 - x0, y1 - y0) + 5):
            for bx in range(x1 - side, x0 + 1):
                for by in range(y1 - side, y0 + 1):
                    box = (bx - left, by - top, bx - left + side, by - top + side)
                    if np.array_equal(_drawn(kind, box, crop.shape), crop):
                        return kind
    raise AssertionError("no kind draws exactly these pixels")


def read_text(array: np.ndarray, candidates) -> str:
    """The candidate string whose bitmap-font rendering (x2, nearest) equals the dark pixels."""
    dark = mask_of(array, DARK)
    x0, y0, x1, y1 = bbox(dark)
    crop = dark[y0:y1, x0:x1]
    font = ImageFont.load_default_imagefont()
    matches = []
    for text in candidates:
        left, top, right, bottom = font.getbbox(text)
        glyphs = Image.new("L", (right - left, bottom - top), 0)
        ImageDraw.Draw(glyphs).text((-left, -top), text, fill=255, font=font)
        glyphs = glyphs.resize((glyphs.width * 2, glyphs.height * 2), Image.Resampling.NEAREST)
        rendered = np.asarray(glyphs) > 0
        ry, rx = np.nonzero(rendered)
        rendered = rendered[ry.min() : ry.max() + 1, rx.min() : rx.max() + 1]
        if rendered.shape == crop.shape and (rendered == crop).all():
            matches.append(text)
    assert len(matches) == 1, f"text not recognised uniquely: {matches}"
    return matches[0]


def tick_rows(array: np.ndarray) -> list:
    """Rows of the value-axis ticks, value 1 first (bottom up)."""
    grey = mask_of(array, TICK_GREY)
    column = int(np.nonzero(grey.any(axis=0))[0].min())  # the ticks stick out left of the axis
    return sorted(np.nonzero(grey[:, column])[0].tolist(), reverse=True)


def value_at(row: int, ticks: list) -> int:
    assert row in ticks, f"row {row} is on no tick {ticks}"
    return ticks.index(row) + 1


def components(mask: np.ndarray) -> int:
    """Number of 8-connected groups of True pixels (flood fill)."""
    seen = np.zeros_like(mask)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                    if inside and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        stack.append((ny, nx))
    return count


def shape_mask(array, color):
    mask = mask_of(array, PALETTE[color])
    assert mask.any(), f"{color} is not in the image"
    return mask


def derive(task: str, question, array: np.ndarray) -> str:
    """The answer of ``question`` computed from the pixels alone."""
    text = question.text
    if task == "objects":
        color = re.fullmatch(r"Which shape is (\w+)\?", text).group(1)
        return kind_of(shape_mask(array, color))
    if task == "attributes":
        kind = re.fullmatch(r"What color is the (\w+)\?", text).group(1)
        owners = [c for c in colours_present(array) if kind_of(shape_mask(array, c)) == kind]
        assert len(owners) == 1
        return owners[0]
    if task == "captions" and not question.options:
        (color,) = colours_present(array)
        return f"{color} {kind_of(shape_mask(array, color))}"
    if task == "captions":
        present = colours_present(array)
        by_left = sorted(present, key=lambda c: bbox(shape_mask(array, c))[0])
        truth = " and ".join(f"{c} {kind_of(shape_mask(array, c))}" for c in by_left)
        for option in question.options:  # every other option names a colour not in the image
            if option != truth:
                assert set(re.findall(r"(\w+) \w+", option)) - present
        return truth
    if task == "arithmetic":
        sums = [f"{a}+{b}" for a in range(1, 10) for b in range(1, 10)]
        a, b = read_text(array, sums).split("+")
        return str(int(a) + int(b))
    if task == "shape_facts":
        (color,) = colours_present(array)
        return str(SIDES_BY_KIND[kind_of(shape_mask(array, color))])
    if task == "ocr":
        return read_text(array, WORD_LIST).lower()
    ticks = tick_rows(array) if task in ("chart_max", "chart_value") else None
    if task == "chart_max":
        heights = {c: shape_mask(array, c).any(axis=1).sum() for c in colours_present(array)}
        return max(heights, key=heights.get)
    if task == "chart_value" and "bar" in text:
        color = re.fullmatch(r"What is the value of the (\w+) bar\?", text).group(1)
        top = int(np.nonzero(shape_mask(array, color).any(axis=1))[0].min())
        return str(value_at(top, ticks))
    if task == "chart_value":
        line = mask_of(array, DARK)
        return str(value_at(int(np.nonzero(line.any(axis=1))[0].min()), ticks))
    if task == "spatial":
        m = re.fullmatch(
            r"Is the (\w+) \w+ (left or right of|above or below) the (\w+) \w+\?", text
        )
        first, relation, second = m.groups()
        a, b = bbox(shape_mask(array, first)), bbox(shape_mask(array, second))
        axis = 0 if relation.startswith("left") else 1
        words = ("left", "right") if axis == 0 else ("above", "below")
        if a[axis + 2] <= b[axis]:
            return words[0]
        assert b[axis + 2] <= a[axis], "extents overlap on the asked axis"
        return words[1]
    if task == "count":
        background = array[0, 0]
        return str(components(~np.all(array == background, axis=-1)))
    if task == "relative_size":
        areas = {c: shape_mask(array, c).sum() for c in colours_present(array)}
        small, large = sorted(areas.values())
        assert large >= 2 * small  # sides at least 1.5x apart
        return max(areas, key=areas.get)
    if task == "depth":
        full = []
        for color in colours_present(array):
            mask = shape_mask(array, color)
            x0, y0, x1, y1 = bbox(mask)
            full.append((mask.sum() == (x1 - x0) * (y1 - y0), color))
        assert sorted(f for f, _ in full) == [False, True]  # one occluded, one whole
        return next(c for f, c in full if f)
    raise AssertionError(task)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("mcq", [False, True])
def test_every_answer_is_what_the_pixels_show(task, mcq):
    for index in range(12):
        rng = random.Random(f"pixel-check/{task}/{mcq}/{index}")
        question = TASKS[task][1](rng, SIZE, mcq)
        array = pixels(question.image)
        assert derive(task, question, array) == question.answer, (task, index, question.text)
        if mcq:
            assert question.answer in question.options
            assert len(set(question.options)) == len(question.options) >= 2
        else:
            assert question.options == ()


def test_answers_are_spread_over_their_values():
    for task in ("count", "spatial", "chart_value", "shape_facts", "depth"):
        rng = random.Random(task)
        answers = [TASKS[task][1](rng, SIZE, False).answer for _ in range(300)]
        counts = sorted({a: answers.count(a) for a in answers}.values())
        assert counts[0] >= 300 / len(counts) / 2, (task, counts)  # no answer is rare


def test_prompts_have_the_fixed_forms():
    rng = random.Random(0)
    short = TASKS["count"][1](rng, SIZE, False)
    text, answer, options = suite.question_prompt(short)
    assert text == "How many shapes are there? Answer with a single word or number."
    assert (answer, options) == (short.answer, [])
    mcq = TASKS["spatial"][1](rng, SIZE, True)
    text, answer, options = suite.question_prompt(mcq)
    lines = text.split("\n")
    assert lines[0] == mcq.text and lines[-1] == "Answer with the option's letter."
    assert lines[1:-1] == [f"{'AB'[i]}. {o}" for i, o in enumerate(mcq.options)]
    assert options[ord(answer) - ord("A")] == mcq.answer


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def digests(folder: Path, records) -> dict:
    return {
        r["id"]: hashlib.sha256((folder / r["image"]).read_bytes()).hexdigest() for r in records
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("suite") / "data", cfg())


def test_generation_is_deterministic(tmp_path, built):
    again = generate(tmp_path / "again", cfg())
    for name in ("pretrain.jsonl", "train.jsonl", "test.jsonl", "suite.yaml", "manifest.json"):
        assert (built.root / name).read_bytes() == (again.root / name).read_bytes()
    for split in ("pretrain", "train", "test"):
        records = read_jsonl(built.root / f"{split}.jsonl")
        assert digests(built.image_folder, records) == digests(again.image_folder, records)
    other = generate(tmp_path / "other", cfg(seed=6))
    assert (other.root / "train.jsonl").read_bytes() != (built.root / "train.jsonl").read_bytes()


def test_splits_are_disjoint_and_complete(built):
    test = read_jsonl(built.test_path)
    train = read_jsonl(built.train_path)
    pretrain = read_jsonl(built.pretrain_path)
    assert len(test) == 3 * len(TASKS) and len(train) == 36 and len(pretrain) == 12
    assert sorted({r["task"] for r in test}) == sorted(TASKS)
    seen = {}
    for name, records in (("test", test), ("train", train), ("pretrain", pretrain)):
        for digest in digests(built.image_folder, records).values():
            assert seen.setdefault(digest, name) == name, "an image is in two splits"
    test_pairs = {(r["question"], r["image"]) for r in test}
    train_pairs = {(r["conversations"][0]["value"][8:], r["image"]) for r in train}
    assert not test_pairs & train_pairs


def test_records_are_consistent(built):
    for record in read_jsonl(built.test_path):
        category, _ = TASKS[record["task"]]
        assert record["category"] == category and record["question_type"] == record["task"]
        if record["format"] == "mcq":
            letter = record["answer"]
            assert f"\n{letter}. {record['choices'][ord(letter) - 65]}\n" in record["question"]
        else:
            assert record["choices"] == [] and record["question"].endswith(suite.SHORT_INSTRUCTION)
        assert record["template"].startswith(record["task"] + "/")
    for record in read_jsonl(built.train_path):
        human, gpt = record["conversations"]
        assert human["value"].startswith("<image>\n") and gpt["value"]
        assert record["format"] in ("mcq", "short")
    for record in read_jsonl(built.pretrain_path):
        assert record["conversations"][1]["value"].endswith(".")
    lines = (built.root / "suite.yaml").read_text().splitlines()
    assert lines == [f"syn_{t}: test.jsonl" for t in TASKS]


def test_paths_match_the_shapes_layout(built):
    assert synthetic_paths(built.root) == built


def test_task_subset_and_mcq_fraction(tmp_path):
    paths = generate(tmp_path / "d", cfg(tasks=["depth", "count"], mcq_fraction=1.0))
    test = read_jsonl(paths.test_path)
    assert [r["task"] for r in test] == ["count"] * 3 + ["depth"] * 3  # the table's order
    assert {r["format"] for r in test} == {"mcq"}
    assert {r["task"] for r in read_jsonl(paths.train_path)} <= {"depth", "count"}


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        ({"tasks": ["colour"]}, r"synthetic.tasks: unknown tasks \['colour'\]"),
        ({"mcq_fraction": 1.5}, r"synthetic.mcq_fraction must be in \[0, 1\], got 1.5"),
        ({"image_size": 32}, r"synthetic.image_size must be >= 48 for the suite, got 32"),
        ({"num_train": -1}, r"synthetic.num_train must be >= 0, got -1"),
        ({"kind": "shapez"}, r"synthetic.kind must be one of shapes, suite, got 'shapez'"),
    ],
)
def test_validation_errors(tmp_path, overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        generate(tmp_path / "d", cfg(**overrides))
    assert not (tmp_path / "d").exists()


def test_default_size_generates_in_seconds(tmp_path):
    import time

    start = time.perf_counter()
    generate(tmp_path / "d", cfg(num_pretrain=200, num_train=800, num_test=5))
    assert time.perf_counter() - start < 10  # the demo's 10,600 images: ~10 s on 2 cores
