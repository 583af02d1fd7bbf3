"""Samples → a static-shape :class:`Batch` (sequence length L and image slots I fixed)."""

from __future__ import annotations

from typing import Dict, List

import torch

from cambrian_train.batch import Batch
from cambrian_train.data.dataset import Sample
from cambrian_train.data.tokenize import IGNORE_INDEX
from cambrian_train.models.vision.base import ImageSpec


def collate(
    samples: List[Sample],
    seq_len: int,
    max_images: int,
    slot_len: int,
    pad_id: int,
    image_specs: Dict[str, ImageSpec],
    left_pad: bool = False,
) -> Batch:
    """Pad every sample to ``seq_len`` (right, or left for generation) and ``max_images`` slots."""
    b = len(samples)
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((b, seq_len), dtype=torch.long)
    positions = torch.zeros((b, max_images, slot_len), dtype=torch.long)
    image_mask = torch.zeros((b, max_images), dtype=torch.bool)
    boxes = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(b, max_images, 1)
    pixels = {
        name: torch.zeros(b, max_images, 3, spec.image_size, spec.image_size)
        for name, spec in image_specs.items()
    }
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        assert n <= seq_len, f"sample {s.id} has {n} tokens > {seq_len}"
        start = seq_len - n if left_pad else 0
        input_ids[row, start : start + n] = torch.tensor(s.input_ids)
        labels[row, start : start + n] = torch.tensor(s.labels)
        attention_mask[row, start : start + n] = 1
        for slot, first in enumerate(s.image_starts):
            positions[row, slot] = torch.arange(start + first, start + first + slot_len)
            image_mask[row, slot] = True
        for name, values in s.pixel_values.items():
            pixels[name][row, : values.shape[0]] = values
        boxes[row, : s.image_boxes.shape[0]] = s.image_boxes
    return Batch(input_ids, labels, attention_mask, positions, image_mask, pixels, boxes)
