"""The demo's held-out synthetic set (``cambrian_train.data.synthetic``), as a benchmark.

Expected file: ``test.jsonl`` (or a JSON list) of ``{id, image, question, answer, choices?,
question_type?}``; ``image`` is relative to ``images/`` beside the file (the synthetic layout) or
to the file's folder. ``path`` is the file.

Prompt: ``<image>\\nquestion`` with no suffix -- the questions carry their own instruction
("Answer with a single word."), exactly the prompt of ``cambrian_train.eval.vqa``. Score: exact
match of answers normalised by ``cambrian_train.eval.text.normalize_answer``, percent, and per
question type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

from cambrian_train.eval.benchmarks.base import (
    Benchmark,
    EvalItem,
    PathLike,
    accuracy_results,
    build_prompt,
    check_predictions,
)
from cambrian_train.eval.benchmarks.readers import read_rows, require, resolve_image
from cambrian_train.eval.text import normalize_answer


def _normalize(text: str) -> str:
    return normalize_answer(text)


class Synthetic(Benchmark):
    """The synthetic shapes test set (module docstring)."""

    name = "synthetic"
    category = "Other"
    prompt_suffix = ""

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        folders = [path.parent / "images", path.parent]
        items = []
        for position, row in enumerate(read_rows(path)):
            require(row, ("image", "question", "answer"), path, position)
            item_id = str(row.get("id", position))
            items.append(
                EvalItem(
                    id=item_id,
                    images=[resolve_image(row["image"], folders, path, item_id)],
                    prompt=build_prompt(str(row["question"]).strip(), self.prompt_suffix, 1),
                    answer=str(row["answer"]),
                    choices=[str(c) for c in row.get("choices") or []],
                    meta={"question_type": str(row.get("question_type", ""))},
                )
            )
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        return _normalize(prediction)

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        correct = [
            bool(p) and p == _normalize(str(item.answer)) for item, p in zip(items, predictions)
        ]
        return accuracy_results(items, predictions, correct, "question_type")
