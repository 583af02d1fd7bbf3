"""The task families of the four-category synthetic suite (data/suite.py), one function each.

A task function ``(rng, image_size, mcq) -> Question`` draws the answer first (uniformly over the
task's answers, so no answer is a free prior) and then a scene that satisfies it, and returns the
rendered image, the question text (without options or instruction), the short answer, the options
of the multiple-choice form (the answer among them; empty when ``mcq`` is false), a caption of the
scene (stage-1 data) and the id of the question's template (what the text-only prior groups by).

Categories follow Cambrian-1's grouping: General (objects, attributes, captions), Knowledge
(arithmetic on rendered digits, facts about shapes), OCR & Chart (words, the tallest bar, value
read-out from bar and line charts), Vision-Centric (left/right and above/below, counting,
relative size, occlusion order).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from cambrian_train.data import suite_render as r
from cambrian_train.data.synthetic import COLORS

WORDS = ("CAT", "DOG", "SUN", "BOX", "MAP", "CUP", "HAT", "PEN", "KEY", "BUS", "FOX", "OWL")
NUMBER_WORDS = ("one", "two", "three", "four", "five")
MAX_COUNT = 5


@dataclass(frozen=True)
class Question:
    image: Image.Image
    text: str
    answer: str
    options: tuple[str, ...]
    caption: str
    template: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _options(rng: random.Random, answer: str, pool, mcq: bool, num: int = 4) -> tuple[str, ...]:
    """``answer`` and up to ``num - 1`` distinct distractors from ``pool``, shuffled."""
    if not mcq:
        return ()
    others = [p for p in pool if p != answer]
    chosen = [answer, *rng.sample(others, min(num - 1, len(others)))]
    rng.shuffle(chosen)
    return tuple(chosen)


def _shapes(rng, size, pairs, low, high, taken=None):
    """Place (kind, colour) pairs as non-overlapping squares of side in [low, high]; retries with
    smaller sides. Returns [(kind, colour, box)] or raises when nothing fits."""
    for attempt in range(40):
        top = max(low, high - attempt * (high - low) // 39)
        boxes, placed = list(taken or []), []
        for kind, color in pairs:
            side = rng.randint(low, top)
            box = r.place(rng, side, side, size, boxes)
            if box is None:
                break
            boxes.append(box)
            placed.append((kind, color, box))
        if len(placed) == len(pairs):
            return placed
    raise RuntimeError(f"could not place {len(pairs)} shapes in a {size}px image")


def _side_range(size: int, low: float, high: float) -> tuple[int, int]:
    return max(6, round(low * size)), max(6, round(high * size))


def _draw_scene(rng, size, placed):
    image, draw = r.canvas(rng, size)
    for kind, color, box in placed:
        r.draw_shape(draw, kind, box, color)
    return image


def _describe(placed) -> str:
    parts = [f"{_article(c)} {c} {k}" for k, c, _ in sorted(placed, key=lambda p: p[2][0])]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# General ------------------------------------------------------------------------------------


def objects(rng: random.Random, size: int, mcq: bool) -> Question:
    answer = rng.choice(r.KINDS)
    others = rng.sample([k for k in r.KINDS if k != answer], rng.randint(0, 1))
    colors = rng.sample(COLORS, 1 + len(others))
    placed = _shapes(rng, size, list(zip([answer, *others], colors)), *_side_range(size, 0.2, 0.4))
    text = f"Which shape is {colors[0]}?"
    return Question(
        _draw_scene(rng, size, placed),
        text,
        answer,
        _options(rng, answer, r.KINDS, mcq),
        _describe(placed) + ".",
        "objects/which_shape",
    )


def attributes(rng: random.Random, size: int, mcq: bool) -> Question:
    answer = rng.choice(COLORS)
    kinds = rng.sample(r.KINDS, rng.randint(1, 2))
    colors = [answer, *rng.sample([c for c in COLORS if c != answer], len(kinds) - 1)]
    placed = _shapes(rng, size, list(zip(kinds, colors)), *_side_range(size, 0.2, 0.4))
    return Question(
        _draw_scene(rng, size, placed),
        f"What color is the {kinds[0]}?",
        answer,
        _options(rng, answer, COLORS, mcq),
        _describe(placed) + ".",
        "attributes/what_color",
    )


def captions(rng: random.Random, size: int, mcq: bool) -> Question:
    """Short form: "Name the color and shape." of one shape; MCQ: the caption of two shapes
    against captions with one colour swapped for a colour absent from the image."""
    if not mcq:
        kind, color = rng.choice(r.KINDS), rng.choice(COLORS)
        placed = _shapes(rng, size, [(kind, color)], *_side_range(size, 0.3, 0.5))
        caption = f"{_article(color)} {color} {kind}."
        text, answer, template = "Name the color and shape.", f"{color} {kind}", "captions/name"
        return Question(_draw_scene(rng, size, placed), text, answer, (), caption, template)
    kinds, colors = rng.sample(r.KINDS, 2), rng.sample(COLORS, 2)
    placed = sorted(
        _shapes(rng, size, list(zip(kinds, colors)), *_side_range(size, 0.2, 0.4)),
        key=lambda p: p[2][0],
    )
    absent = [c for c in COLORS if c not in colors]

    def phrase(pairs):
        return " and ".join(f"{c} {k}" for k, c in pairs)

    truth = [(k, c) for k, c, _ in placed]
    answer = phrase(truth)
    distractors = []
    for swap, new_color in zip((0, 1, rng.randint(0, 1)), rng.sample(absent, 3)):
        pairs = list(truth)
        pairs[swap] = (pairs[swap][0], new_color)
        distractors.append(phrase(pairs))
    options = [answer, *distractors]
    rng.shuffle(options)
    return Question(
        _draw_scene(rng, size, placed),
        "Which caption fits the image?",
        answer,
        tuple(options),
        _describe(placed) + ".",
        "captions/which_caption",
    )


# Knowledge ----------------------------------------------------------------------------------


def arithmetic(rng: random.Random, size: int, mcq: bool) -> Question:
    total = rng.randint(2, 10)
    a = rng.randint(max(1, total - 9), min(9, total - 1))
    expression = f"{a}+{total - a}"
    image, _ = r.canvas(rng, size)
    scale = r.text_scale(size)
    mask = r.text_mask(expression, scale)
    box = r.place(rng, mask.width, mask.height, size, [])
    if box is None:
        raise RuntimeError(f"{expression!r} does not fit a {size}px image")
    r.paste_text(image, expression, box[:2], scale)
    answer = str(total)
    return Question(
        image,
        "What is the sum of the two numbers?",
        answer,
        _options(rng, answer, [str(n) for n in range(2, 11)], mcq),
        f"the sum {a} + {total - a} written in black.",
        "arithmetic/sum",
    )


def shape_facts(rng: random.Random, size: int, mcq: bool) -> Question:
    kind = rng.choice(r.POLYGONS)
    color = rng.choice(COLORS)
    placed = _shapes(rng, size, [(kind, color)], *_side_range(size, 0.45, 0.7))
    answer = str(r.SIDES[kind])
    return Question(
        _draw_scene(rng, size, placed),
        "How many sides does the shape have?",
        answer,
        _options(rng, answer, [str(r.SIDES[k]) for k in r.POLYGONS], mcq),
        f"{_article(color)} {color} {kind}.",
        "shape_facts/sides",
    )


# OCR & Chart --------------------------------------------------------------------------------


def ocr(rng: random.Random, size: int, mcq: bool) -> Question:
    word = rng.choice(WORDS)
    image, _ = r.canvas(rng, size)
    scale = r.text_scale(size)
    mask = r.text_mask(word, scale)
    box = r.place(rng, mask.width, mask.height, size, [])
    if box is None:
        raise RuntimeError(f"{word!r} does not fit a {size}px image")
    r.paste_text(image, word, box[:2], scale)
    answer = word.lower()
    return Question(
        image,
        "What word is written in the image?",
        answer,
        _options(rng, answer, [w.lower() for w in WORDS], mcq),
        f"the word {word} written in black.",
        "ocr/word",
    )


def _bar_chart(rng, size, colors, values):
    image, draw = r.canvas(rng, size)
    r.draw_bars(draw, r.chart_layout(size), values, colors)
    caption = "a bar chart: " + ", ".join(f"{c} {v}" for c, v in zip(colors, values)) + "."
    return image, caption


def chart_max(rng: random.Random, size: int, mcq: bool) -> Question:
    count = rng.randint(3, 4)
    answer = rng.choice(COLORS)
    colors = [answer, *rng.sample([c for c in COLORS if c != answer], count - 1)]
    values = rng.sample(range(1, 6), count)
    values.sort(reverse=True)  # the answer's bar is the tallest ...
    order = rng.sample(range(count), count)  # ... wherever it stands
    colors, values = [colors[i] for i in order], [values[i] for i in order]
    image, caption = _bar_chart(rng, size, colors, values)
    return Question(
        image,
        "Which bar is the tallest?",
        answer,
        _options(rng, answer, colors, mcq),
        caption,
        "chart_max/tallest",
    )


def chart_value(rng: random.Random, size: int, mcq: bool) -> Question:
    """A bar's value ("What is the value of the red bar?") or a line chart's highest value."""
    value = rng.randint(1, 5)
    answer = str(value)
    options = _options(rng, answer, [str(v) for v in range(1, 6)], mcq)
    if rng.random() < 0.5:
        count = rng.randint(2, 4)
        colors = rng.sample(COLORS, count)
        values = [value, *(rng.randint(1, 5) for _ in range(count - 1))]
        image, caption = _bar_chart(rng, size, colors, values)
        text = f"What is the value of the {colors[0]} bar?"
        return Question(image, text, answer, options, caption, "chart_value/bar")
    count = rng.randint(3, 5)
    values = [value, *(rng.randint(1, value) for _ in range(count - 1))]
    rng.shuffle(values)
    image, draw = r.canvas(rng, size)
    r.draw_line_chart(draw, r.chart_layout(size), values)
    caption = "a line chart of " + ", ".join(map(str, values)) + "."
    return Question(
        image,
        "What is the highest value of the line?",
        answer,
        options,
        caption,
        "chart_value/line",
    )


# Vision-Centric -----------------------------------------------------------------------------

RELATIONS = {"horizontal": ("left", "right"), "vertical": ("above", "below")}


def spatial(rng: random.Random, size: int, mcq: bool) -> Question:
    """Two shapes whose extents along the asked axis do not overlap (the relation is clear)."""
    axis = rng.choice(tuple(RELATIONS))
    answer = rng.choice(RELATIONS[axis])
    kinds, colors = rng.sample(r.KINDS, 2), rng.sample(COLORS, 2)
    lo = 0 if axis == "horizontal" else 1
    for _ in range(200):
        placed = _shapes(rng, size, list(zip(kinds, colors)), *_side_range(size, 0.15, 0.3))
        first, second = placed[0][2], placed[1][2]
        if first[lo + 2] <= second[lo]:
            relation = RELATIONS[axis][0]  # the first ends before the second starts
        elif second[lo + 2] <= first[lo]:
            relation = RELATIONS[axis][1]
        else:
            continue
        if relation == answer:
            break
    else:
        raise RuntimeError(f"could not place two shapes {answer} of each other")
    (k1, c1, _), (k2, c2, _) = placed
    word = " or ".join(RELATIONS[axis])
    text = f"Is the {c1} {k1} {word} {'of ' if axis == 'horizontal' else ''}the {c2} {k2}?"
    caption = f"{_article(c1)} {c1} {k1} {answer} {'of ' if axis == 'horizontal' else ''}"
    return Question(
        _draw_scene(rng, size, placed),
        text,
        answer,
        _options(rng, answer, RELATIONS[axis], mcq),
        caption + f"{_article(c2)} {c2} {k2}.",
        f"spatial/{axis}",
    )


def count(rng: random.Random, size: int, mcq: bool) -> Question:
    number = rng.randint(1, MAX_COUNT)
    pairs = [(rng.choice(r.KINDS), rng.choice(COLORS)) for _ in range(number)]
    placed = _shapes(rng, size, pairs, *_side_range(size, 0.12, 0.22))
    answer = str(number)
    return Question(
        _draw_scene(rng, size, placed),
        "How many shapes are there?",
        answer,
        _options(rng, answer, [str(n) for n in range(1, MAX_COUNT + 1)], mcq),
        f"{NUMBER_WORDS[number - 1]} shape{'s' if number > 1 else ''}: {_describe(placed)}.",
        "count/how_many",
    )


def relative_size(rng: random.Random, size: int, mcq: bool) -> Question:
    """Two shapes of one kind, the larger at least 1.5 times the smaller's side."""
    kind = rng.choice(r.KINDS)
    colors = rng.sample(COLORS, 2)
    answer = rng.choice(colors)
    small_low, small_high = _side_range(size, 0.12, 0.2)
    small = rng.randint(small_low, small_high)
    large = rng.randint(-(-3 * small // 2), max(-(-3 * small // 2), round(0.45 * size)))
    other = next(c for c in colors if c != answer)
    big = r.place(rng, large, large, size, [])  # the large one first: the small always fits
    tiny = r.place(rng, small, small, size, [big]) if big else None
    if tiny is None:
        raise RuntimeError(f"could not place sides {small} and {large} in {size}px")
    placed = [(kind, answer, big), (kind, other, tiny)]
    return Question(
        _draw_scene(rng, size, placed),
        f"Which is larger, the {colors[0]} {kind} or the {colors[1]} {kind}?",
        answer,
        _options(rng, answer, colors, mcq),
        f"a large {answer} {kind} and a small {other} {kind}.",
        "relative_size/larger",
    )


def depth(rng: random.Random, size: int, mcq: bool) -> Question:
    """Two squares overlapping at a corner (neither covers a whole side of the other, so the back
    one is visibly cut); the front one is drawn last."""
    colors = rng.sample(COLORS, 2)
    front = rng.choice(colors)
    back = next(c for c in colors if c != front)
    low, high = _side_range(size, 0.3, 0.5)
    for _ in range(500):
        boxes = []
        for _ in range(2):
            side = rng.randint(low, high)
            x, y = rng.randint(r.GAP, size - r.GAP - side), rng.randint(r.GAP, size - r.GAP - side)
            boxes.append((x, y, x + side, y + side))
        a, b = boxes
        ix = min(a[2], b[2]) - max(a[0], b[0])
        iy = min(a[3], b[3]) - max(a[1], b[1])
        contains = any(
            p[0] <= q[0] and p[1] <= q[1] and p[2] >= q[2] and p[3] >= q[3]
            for p, q in ((a, b), (b, a))
        )
        smaller = min(a[2] - a[0], b[2] - b[0])
        if 4 <= ix < smaller and 4 <= iy < smaller and not contains:
            break  # a corner is covered: the back square shows an L, the front stays whole
    else:
        raise RuntimeError(f"could not place two overlapping squares in {size}px")
    image, draw = r.canvas(rng, size)
    r.draw_shape(draw, "square", boxes[0], back)
    r.draw_shape(draw, "square", boxes[1], front)
    return Question(
        image,
        f"Which square is in front, the {colors[0]} one or the {colors[1]} one?",
        front,
        _options(rng, front, colors, mcq),
        f"{_article(front)} {front} square in front of {_article(back)} {back} square.",
        "depth/in_front",
    )


TaskFn = Callable[[random.Random, int, bool], Question]
# task -> (category, function), in the table's column order
TASKS: dict[str, tuple[str, TaskFn]] = {
    "objects": ("General", objects),
    "attributes": ("General", attributes),
    "captions": ("General", captions),
    "arithmetic": ("Knowledge", arithmetic),
    "shape_facts": ("Knowledge", shape_facts),
    "ocr": ("OCR & Chart", ocr),
    "chart_max": ("OCR & Chart", chart_max),
    "chart_value": ("OCR & Chart", chart_value),
    "spatial": ("Vision-Centric", spatial),
    "count": ("Vision-Centric", count),
    "relative_size": ("Vision-Centric", relative_size),
    "depth": ("Vision-Centric", depth),
}
