"""The four-category synthetic suite (``cambrian_train.data.suite``) as twelve benchmarks.

One benchmark per task, ``syn_<task>`` (``syn_objects``, ..., ``syn_depth``), in the task's
Cambrian-1 category. Expected file: the suite's ``test.jsonl`` (``path``); each benchmark reads
the rows of its own task (``task`` field). Images are relative to ``images/`` beside the file.

Prompt: ``<image>\\nquestion`` -- the question carries its options and its fixed instruction
(``data.suite.SHORT_INSTRUCTION`` / ``MCQ_INSTRUCTION``), so the benchmark adds no suffix;
``suffix_sha256`` fingerprints the two instructions. Score: multiple-choice items (non-empty
``choices``, gold answer a letter) by the option letter :func:`~.mcq.extract_choice` reads
from the answer (a bare letter, the option's text, "answer is B", "B. text"); short-answer items
by exact match of answers normalised with ``cambrian_train.eval.text.normalize_answer``. Results:
accuracy (percent), ``by_format`` (mcq / short) and ``by_template``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Sequence

from cambrian_train.data.suite import BENCHMARK_PREFIX, MCQ_INSTRUCTION, SHORT_INSTRUCTION
from cambrian_train.data.suite_tasks import TASKS
from cambrian_train.eval.benchmarks.base import (
    Benchmark,
    EvalItem,
    PathLike,
    accuracy_results,
    build_prompt,
    check_predictions,
)
from cambrian_train.eval.benchmarks.mcq import extract_choice
from cambrian_train.eval.benchmarks.readers import read_rows, require, resolve_image
from cambrian_train.eval.text import normalize_answer

LABELS = {
    "objects": "Objects",
    "attributes": "Attributes",
    "captions": "Captions",
    "arithmetic": "Arithmetic",
    "shape_facts": "Shape facts",
    "ocr": "Words",
    "chart_max": "Chart max",
    "chart_value": "Chart value",
    "spatial": "Spatial",
    "count": "Count",
    "relative_size": "Rel. size",
    "depth": "Depth order",
}


class SuiteTask(Benchmark):
    """One task of the synthetic suite (module docstring)."""

    prompt_suffix = ""
    other_suffixes = (SHORT_INSTRUCTION, MCQ_INSTRUCTION)

    def __init__(self, task: str):
        if task not in TASKS:
            raise ValueError(f"unknown suite task {task!r}; known: {', '.join(TASKS)}")
        self.task = task
        self.name = BENCHMARK_PREFIX + task
        self.category = TASKS[task][0]
        self.label = LABELS[task]

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        folders = [path.parent / "images", path.parent]
        items = []
        for position, row in enumerate(read_rows(path)):
            require(row, ("image", "question", "answer", "task"), path, position)
            if row["task"] != self.task:
                continue
            item_id = str(row.get("id", position))
            choices = [str(c) for c in row.get("choices") or []]
            answer = str(row["answer"])
            if choices and extract_choice(answer, choices) != answer:
                raise ValueError(
                    f"{path}: item {item_id} answer {answer!r} is not an option letter of its "
                    f"{len(choices)} choices"
                )
            items.append(
                EvalItem(
                    id=item_id,
                    images=[resolve_image(row["image"], folders, path, item_id)],
                    prompt=build_prompt(str(row["question"]).strip(), self.prompt_suffix, 1),
                    answer=answer,
                    choices=choices,
                    meta={
                        "format": "mcq" if choices else "short",
                        "template": str(row.get("template", "")),
                    },
                )
            )
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        if item.choices:
            return extract_choice(prediction, item.choices)
        return normalize_answer(prediction)

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        correct = [
            bool(p) and p == (item.answer if item.choices else normalize_answer(str(item.answer)))
            for item, p in zip(items, predictions)
        ]
        return accuracy_results(items, predictions, correct, "format", "template")


SUITE_BENCHMARKS: Dict[str, SuiteTask] = {
    BENCHMARK_PREFIX + task: SuiteTask(task) for task in TASKS
}
