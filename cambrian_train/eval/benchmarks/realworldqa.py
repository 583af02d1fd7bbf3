"""RealWorldQA (xAI): real-world spatial questions; the question text carries its own instruction.

Expected release: lmms-lab/RealWorldQA (parquet; ``path`` is a shard or their directory) with
columns ``question, answer, image (struct)``, or a JSON / JSONL file with the same fields and
``image`` a path relative to the file.

Prompt: ``<image>\\nquestion`` -- no suffix (the question already ends with e.g. "Please answer
directly with only the letter of the correct option and nothing else."), as Cambrian's eval.
Options are the question's own ``A. ...`` lines. Extraction: when the question lists options and
the gold answer is one of their letters, the MCQ rule (:func:`~.mcq.extract_choice`); otherwise
the answer text, compared lower-cased with spaces collapsed and a final period dropped.
Score: accuracy (percent).
"""

from __future__ import annotations

import re
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
from cambrian_train.eval.benchmarks.mcq import LETTERS, extract_choice
from cambrian_train.eval.benchmarks.readers import read_rows, require, resolve_image

_OPTION_LINE = re.compile(r"^\s*([A-Z])\.\s+(.+?)\s*$", re.MULTILINE)


def question_options(question: str) -> List[str]:
    """The texts of the ``A. ...``, ``B. ...`` lines of a question (in letter order from A)."""
    options = []
    for letter, text in _OPTION_LINE.findall(question):
        if letter != LETTERS[len(options)]:
            break
        options.append(text)
    return options


def normalize_short(text: str) -> str:
    """Lower-case, collapse spaces, drop one final period."""
    text = " ".join(text.strip().lower().split())
    return text[:-1].rstrip() if text.endswith(".") else text


class RealWorldQA(Benchmark):
    """RealWorldQA (module docstring)."""

    name = "realworldqa"
    category = "Vision-Centric"
    prompt_suffix = ""

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        base = path if path.is_dir() else path.parent
        items = []
        for position, row in enumerate(read_rows(path)):
            require(row, ("question", "answer", "image"), path, position)
            item_id = str(row.get("id", position))
            question = str(row["question"]).strip()
            answer = str(row["answer"]).strip()
            choices = question_options(question)
            is_mcq = answer in LETTERS[: len(choices)]
            items.append(
                EvalItem(
                    id=item_id,
                    images=[resolve_image(row["image"], [base], path, item_id)],
                    prompt=build_prompt(question, self.prompt_suffix, 1),
                    answer=answer,
                    choices=choices if is_mcq else [],
                    meta={"question_type": "multiple_choice" if is_mcq else "open"},
                )
            )
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        if item.choices:
            return extract_choice(prediction, item.choices)
        return normalize_short(prediction)

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        correct = [
            p == (item.answer if item.choices else normalize_short(str(item.answer)))
            for item, p in zip(items, predictions)
        ]
        return accuracy_results(items, predictions, correct, "question_type")
