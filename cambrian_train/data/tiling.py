"""Dynamic tiling of one image into a grid of square tiles (``data.tiling``), InternVL2's rule.

The grid is InternVL2's ``dynamic_preprocess`` / ``find_closest_aspect_ratio``
(OpenGVLab/InternVL, ``internvl_chat/internvl/train/dataset.py``), kept exactly: the candidate
grids are the (columns, rows) pairs with ``min_num <= columns·rows <= max_num``, taken from a set
and sorted by their tile count (so grids of equal count keep CPython's set order, as there);
the first grid whose columns/rows is closest to the image's width/height wins, and a later grid
with the same distance replaces it when the image's area exceeds half the grid's pixel area
(``0.5·tile²·columns·rows``) — a large image prefers more tiles of the same shape. The image is
resized (bicubic) to ``tile·columns × tile·rows`` and cut row-major; when there is more than one
tile, a thumbnail (the whole image resized to ``tile × tile``) is appended when
``tiling.thumbnail`` is set.

Each tile then travels as an image of its own (``ImageTextEncoder.image_tensors``): every tower
resizes it to its own resolution, and its content box is the whole square. One ``<image>`` tag
of a record becomes as many consecutive image slots as the image has tiles
(:func:`expand_image_tags`), with nothing between them in the text: we have no ``<img>`` /
``</img>`` tokens, and each slot's vision tokens already end their rows with the image newline.

Used by data/dataset.py (encoder), data/lengths.py (tile counts from image headers) and
config/validate.py (:func:`max_tiles`).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from PIL import Image

from cambrian_train.data.templates import IMAGE_TAG

Grid = Tuple[int, int]  # (columns, rows)


def enabled(tiling) -> bool:
    """Whether ``tiling`` (a TilingConfig, or None) tiles images: ``max_num`` set and > 0."""
    return tiling is not None and bool(tiling.max_num)


def candidate_grids(min_num: int, max_num: int) -> List[Grid]:
    """(columns, rows) with ``min_num <= columns·rows <= max_num``, in InternVL2's order."""
    grids = set(
        (i, j)
        for n in range(min_num, max_num + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_num <= i * j <= max_num
    )
    return sorted(grids, key=lambda g: g[0] * g[1])


def closest_grid(width: int, height: int, grids: Sequence[Grid], tile_size: int) -> Grid:
    """The grid of ``grids`` (in order) for an image of ``width × height`` (module docstring)."""
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for grid in grids:
        diff = abs(aspect - grid[0] / grid[1])
        if diff < best_diff:
            best, best_diff = grid, diff
        elif diff == best_diff and area > 0.5 * tile_size * tile_size * grid[0] * grid[1]:
            best = grid
    return best


def image_grid(width: int, height: int, tiling) -> Grid:
    """The (columns, rows) grid ``tiling`` (a TilingConfig) cuts a ``width × height`` image into."""
    if width < 1 or height < 1:
        raise ValueError(f"an image of {width}x{height} pixels cannot be tiled")
    grids = candidate_grids(tiling.min_num, tiling.max_num)
    return closest_grid(width, height, grids, tiling.tile_size)


def num_tiles(width: int, height: int, tiling) -> int:
    """Image slots a ``width × height`` image takes: 1 without tiling, else the grid's tiles
    plus the thumbnail (when set and the grid has more than one tile)."""
    if not enabled(tiling):
        return 1
    cols, rows = image_grid(width, height, tiling)
    return cols * rows + (1 if tiling.thumbnail and cols * rows > 1 else 0)


def max_tiles(tiling) -> int:
    """The most slots one image can take under ``tiling`` (``max_num`` plus the thumbnail)."""
    if not enabled(tiling):
        return 1
    return tiling.max_num + (1 if tiling.thumbnail and tiling.max_num > 1 else 0)


def tile_image(img: Image.Image, tiling) -> List[Image.Image]:
    """``img`` → its tiles, row-major, then the thumbnail (module docstring); ``[img]`` when
    tiling is off. Every tile is ``tile_size × tile_size``."""
    if not enabled(tiling):
        return [img]
    size = tiling.tile_size
    cols, rows = image_grid(img.width, img.height, tiling)
    resized = img.resize((size * cols, size * rows), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * size, r * size, (c + 1) * size, (r + 1) * size))
        for r in range(rows)
        for c in range(cols)
    ]
    if tiling.thumbnail and len(tiles) > 1:
        tiles.append(img.resize((size, size), Image.Resampling.BICUBIC))
    return tiles


def expand_image_tags(text: str, counts: Sequence[int], first: int = 0) -> Tuple[str, int]:
    """Replace the ``<image>`` tags of ``text`` by ``counts[first]``, ``counts[first + 1]``, …
    consecutive tags → (new text, index of the next count). A tag past the counts is kept as
    one tag (the caller checks tag and image counts)."""
    parts = text.split(IMAGE_TAG)
    out: List[str] = [parts[0]]
    k = first
    for part in parts[1:]:
        out.append(IMAGE_TAG * (counts[k] if k < len(counts) else 1))
        out.append(part)
        k += 1
    return "".join(out), k


def check_counts(counts: Optional[Sequence[int]], num_tags: int, where: str) -> None:
    """ValueError unless ``counts`` gives one slot count (>= 1) per image tag."""
    if counts is not None and (len(counts) != num_tags or any(c < 1 for c in counts)):
        raise ValueError(f"{where}: {num_tags} {IMAGE_TAG} tags but slot counts {list(counts)}")
