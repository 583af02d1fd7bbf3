"""The data/model contract: one static-shape training or evaluation batch.

Produced by ``data/collate.py``, consumed by ``models/vlm.py``. Every image slot's Q positions
(visual tokens plus row-newline slots) are recorded in ``vision_positions``; the model only
gathers/scatters there, so no prompt offsets are ever assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] int64; placeholder ids at vision positions
    labels: torch.Tensor  # [B, L] int64; -100 where not supervised
    attention_mask: torch.Tensor  # [B, L] int64; 1 = real token, 0 = padding
    vision_positions: torch.Tensor  # [B, I, Q] int64; sequence index of each vision slot token
    image_mask: torch.Tensor  # [B, I] bool; False = empty image slot (positions unused)
    pixel_values: Dict[str, torch.Tensor]  # tower name -> [B, I, 3, H, W] float
    image_boxes: torch.Tensor  # [B, I, 4] float: x0, y0, x1, y1 of real content in [0, 1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                moved[f.name] = {
                    k: v.to(device, non_blocking=non_blocking) for k, v in value.items()
                }
            else:
                moved[f.name] = value.to(device, non_blocking=non_blocking)
        return Batch(**moved)

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]
