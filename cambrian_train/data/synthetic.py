"""Synthetic shapes data set: rendered PNG images plus LLaVA caption / VQA records.

Every image shows 1..``max_shapes`` non-overlapping shapes (circle, square, triangle) on a light,
slightly varied background. Within one image the shape kinds are distinct and the colours are
distinct, so "What color is the circle?" and "Which shape is red?" have unique answers. When
"word" is among ``cfg.question_types``, EVERY image of the data set (captions and all VQA types)
also carries a 3-letter uppercase word drawn with PIL's bitmap font; otherwise no image has one.

Files under ``root`` (see :func:`synthetic_paths`); records name images relative to ``images/``:

``pretrain.jsonl`` (stage-1 captions, ids ``cap-``) and ``train.jsonl`` (stage-2 VQA, ids ``vqa-``)
in LLaVA ``conversations`` format; ``test.jsonl`` (ids ``test-``: id, image, question, answer,
choices, question_type); ``manifest.json`` (the config as a dict, record counts, format version).

Answers are balanced: the answer is drawn uniformly first and the scene is built to satisfy it.
Each record draws from its own ``random.Random`` seeded by (seed, split, index), so the output is
deterministic and the three splits use independent streams (no image is shared between them).

``cfg.kind="suite"`` selects the four-category synthetic suite instead (data/suite.py), written
in the same layout through the same :func:`generate` / :func:`ensure_synthetic`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from cambrian_train.config.schema import SyntheticConfig
from cambrian_train.fileutil import file_lock

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
QUESTION_TYPES = ("color", "shape", "count", "word")
KINDS = ("shapes", "suite")  # synthetic.kind: this module's set, or the suite (data/suite.py)
SHAPES = ("circle", "square", "triangle")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 180),
    "orange": (250, 130, 0),
}
COLORS = tuple(PALETTE)
WORDS = ("CAT", "DOG", "SUN", "BOX", "RED", "MAP", "CUP", "HAT")
WORD_COLOR = (20, 20, 20)
CAPTION_PROMPTS = (
    "Describe the image briefly.",
    "What is in the image?",
    "Give a short description of the picture.",
    "List the shapes in the image.",
)
QUESTION_TEMPLATES = {
    "color": "What color is the {shape}?",
    "shape": "Which shape is {color}?",
    "count": "How many shapes are there?",
    "word": "What word is written in the image?",
}
ANSWER_SUFFIX = " Answer with a single word."
MIN_SHAPE_FRAC = 0.2  # shape side as a fraction of the image side
MAX_SHAPE_FRAC = 0.34
GAP = 2  # minimum free pixels between two boxes and between a box and the border

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 with x1, y1 exclusive
PathLike = str | Path


@dataclass(frozen=True)
class ShapeSpec:
    kind: str
    color: str
    box: Box


@dataclass(frozen=True)
class Scene:
    """What one image shows; ``shapes`` are ordered left to right."""

    shapes: tuple[ShapeSpec, ...]
    background: tuple[int, int, int]
    word: str | None = None
    word_box: Box | None = None


@dataclass(frozen=True)
class SyntheticPaths:
    root: Path
    image_folder: Path
    pretrain_path: Path
    train_path: Path
    test_path: Path


def synthetic_paths(root: PathLike) -> SyntheticPaths:
    """The file layout of a synthetic data set rooted at ``root`` (nothing is created)."""
    root = Path(root)
    return SyntheticPaths(
        root, root / "images", root / "pretrain.jsonl", root / "train.jsonl", root / "test.jsonl"
    )


def validate_config(cfg: SyntheticConfig) -> None:
    """Raise ``ValueError`` naming the field and the value of the first invalid setting."""
    if cfg.kind not in KINDS:
        raise ValueError(f"synthetic.kind must be one of {', '.join(KINDS)}, got {cfg.kind!r}")
    if cfg.kind == "suite":
        from cambrian_train.data.suite import validate_suite

        return validate_suite(cfg)
    for name in ("num_pretrain", "num_train", "num_test"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"synthetic.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.image_size < 32:
        raise ValueError(f"synthetic.image_size must be >= 32, got {cfg.image_size}")
    if not 1 <= cfg.max_shapes <= len(SHAPES):
        raise ValueError(f"synthetic.max_shapes must be in 1..{len(SHAPES)}, got {cfg.max_shapes}")
    for qtype in cfg.question_types:
        if qtype not in QUESTION_TYPES:
            raise ValueError(
                f"synthetic.question_types: unknown question type {qtype!r} "
                f"(supported: {', '.join(QUESTION_TYPES)})"
            )
    if not cfg.question_types and (cfg.num_train or cfg.num_test):
        raise ValueError("synthetic.question_types must not be empty, got []")


def choices_for(qtype: str, cfg: SyntheticConfig) -> list[str]:
    """Every possible answer of a question type, in a fixed order."""
    counts = [str(n) for n in range(1, cfg.max_shapes + 1)]
    options = {"color": COLORS, "shape": SHAPES, "count": counts, "word": WORDS}
    return [answer.lower() for answer in options[qtype]]


@cache
def _font() -> ImageFont.ImageFont:
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


@cache
def _word_mask(word: str, image_size: int) -> Image.Image:
    """The word as an "L" mask, scaled up (nearest) with the image so it stays legible."""
    left, top, right, bottom = _font().getbbox(word)
    mask = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask).text((-left, -top), word, fill=255, font=_font())
    scale = max(1, round(image_size / 64))
    return mask.resize((mask.width * scale, mask.height * scale), Image.Resampling.NEAREST)


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] + GAP and b[0] < a[2] + GAP and a[1] < b[3] + GAP and b[1] < a[3] + GAP


def _place(rng: random.Random, size: tuple[int, int], image_size: int, taken: list[Box]):
    """A random box of ``size`` clear of ``taken`` (rejection sampling), or None."""
    width, height = size
    for _ in range(100):
        x = rng.randint(GAP, image_size - GAP - width)
        y = rng.randint(GAP, image_size - GAP - height)
        box = (x, y, x + width, y + height)
        if not any(_overlaps(box, other) for other in taken):
            return box
    return None


def _sample_scene(
    rng: random.Random,
    cfg: SyntheticConfig,
    *,
    count: int | None = None,
    fixed: tuple[str, str] | None = None,
    word: str | None = None,
) -> Scene:
    """A random scene; ``count`` shapes if given, containing the (kind, colour) pair ``fixed``.

    ``word`` forces the written word; a word is drawn only when "word" is a question type.
    """
    n = count if count is not None else rng.randint(1, cfg.max_shapes)
    pinned = [fixed] if fixed else []
    kinds = rng.sample([k for k in SHAPES if not fixed or k != fixed[0]], n - len(pinned))
    colors = rng.sample([c for c in COLORS if not fixed or c != fixed[1]], n - len(pinned))
    pairs = pinned + list(zip(kinds, colors))
    word = (word or rng.choice(WORDS)) if "word" in cfg.question_types else None
    base = rng.randint(230, 250)
    background = tuple(min(255, base + rng.randint(-4, 4)) for _ in range(3))
    size = cfg.image_size
    low = max(6, math.ceil(MIN_SHAPE_FRAC * size))
    for attempt in range(50):  # shrink the largest allowed side on every retry
        frac = MAX_SHAPE_FRAC - (MAX_SHAPE_FRAC - MIN_SHAPE_FRAC) * attempt / 49
        taken: list[Box] = []
        word_box = _place(rng, _word_mask(word, size).size, size, taken) if word else None
        taken += [word_box] if word_box else []
        shapes = []
        for kind, color in pairs:
            side = rng.randint(low, max(low, round(frac * size)))
            box = _place(rng, (side, side), size, taken)
            if box is None:
                break
            taken.append(box)
            shapes.append(ShapeSpec(kind, color, box))
        if len(shapes) == n and (word_box or not word):
            shapes.sort(key=lambda s: (s.box[0] + s.box[2], s.box[1] + s.box[3], s.kind))
            return Scene(tuple(shapes), background, word, word_box)
    raise RuntimeError(f"could not place {n} shapes in a {size}px image")


def _render(scene: Scene, image_size: int) -> Image.Image:
    """Draw ``scene`` as an RGB image (no anti-aliasing, so pixels are exactly reproducible)."""
    image = Image.new("RGB", (image_size, image_size), scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.box
        fill = PALETTE[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
    if scene.word and scene.word_box:
        image.paste(WORD_COLOR, scene.word_box[:2], _word_mask(scene.word, image_size))
    return image


def _caption(scene: Scene) -> str:
    """E.g. "a red circle, an orange square and a green triangle. The word CAT is written."."""
    parts = [f"{'an' if s.color[0] in 'aeiou' else 'a'} {s.color} {s.kind}" for s in scene.shapes]
    text = parts[-1] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + "." + (f" The word {scene.word} is written." if scene.word else "")


def _sample_question(rng: random.Random, cfg: SyntheticConfig, qtype: str):
    """(scene, question, answer): the answer is drawn uniformly, then a scene that fits it."""
    answer = rng.choice(choices_for(qtype, cfg))
    kind, color = rng.choice(SHAPES), rng.choice(COLORS)  # the asked-about shape / colour
    if qtype == "color":
        scene = _sample_scene(rng, cfg, fixed=(kind, answer))
    elif qtype == "shape":
        scene = _sample_scene(rng, cfg, fixed=(answer, color))
    elif qtype == "count":
        scene = _sample_scene(rng, cfg, count=int(answer))
    else:
        scene = _sample_scene(rng, cfg, word=answer.upper())
    question = QUESTION_TEMPLATES[qtype].format(shape=kind, color=color) + ANSWER_SUFFIX
    return scene, question, answer


def _conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]


def _pretrain_record(rng: random.Random, cfg: SyntheticConfig, name: str):
    scene = _sample_scene(rng, cfg)
    conversation = _conversation(rng.choice(CAPTION_PROMPTS), _caption(scene))
    return scene, {"id": name, "image": f"{name}.png", "conversations": conversation}


def _train_record(rng: random.Random, cfg: SyntheticConfig, name: str):
    scene, question, answer = _sample_question(rng, cfg, rng.choice(cfg.question_types))
    conversation = _conversation(question, answer)
    return scene, {"id": name, "image": f"{name}.png", "conversations": conversation}


def _test_record(rng: random.Random, cfg: SyntheticConfig, name: str):
    qtype = rng.choice(cfg.question_types)
    scene, question, answer = _sample_question(rng, cfg, qtype)
    record = {"id": name, "image": f"{name}.png", "question": question, "answer": answer}
    record.update(choices=choices_for(qtype, cfg), question_type=qtype)
    return scene, record


RecordFn = Callable[[random.Random, SyntheticConfig, str], tuple[Scene, dict[str, Any]]]
_SPLITS: tuple[tuple[str, str, str, RecordFn], ...] = (
    ("pretrain", "cap", "num_pretrain", _pretrain_record),
    ("train", "vqa", "num_train", _train_record),
    ("test", "test", "num_test", _test_record),
)


def _record_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"cambrian-synthetic/{seed}/{split}/{index}")


def config_dict(cfg: SyntheticConfig) -> dict[str, Any]:
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SyntheticConfig)}
    out["question_types"] = list(out["question_types"])
    out["tasks"] = list(out["tasks"])
    return out


def _build(out: Path, cfg: SyntheticConfig) -> dict[str, int]:
    """Render every split into the (new) directory ``out``; the manifest is written last."""
    paths = synthetic_paths(out)
    paths.image_folder.mkdir(parents=True)
    counts = {}
    for split, prefix, field, make_record in _SPLITS:
        counts[split] = getattr(cfg, field)
        with (out / f"{split}.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
            for index in range(counts[split]):
                rng = _record_rng(cfg.seed, split, index)
                scene, record = make_record(rng, cfg, f"{prefix}-{index:06d}")
                _render(scene, cfg.image_size).save(paths.image_folder / record["image"], "PNG")
                handle.write(json.dumps(record) + "\n")
    manifest = {"format_version": FORMAT_VERSION, "config": config_dict(cfg), "counts": counts}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return counts


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def write_atomically(root: PathLike, build: Callable[[Path], Any]) -> Any:
    """Run ``build(tmp)`` on a fresh sibling directory of ``root``, then rename it to ``root``
    (replacing a previous one, which is put back if the rename fails); returns what build did."""
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        built = build(tmp)
        old = None
        if root.exists() or root.is_symlink():
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:12]}"
            root.rename(old)
        try:
            tmp.rename(root)
        except BaseException:
            if old is not None:
                old.rename(root)  # put the previous data set back
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        _remove(old)
    return built


def generate(root: PathLike, cfg: SyntheticConfig) -> SyntheticPaths:
    """Render the data set into ``root`` (replacing it), building in a sibling then renaming.

    ``cfg.kind="suite"`` renders the four-category suite instead (data/suite.py)."""
    validate_config(cfg)
    if cfg.kind == "suite":
        from cambrian_train.data.suite import build_suite

        counts = write_atomically(root, lambda out: build_suite(out, cfg))
    else:
        counts = write_atomically(root, lambda out: _build(out, cfg))
    logger.info("synthetic data set written to %s: %s", root, counts)
    return synthetic_paths(root)


def format_version(cfg: SyntheticConfig) -> int:
    """The manifest format version of the data set ``cfg`` describes."""
    if cfg.kind == "suite":
        from cambrian_train.data.suite import SUITE_FORMAT_VERSION

        return SUITE_FORMAT_VERSION
    return FORMAT_VERSION


def _manifest_matches(root: Path, cfg: SyntheticConfig) -> bool:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("format_version") == format_version(cfg)
        and manifest.get("config") == config_dict(cfg)
    )


def ensure_synthetic(root: PathLike, cfg: SyntheticConfig) -> SyntheticPaths:
    """Return the paths of ``root``, generating it first unless its manifest matches ``cfg``.

    Holds an exclusive ``fcntl`` lock on ``<root>.lock`` so concurrent callers generate once.
    """
    validate_config(cfg)
    root = Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f"{root.name}.lock"):
        if _manifest_matches(root, cfg):
            logger.debug("synthetic data set at %s is up to date", root)
            return synthetic_paths(root)
        return generate(root, cfg)
