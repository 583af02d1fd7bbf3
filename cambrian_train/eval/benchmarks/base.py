"""Shared types of the benchmark layer: :class:`EvalItem`, :class:`Benchmark`, scoring helpers.

The eval runner (``cambrian-eval``) drives one benchmark as: ``items = bench.load(path)``; for each
item it generates from ``item.prompt`` (the exact user text, ``<image>`` tags included) and
``item.images``; ``bench.extract(text, item)`` turns each generation into the answer compared
with ``item.answer`` (``""`` means nothing could be extracted: scored wrong, counted in
``unparsed``); ``bench.score(items, extracted)`` returns the results dict. Every benchmark's
results hold ``score`` (the headline, on the paper's scale: percent for accuracies, MME-P as its
summed score, OCRBench as a count out of 1000), ``count`` (items scored), ``unparsed`` and its
sub-metrics. ``bench.suffix_sha256`` fingerprints the fixed prompt suffix(es) for the records.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Union

IMAGE_TAG = "<image>"
PAPER_CATEGORIES = ("General", "Knowledge", "OCR & Chart", "Vision-Centric")  # averaged
OTHER = "Other"  # extras (POPE, the synthetic set): never averaged
CATEGORIES = (*PAPER_CATEGORIES, OTHER)
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."

ImageRef = Union[str, bytes]  # a local file path, or the encoded image file's bytes
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class EvalItem:
    """One question as the model sees it, with its gold answer.

    ``images``: local file paths or encoded image bytes (PNG/JPEG; the runner decodes), in the
    order of the ``<image>`` tags in ``prompt``; empty for a text-only question. ``answer``: the
    gold answer (an option letter for multiple choice; a list for multi-annotator VQA answers).
    ``choices``: the option texts, in prompt order (empty when not multiple choice). ``meta``:
    what scoring needs beyond the answer (category, split, group / pair ids, ...).
    """

    id: str
    images: List[ImageRef]
    prompt: str
    answer: Union[str, List[str]]
    choices: List[str] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)


class Benchmark(ABC):
    """A benchmark: its public data format, its fixed prompt suffix, answer extraction, scoring.

    Subclasses set ``name`` (the registry key), ``category`` (one of :data:`CATEGORIES`: the
    paper's grouping) and ``prompt_suffix``; ``other_suffixes`` lists further fixed suffixes used
    for some items (e.g. MMMU's open questions).
    """

    name: ClassVar[str]
    category: ClassVar[str]
    prompt_suffix: ClassVar[str]
    other_suffixes: ClassVar[tuple] = ()

    @abstractmethod
    def load(self, path: PathLike) -> List[EvalItem]:
        """Read the benchmark's public local release at ``path`` into items."""

    def extract(self, prediction: str, item: EvalItem) -> str:
        """The answer in a generated text (default: the text, stripped)."""
        return prediction.strip()

    @abstractmethod
    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        """Results for extracted predictions aligned with ``items``."""

    @property
    def suffix_sha256(self) -> str:
        """sha256 of the fixed suffix(es), newline-joined (equals sha256(prompt_suffix) alone)."""
        text = "\n".join((self.prompt_suffix, *self.other_suffixes))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_prompt(body: str, suffix: str, num_images: int) -> str:
    """LLaVA layout: one ``<image>`` line per image, the body, then the suffix on its own line."""
    tags = f"{IMAGE_TAG}\n" * num_images
    return f"{tags}{body}\n{suffix}" if suffix else f"{tags}{body}"


def check_predictions(name: str, items: Sequence[EvalItem], predictions: Sequence[str]) -> None:
    """ValueError unless there is one prediction string per item and at least one item."""
    if len(items) != len(predictions):
        raise ValueError(f"{name}: {len(predictions)} predictions for {len(items)} items")
    if not items:
        raise ValueError(f"{name}: nothing to score (no items)")
    for item, prediction in zip(items, predictions):
        if not isinstance(prediction, str):
            raise ValueError(
                f"{name}: prediction for item {item.id} is {type(prediction).__name__}, not str"
            )


def percent(numerator: float, denominator: float) -> float:
    """100 * numerator / denominator (the denominator is a non-empty count)."""
    return 100.0 * numerator / denominator


def count_unparsed(predictions: Sequence[str]) -> int:
    """Number of predictions from which no answer could be extracted."""
    return sum(1 for p in predictions if p == "")


def mean_by(items: Sequence[EvalItem], values: Sequence[float], key: str) -> Dict[str, float]:
    """Percent mean of ``values`` (each in [0, 1]) per distinct ``item.meta[key]``, sorted."""
    groups: Dict[str, List[float]] = defaultdict(list)
    for item, value in zip(items, values):
        groups[str(item.meta[key])].append(value)
    return {k: percent(sum(v), len(v)) for k, v in sorted(groups.items())}


def accuracy_results(
    items: Sequence[EvalItem], predictions: Sequence[str], correct: Sequence[float], *keys: str
) -> Dict[str, Any]:
    """Headline accuracy (percent), count, unparsed, and accuracy per each ``meta`` key given.

    ``correct`` holds each item's credit in [0, 1]: a bool, or partial credit (VQA accuracy,
    ANLS)."""
    results: Dict[str, Any] = {
        "score": percent(sum(correct), len(correct)),
        "count": len(correct),
        "unparsed": count_unparsed(predictions),
    }
    for key in keys:
        results[f"by_{key}"] = mean_by(items, [float(c) for c in correct], key)
    return results
