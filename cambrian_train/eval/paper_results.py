"""Published Cambrian-1 results, as data, for ``--paper`` rows and ``--compare`` deltas.

Source: Cambrian-1 (Tong et al., 2024, arXiv 2406.16860), main results table, as transcribed in
``REFERENCE.md`` section 4 of this project: the columns #vis tok, MMB, SQA-I, MathVista-M, ChartQA
and MMVP for GPT-4V, Mini-Gemini-HD-8B, LLaVA-NeXT-8B and Cambrian-1-8B/13B/34B. A "–" in that
table (GPT-4V's token count and SQA-I) is an absent key here, never a number. Scores are percent;
keys are the eval registry's benchmark names (``cambrian_train.eval.tables.BENCHMARKS``). Used by
``cambrian_train.eval.tables``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple


@dataclass(frozen=True)
class PaperRow:
    """One published model row: name, visual token count (None if unpublished) and scores."""

    model: str
    num_vision_tokens: Optional[int]
    scores: Dict[str, float] = field(default_factory=dict)


PAPER_SOURCE = "Cambrian-1 (arXiv 2406.16860), main results table"

PAPER_ROWS: Tuple[PaperRow, ...] = (
    PaperRow("GPT-4V", None, {"mmbench": 75.8, "mathvista": 49.9, "chartqa": 78.5, "mmvp": 50.0}),
    PaperRow(
        "Mini-Gemini-HD-8B",
        2880,
        {"mmbench": 72.7, "sqa_img": 75.1, "mathvista": 37.0, "chartqa": 59.1, "mmvp": 18.7},
    ),
    PaperRow(
        "LLaVA-NeXT-8B",
        2880,
        {"mmbench": 72.1, "sqa_img": 72.8, "mathvista": 36.3, "chartqa": 69.5, "mmvp": 38.7},
    ),
    PaperRow(
        "Cambrian-1-8B",
        576,
        {"mmbench": 75.9, "sqa_img": 80.4, "mathvista": 49.0, "chartqa": 73.3, "mmvp": 51.3},
    ),
    PaperRow(
        "Cambrian-1-13B",
        576,
        {"mmbench": 75.7, "sqa_img": 79.3, "mathvista": 48.0, "chartqa": 73.8, "mmvp": 41.3},
    ),
    PaperRow(
        "Cambrian-1-34B",
        576,
        {"mmbench": 81.4, "sqa_img": 85.6, "mathvista": 53.2, "chartqa": 75.6, "mmvp": 52.7},
    ),
)


def paper_row(name: str) -> PaperRow:
    """The published row called ``name``; ValueError listing the known names otherwise."""
    for row in PAPER_ROWS:
        if row.model == name:
            return row
    known = ", ".join(row.model for row in PAPER_ROWS)
    raise ValueError(f"unknown published row {name!r}; known: {known}")
