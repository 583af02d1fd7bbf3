"""The data/model contract: one static-shape training or evaluation batch.

Produced by ``data/collate.py``, consumed by ``models/vlm.py``. Every image slot's Q positions
(visual tokens plus row-newline slots) are recorded in ``vision_positions``; the model only
gathers/scatters there, so no prompt offsets are ever assumed.

Image slots come in G groups of I slots: group g serves rows g·R … g·R+R-1 (R = B / G), and a
slot's positions index those R rows laid end to end (row-in-group × L + position). With G = B
(the default) every row has its own I slots; with G < B (``data.image_budget``) the rows of a
device's micro-batch share one budget, so text-only rows cost no tower work (models/multimodal.py).

A *packed* batch (data/packing.py) holds several samples per row: ``segment_ids`` numbers them
1, 2, … within the row (0 = padding) and ``position_ids`` restart at 0 for each; attention never
crosses a segment boundary and no label is predicted across one. Unpacked batches leave both
None (one sample per row, right-padded, positions 0..L-1).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Dict, Optional

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L] int64; placeholder ids at vision positions
    labels: torch.Tensor  # [B, L] int64; -100 where not supervised
    attention_mask: torch.Tensor  # [B, L] int64; 1 = real token, 0 = padding
    vision_positions: torch.Tensor  # [G, I, Q] int64; group position of each vision slot token
    image_mask: torch.Tensor  # [G, I] bool; False = empty image slot (positions unused)
    pixel_values: Dict[str, torch.Tensor]  # tower name -> [G, I, 3, H, W] float
    image_boxes: torch.Tensor  # [G, I, 4] float: x0, y0, x1, y1 of real content in [0, 1]
    position_ids: Optional[torch.Tensor] = None  # [B, L] int64, packed only: per-sample positions
    segment_ids: Optional[torch.Tensor] = None  # [B, L] int64, packed only: 1.. per sample, 0 pad

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        """A batch of ``fn(tensor)`` for every tensor (absent fields stay None)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
            elif isinstance(value, dict):
                out[f.name] = {k: fn(v) for k, v in value.items()}
            else:
                out[f.name] = fn(value)
        return Batch(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def packed(self) -> bool:
        return self.segment_ids is not None
