"""GQA testdev-balanced: compositional questions on real images, one answer each.

Expected release: ``testdev_balanced_questions.json`` (``{question_id: {imageId, question,
answer, types?}}``) with the images as ``<imageId>.jpg`` in ``images/`` beside it. ``path`` is the
JSON file, or a folder holding it and ``images/``.

Prompt: ``<image>\\nquestion`` + short-answer suffix. Score: exact match after the VQA answer
normalisation (:func:`~.vqa_scores.normalize_vqa_answer`) of both sides, percent; also per
structural type (``types.structural``) when the release gives it.
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
from cambrian_train.eval.benchmarks.readers import read_json, require, resolve_image
from cambrian_train.eval.benchmarks.vqa_scores import normalize_vqa_answer

JSON_NAME = "testdev_balanced_questions.json"


class GQA(Benchmark):
    """GQA testdev-balanced (module docstring)."""

    name = "gqa"
    category = "General"
    prompt_suffix = SHORT_ANSWER_SUFFIX

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        if path.is_dir():
            path = path / JSON_NAME
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object keyed by question id")
        folders = [path.parent / "images", path.parent]
        items = []
        for qid, row in data.items():
            if not isinstance(row, dict):
                raise ValueError(f"{path}: item {qid} is not an object")
            require(row, ("imageId", "question", "answer"), path, qid)
            types = row.get("types") if isinstance(row.get("types"), dict) else {}
            image = resolve_image(f"{row['imageId']}.jpg", folders, path, qid, "imageId")
            items.append(
                EvalItem(
                    id=str(qid),
                    images=[image],
                    prompt=build_prompt(str(row["question"]).strip(), self.prompt_suffix, 1),
                    answer=str(row["answer"]),
                    meta={"structural": str(types.get("structural", ""))},
                )
            )
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        return normalize_vqa_answer(prediction)

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        correct = [
            bool(p) and p == normalize_vqa_answer(str(item.answer))
            for item, p in zip(items, predictions)
        ]
        return accuracy_results(items, predictions, correct, "structural")
