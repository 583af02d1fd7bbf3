"""Parameter counts of a built VLM, per part: each tower, the tower projectors, the SVA, the SVA
layers inside the LLM, the final projector, the row newline and the LLM."""

from __future__ import annotations

from collections import Counter
from typing import List, Tuple

# connector parameter-name prefixes → part (first match wins)
CONNECTOR_PARTS = (
    ("mm_projector_aux_", "connector: tower projectors"),
    ("vision_sampler_layers.", "connector: SVA layers inside the LLM"),
    ("vision_sampler_", "connector: SVA"),
    ("vision_query", "connector: SVA"),
    ("mm_projector.", "connector: projector"),
    ("net.", "connector: projector"),
    ("media_proj.", "connector: tower projectors"),
    ("media_", "connector: perceiver"),
    ("resampler.", "connector: perceiver"),
    ("proj.", "connector: projector"),
)


def parameter_table(model) -> List[Tuple[str, int]]:
    """Rows (part, parameters); the parts partition the model and the last row is the total."""
    rows = [
        (f"tower {name} ({tower.cfg.source})", sum(p.numel() for p in tower.parameters()))
        for name, tower in model.towers.items()
    ]
    parts: Counter = Counter()
    for name, param in model.connector.named_parameters():
        part = next((label for prefix, label in CONNECTOR_PARTS if name.startswith(prefix)), None)
        if part is None:
            raise ValueError(f"connector parameter {name!r} belongs to no summary part")
        parts[part] += param.numel()
    rows += list(parts.items())
    if model.image_newline is not None:
        rows.append(("image newline", model.image_newline.numel()))
    rows.append(("llm", sum(p.numel() for p in model.llm.parameters())))
    rows.append(("total", sum(p.numel() for p in model.parameters())))
    return rows


def format_table(rows: List[Tuple[str, int]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {count:>15,}" for name, count in rows)
