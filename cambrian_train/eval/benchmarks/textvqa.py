"""TextVQA validation: questions about text in natural images, ten annotator answers each.

Expected release: ``TextVQA_0.5.1_val.json`` (``{"data": [{question_id, question, image_id,
answers (10)}]}``) with the images as ``<image_id>.jpg`` in ``train_images/`` beside it (the
validation images ship in the train image archive) or ``images/``. ``path`` is the JSON file.

Prompt: ``<image>\\nquestion`` + short-answer suffix (no OCR tokens in the prompt, as Cambrian).
Score: VQA accuracy with the official answer normalisation (:mod:`.vqa_scores`), percent.
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
from cambrian_train.eval.benchmarks.vqa_scores import vqa_accuracy

IMAGE_DIRS = ("train_images", "images")


class TextVQA(Benchmark):
    """TextVQA val (module docstring)."""

    name = "textvqa"
    category = "OCR & Chart"
    prompt_suffix = SHORT_ANSWER_SUFFIX

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        folders = [path.parent / d for d in IMAGE_DIRS] + [path.parent]
        items = []
        for position, row in enumerate(read_rows(path)):
            require(row, ("question_id", "question", "image_id", "answers"), path, position)
            item_id = str(row["question_id"])
            image = resolve_image(f"{row['image_id']}.jpg", folders, path, item_id, "image_id")
            items.append(
                EvalItem(
                    id=item_id,
                    images=[image],
                    prompt=build_prompt(str(row["question"]).strip(), self.prompt_suffix, 1),
                    answer=[str(a) for a in row["answers"]],
                )
            )
        return items

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        accuracy = [vqa_accuracy(p, item.answer) for item, p in zip(items, predictions)]
        return accuracy_results(items, predictions, accuracy)
