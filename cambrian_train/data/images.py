"""Image loading and per-tower preprocessing (pad-to-square or resize).

Each tower's :class:`ImageSpec` (size, mean, std from its own processor) drives the transform, so
several towers with different resolutions and statistics are fed from one decoded image. The
pipeline hands the model uint8 pixels (a quarter of float32's bytes through loader workers'
shared memory and host→device copies); the model normalises them with each tower's mean and
std on the device (``models/vision/base.py`` ``normalize_pixels``).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps

from cambrian_train.models.vision.base import ImageSpec

EXIF_ORIENTATION = 0x0112


def load_image(path: str) -> Image.Image:
    """Decode an image as RGB, honouring EXIF orientation; PIL errors propagate to the caller."""
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        return img.convert("RGB")


def image_size(source) -> Tuple[int, int]:
    """(width, height) of an image as :func:`load_image` decodes it, from its header only (PIL
    opens lazily): an EXIF orientation that transposes (5-8) swaps the two."""
    with Image.open(source) as img:
        width, height = img.size
        if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            return height, width
        return width, height


def pad_to_square(img: Image.Image, fill: tuple) -> Image.Image:
    """Centre ``img`` on a square canvas of its longer side filled with ``fill``."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def content_box(width: int, height: int, aspect_ratio: str) -> Tuple[float, float, float, float]:
    """Where the image's own pixels lie in the square model input, as fractions (x0, y0, x1, y1).

    ``pad`` centres the image on a square canvas; ``resize`` stretches it over the whole square.
    """
    if aspect_ratio != "pad" or width == height:
        return (0.0, 0.0, 1.0, 1.0)
    side = max(width, height)
    x0, y0 = (side - width) // 2, (side - height) // 2
    return (x0 / side, y0 / side, (x0 + width) / side, (y0 + height) / side)


def to_tensor(img: Image.Image, spec: ImageSpec, aspect_ratio: str) -> torch.Tensor:
    """RGB image → [3, S, S] uint8 pixels for one tower (padded with its mean colour, or
    stretched), not yet normalised."""
    if aspect_ratio == "pad":  # the mean colour truncated to 0..255, as the original pads
        img = pad_to_square(img, tuple(int(m * 255) for m in spec.mean))
    elif aspect_ratio != "resize":
        raise ValueError(f"image_aspect_ratio={aspect_ratio!r} is not one of ['pad', 'resize']")
    img = img.resize((spec.image_size, spec.image_size), Image.Resampling.BICUBIC)
    array = np.asarray(img, dtype=np.uint8)  # [S, S, 3]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def tower_tensors(
    img: Image.Image, specs: Dict[str, ImageSpec], aspect_ratio: str
) -> Dict[str, torch.Tensor]:
    return {name: to_tensor(img, spec, aspect_ratio) for name, spec in specs.items()}
