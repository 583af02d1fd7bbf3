"""Write a small left/right + above/below spatial data set in LLaVA format, as a new user would.

    python docs/examples/make_spatial_llava.py OUT [--train 4000] [--test 300] [--size 128]

Writes ``OUT/images/*.png``, ``OUT/train.jsonl`` (LLaVA ``conversations`` records) and
``OUT/test.jsonl`` (``{"id", "image", "question", "answer", "choices"}``), using PIL only -- no
cambrian_train code -- so it is exactly what a user brings to ``data=llava``::

    cambrian-train experiment=demo data=llava data.train_path=OUT/train.jsonl \\
        data.image_folder=OUT/images data.test_path=OUT/test.jsonl output_dir=runs/spatial

Each image holds two shapes of different kinds and colours whose extents along the asked axis do
not overlap; the question names both ("Is the red circle left or right of the blue square?") and
the answer is one word. Answers are balanced (drawn first), so the question alone gives 50 %.
Seeded: the same arguments write the same files; train and test use separate streams.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 180),
    "orange": (250, 130, 0),
}
SHAPES = ("circle", "square", "triangle")
AXES = {"horizontal": ("left", "right"), "vertical": ("above", "below")}


def draw(draw_ctx, kind, box, fill):
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw_ctx.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif kind == "square":
        draw_ctx.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw_ctx.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)


def random_box(rng, size):
    side = rng.randint(size // 6, size // 3)
    x, y = rng.randint(2, size - 2 - side), rng.randint(2, size - 2 - side)
    return (x, y, x + side, y + side)


def sample(rng, size):
    """(image, question, answer, choices) with the answer drawn first."""
    axis = rng.choice(tuple(AXES))
    answer = rng.choice(AXES[axis])
    (k1, k2), (c1, c2) = rng.sample(SHAPES, 2), rng.sample(tuple(COLORS), 2)
    lo = 0 if axis == "horizontal" else 1
    while True:
        a, b = random_box(rng, size), random_box(rng, size)
        if a[lo + 2] + 2 <= b[lo]:
            relation = AXES[axis][0]
        elif b[lo + 2] + 2 <= a[lo]:
            relation = AXES[axis][1]
        else:
            continue
        if relation == answer:
            break
    base = rng.randint(225, 250)
    image = Image.new("RGB", (size, size), (base, base, base))
    ctx = ImageDraw.Draw(image)
    draw(ctx, k1, a, COLORS[c1])
    draw(ctx, k2, b, COLORS[c2])
    words = " or ".join(AXES[axis])
    of = " of" if axis == "horizontal" else ""
    question = f"Is the {c1} {k1} {words}{of} the {c2} {k2}? Answer with one word."
    return image, question, answer, list(AXES[axis])


def write(out: Path, split: str, count: int, size: int, seed: int) -> None:
    rng = random.Random(f"spatial/{seed}/{split}")
    with (out / f"{split}.jsonl").open("w") as handle:
        for index in range(count):
            image, question, answer, choices = sample(rng, size)
            name = f"{split}-{index:05d}.png"
            image.save(out / "images" / name)
            if split == "train":
                record = {
                    "id": f"{split}-{index}",
                    "image": name,
                    "conversations": [
                        {"from": "human", "value": f"<image>\n{question}"},
                        {"from": "gpt", "value": answer},
                    ],
                }
            else:
                record = dict(
                    id=f"{split}-{index}",
                    image=name,
                    question=question,
                    answer=answer,
                    choices=choices,
                )
            handle.write(json.dumps(record) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    write(args.out, "train", args.train, args.size, args.seed)
    write(args.out, "test", args.test, args.size, args.seed)


if __name__ == "__main__":
    main()
