"""MathVista testmini: math reasoning over figures; multiple-choice and free-form questions.

Expected release: the testmini split as JSON (the official ``testmini.json``: an object keyed by
pid, or a list), JSONL, or parquet (AI4Math/MathVista; ``path`` a shard or their directory), with
``pid, question, query, choices (list or null), answer, question_type (multi_choice /
free_form), answer_type (integer / float / text / list), precision`` and the image as
``decoded_image`` (struct) or ``image`` (a path relative to the file); ``metadata.category`` is
kept when present.

Prompt: ``<image>\\nquery`` (the release's query already holds the hint, question and choices)
+ the MCQ suffix for multi_choice, the short-answer suffix for free_form (Cambrian's eval).

Extraction is rule-based (no GPT answer extractor, unlike the official MathVista pipeline):
multi_choice -> the option letter by the MCQ rule (a letter, or an option's text); free_form ->
integer: the last number in the answer, rounded to an integer; float: the last number rounded to
``precision`` decimals (formatted with that many); list: every number, formatted per its type;
text: the answer lower-cased, spaces collapsed, final period dropped. Gold answers go through the
same formatting, and the score is the percent of exact matches, also per question type, answer
type and category.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

from cambrian_train.eval.benchmarks.base import (
    MCQ_SUFFIX,
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    EvalItem,
    PathLike,
    accuracy_results,
    build_prompt,
    check_predictions,
)
from cambrian_train.eval.benchmarks.mcq import LETTERS, extract_choice
from cambrian_train.eval.benchmarks.readers import (
    Row,
    first_field,
    is_missing,
    read_json,
    read_rows,
    require,
    resolve_image,
)

_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?|-?\.\d+")
ANSWER_TYPES = ("integer", "float", "text", "list")


def _numbers(text: str) -> List[float]:
    return [float(n.replace(",", "")) for n in _NUMBER.findall(text)]


def _format_number(value: float, answer_type: str, precision: int) -> str:
    if answer_type == "integer":
        return str(int(round(value)))
    return f"{round(value, precision):.{precision}f}"


def normalize_free_form(text: str, answer_type: str, precision: int) -> str:
    """A free-form answer in canonical form (module docstring); ``""`` if it holds none."""
    if answer_type == "text":
        text = " ".join(text.strip().lower().split())
        return text[:-1].rstrip() if text.endswith(".") else text
    numbers = _numbers(text)
    if not numbers:
        return ""
    if answer_type == "list":
        step = "integer" if all(n == int(n) for n in numbers) else "float"
        return "[" + ", ".join(_format_number(n, step, precision) for n in numbers) + "]"
    return _format_number(numbers[-1], answer_type, precision)


def _rows(path: Path) -> List[Row]:
    if path.suffix.lower() == ".json":
        data = read_json(path)
        if isinstance(data, dict) and "data" not in data:
            return [{"pid": pid, **row} for pid, row in data.items()]
    return read_rows(path)


def _precision(row: Row) -> int:
    value = row.get("precision")
    return 0 if is_missing(value) else int(float(value))


def _category(row: Row) -> str:
    meta = row.get("metadata")
    return str(meta.get("category", "")) if isinstance(meta, dict) else ""


class MathVista(Benchmark):
    """MathVista testmini (module docstring)."""

    name = "mathvista"
    category = "Knowledge"
    prompt_suffix = MCQ_SUFFIX
    other_suffixes = (SHORT_ANSWER_SUFFIX,)

    def _gold(self, row: Row, path: Path, pid: str, choices: List[str]) -> str:
        answer = str(row["answer"]).strip()
        if row["question_type"] == "multi_choice":
            if answer not in choices:
                raise ValueError(f"{path}: item {pid} answer {answer!r} is not among its choices")
            return LETTERS[choices.index(answer)]
        if row["answer_type"] not in ANSWER_TYPES:
            raise ValueError(f"{path}: item {pid} answer_type {row['answer_type']!r} unknown")
        gold = normalize_free_form(answer, row["answer_type"], _precision(row))
        if not gold:
            raise ValueError(f"{path}: item {pid} answer {answer!r} is not a {row['answer_type']}")
        return gold

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        base = path if path.is_dir() else path.parent
        items = []
        for position, row in enumerate(_rows(path)):
            require(row, ("pid", "query", "answer", "question_type", "answer_type"), path, position)
            pid = str(row["pid"])
            kind = row["question_type"]
            if kind not in ("multi_choice", "free_form"):
                raise ValueError(f"{path}: item {pid} question_type {kind!r} unknown")
            choices = [str(c) for c in row.get("choices") or []] if kind == "multi_choice" else []
            image = first_field(row, ("decoded_image", "image"), path, pid)
            suffix = MCQ_SUFFIX if kind == "multi_choice" else SHORT_ANSWER_SUFFIX
            items.append(
                EvalItem(
                    id=pid,
                    images=[resolve_image(image, [base], path, pid)],
                    prompt=build_prompt(str(row["query"]).strip(), suffix, 1),
                    answer=self._gold(row, path, pid, choices),
                    choices=choices,
                    meta={
                        "question_type": kind,
                        "answer_type": row["answer_type"],
                        "precision": _precision(row),
                        "category": _category(row),
                    },
                )
            )
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        if item.meta["question_type"] == "multi_choice":
            return extract_choice(prediction, item.choices)
        return normalize_free_form(prediction, item.meta["answer_type"], item.meta["precision"])

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        correct = [p == item.answer for item, p in zip(items, predictions)]
        keys = ("question_type", "answer_type", "category")
        return accuracy_results(items, predictions, correct, *keys)
