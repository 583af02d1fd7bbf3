"""DocVQA validation: questions on scanned documents, scored by ANLS.

Expected release: ``val_v1.0.json`` (``{"data": [{questionId, question, image, answers}]}``,
``image`` like ``documents/xxx.png`` relative to the JSON's folder). ``path`` is the JSON file.

Prompt: ``<image>\\nquestion`` + short-answer suffix. Score: ANLS (threshold 0.5) as a percent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

from cambrian_train.eval.benchmarks.base import (
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    EvalItem,
    PathLike,
    accuracy_results,
    build_prompt,
    check_predictions,
)
from cambrian_train.eval.benchmarks.readers import read_rows, require, resolve_image
from cambrian_train.eval.benchmarks.vqa_scores import anls


class DocVQA(Benchmark):
    """DocVQA val (module docstring)."""

    name = "docvqa"
    category = "OCR & Chart"
    prompt_suffix = SHORT_ANSWER_SUFFIX

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        items = []
        for position, row in enumerate(read_rows(path)):
            require(row, ("questionId", "question", "image", "answers"), path, position)
            item_id = str(row["questionId"])
            items.append(
                EvalItem(
                    id=item_id,
                    images=[resolve_image(row["image"], [path.parent], path, item_id)],
                    prompt=build_prompt(str(row["question"]).strip(), self.prompt_suffix, 1),
                    answer=[str(a) for a in row["answers"]],
                )
            )
        return items

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        scores = [anls(p, item.answer) for item, p in zip(items, predictions)]
        return accuracy_results(items, predictions, scores)
