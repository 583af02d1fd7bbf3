"""Drawing primitives of the four-category synthetic suite (data/suite.py).

Shapes (circle and regular polygons), bitmap-font text, bar and line charts on a light
background. Nothing is anti-aliased, so every pixel is exactly reproducible and the tests read the
answers back from pixel colours (tests/unit/test_suite.py).

Chart geometry (:class:`ChartLayout`) is a fixed function of the image size: the value axis is a
grey line at ``x = left - 2`` with a tick per unit at ``y = bottom - v * unit`` (v = 1..max_value),
bars stand on the row ``bottom - 1`` and a bar of value v is ``v * unit`` pixels tall; a line chart
joins points ``(x_i, bottom - v_i * unit)`` with a 1-pixel dark line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from cambrian_train.data.synthetic import PALETTE

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 with x1, y1 exclusive
SIDES = {"circle": 0, "triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}
KINDS = tuple(SIDES)
POLYGONS = ("triangle", "square", "pentagon", "hexagon")
TEXT_COLOR = (20, 20, 20)
AXIS_COLOR = (120, 120, 120)
LINE_COLOR = (20, 20, 20)
GAP = 2  # free pixels kept between placed boxes and between a box and the border


def background(rng: random.Random) -> tuple[int, int, int]:
    """A light grey, slightly tinted background colour (never equal to a drawn colour)."""
    base = rng.randint(230, 250)
    return tuple(min(255, base + rng.randint(-4, 4)) for _ in range(3))


def canvas(rng: random.Random, size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), background(rng))
    return image, ImageDraw.Draw(image)


def draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: Box, color: str) -> None:
    """Fill ``kind`` inside the square ``box`` in palette colour ``color``."""
    x0, y0, x1, y1 = box
    fill = PALETTE[color]
    if kind == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif kind == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif kind == "triangle":
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
    else:
        centre = ((x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2)
        draw.regular_polygon((*centre, (x1 - x0 - 1) / 2), SIDES[kind], fill=fill)


@cache
def _font() -> ImageFont.ImageFont:
    loader = getattr(ImageFont, "load_default_imagefont", None)
    return loader() if loader is not None else ImageFont.load_default()


def text_scale(image_size: int) -> int:
    """Upscaling of the 11-pixel bitmap font: 2 at 64 px, so glyphs stay legible."""
    return max(1, round(image_size / 32))


@cache
def text_mask(text: str, scale: int) -> Image.Image:
    """``text`` in the bitmap font as an "L" mask, upscaled ``scale`` times (nearest)."""
    left, top, right, bottom = _font().getbbox(text)
    mask = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, fill=255, font=_font())
    return mask.resize((mask.width * scale, mask.height * scale), Image.Resampling.NEAREST)


def paste_text(image: Image.Image, text: str, corner: tuple[int, int], scale: int) -> None:
    image.paste(TEXT_COLOR, corner, text_mask(text, scale))


def overlaps(a: Box, b: Box, gap: int = GAP) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def place(rng: random.Random, width: int, height: int, size: int, taken: list) -> Box | None:
    """A random box of ``width`` x ``height`` clear of ``taken`` (rejection sampling), or None."""
    if width > size - 2 * GAP or height > size - 2 * GAP:
        return None
    for _ in range(200):
        x = rng.randint(GAP, size - GAP - width)
        y = rng.randint(GAP, size - GAP - height)
        box = (x, y, x + width, y + height)
        if not any(overlaps(box, other) for other in taken):
            return box
    return None


@dataclass(frozen=True)
class ChartLayout:
    """Pixel geometry of a chart in an image of ``size`` (module docstring)."""

    size: int
    left: int
    bottom: int
    unit: int
    max_value: int = 5

    def top_of(self, value: int) -> int:
        return self.bottom - value * self.unit


def chart_layout(size: int) -> ChartLayout:
    bottom = size - 4
    return ChartLayout(size=size, left=8, bottom=bottom, unit=(bottom - 6) // 5)


def draw_axes(draw: ImageDraw.ImageDraw, layout: ChartLayout) -> None:
    x = layout.left - 2
    draw.line([(x, layout.top_of(layout.max_value)), (x, layout.bottom - 1)], fill=AXIS_COLOR)
    for value in range(1, layout.max_value + 1):
        y = layout.top_of(value)
        draw.line([(x - 3, y), (x - 1, y)], fill=AXIS_COLOR)


def bar_boxes(layout: ChartLayout, count: int) -> list[Box]:
    """The column of each of ``count`` bars (full chart height; the value sets the top)."""
    width = (layout.size - layout.left - 3) // count - 2
    firsts = [layout.left + 1 + i * (width + 2) for i in range(count)]
    return [(x, layout.top_of(layout.max_value), x + width, layout.bottom) for x in firsts]


def draw_bars(
    draw: ImageDraw.ImageDraw, layout: ChartLayout, values: list[int], colors: list[str]
) -> None:
    draw_axes(draw, layout)
    for (x0, _, x1, y1), value, color in zip(bar_boxes(layout, len(values)), values, colors):
        draw.rectangle((x0, layout.top_of(value), x1 - 1, y1 - 1), fill=PALETTE[color])


def line_points(layout: ChartLayout, values: list[int]) -> list[tuple[int, int]]:
    span = layout.size - layout.left - 4
    step = span // (len(values) - 1)
    return [(layout.left + 1 + i * step, layout.top_of(v)) for i, v in enumerate(values)]


def draw_line_chart(draw: ImageDraw.ImageDraw, layout: ChartLayout, values: list[int]) -> None:
    draw_axes(draw, layout)
    draw.line(line_points(layout, values), fill=LINE_COLOR, width=1)
