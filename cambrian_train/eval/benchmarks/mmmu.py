"""MMMU validation: college-level multi-discipline questions, multiple-choice and open.

Expected release: lmms-lab/MMMU (or MMMU/MMMU) validation parquet (``path`` a shard or their
directory), or JSON / JSONL with the same fields: ``id`` (``validation_<Subject>_<n>``),
``question``, ``options`` (a Python-list string, ``"['a', 'b']"``, or a list), ``answer`` (a
letter for multiple-choice; text, or a Python-list string of accepted answers, for open),
``question_type`` (``multiple-choice`` / ``open``), ``image_1`` .. ``image_7`` (struct, or a path
relative to the file).

Images: each ``<image k>`` placeholder in the question and options becomes an ``<image>`` tag,
and ``images`` lists image_k in the order the placeholders occur (a repeated placeholder repeats
its image). Images present but never referenced are put first, with leading ``<image>`` lines.

Prompt: multiple-choice: ``question\\nA. ...`` + MCQ suffix; open: ``question`` + short-answer
suffix (Cambrian's MMMU eval). Extraction and matching -- the official MMMU rules, simplified and
deterministic (no random guess for an unparsed answer): multiple-choice -> the MCQ rule (a
letter, or an option's text); open -> the answer lower-cased, spaces collapsed, final period
dropped; it is right when, for some accepted answer, both parse as numbers equal to 2 decimals
(the last number in the prediction), or the accepted answer's normalised text occurs in it.
Score: accuracy (percent), per subject and per question type.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from cambrian_train.eval.benchmarks.base import (
    IMAGE_TAG,
    MCQ_SUFFIX,
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    EvalItem,
    ImageRef,
    PathLike,
    accuracy_results,
    build_prompt,
    check_predictions,
)
from cambrian_train.eval.benchmarks.mcq import LETTERS, extract_choice, mcq_body
from cambrian_train.eval.benchmarks.readers import (
    Row,
    is_missing,
    read_rows,
    require,
    resolve_image,
)
from cambrian_train.eval.benchmarks.realworldqa import normalize_short

NUM_IMAGE_FIELDS = 7
_PLACEHOLDER = re.compile(r"<image (\d+)>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _literal_list(value: Any, path: Path, where: Any, name: str) -> List[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        raise ValueError(f"{path}: item {where} field {name!r} is not a list: {value!r}") from None
    if not isinstance(parsed, (list, tuple)):
        raise ValueError(f"{path}: item {where} field {name!r} is not a list: {value!r}")
    return [str(v) for v in parsed]


def _accepted_answers(answer: str) -> List[str]:
    if answer.startswith("["):
        try:
            parsed = ast.literal_eval(answer)
        except (ValueError, SyntaxError):
            return [answer]
        if isinstance(parsed, (list, tuple)):
            return [str(a) for a in parsed]
    return [answer]


def _last_number(text: str) -> float | None:
    numbers = _NUMBER.findall(text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def open_answer_correct(prediction: str, answers: Sequence[str]) -> bool:
    """The open-question match rule (module docstring) on an extracted prediction."""
    if not prediction:
        return False
    value = _last_number(prediction)
    for answer in answers:
        gold = normalize_short(answer)
        gold_value = _last_number(gold) if _NUMBER.fullmatch(gold.replace(",", "")) else None
        if gold_value is not None:
            if value is not None and round(value, 2) == round(gold_value, 2):
                return True
        elif gold and gold in prediction:
            return True
    return False


def place_images(
    text: str, row: Row, folders: List[Path], path: Path, item_id: str
) -> Tuple[str, List[ImageRef]]:
    """Replace ``<image k>`` by ``<image>`` and list the images in placeholder order."""
    present = {
        k: row[f"image_{k}"]
        for k in range(1, NUM_IMAGE_FIELDS + 1)
        if not is_missing(row.get(f"image_{k}"))
    }
    order = [int(k) for k in _PLACEHOLDER.findall(text)]
    for k in order:
        if k not in present:
            raise ValueError(f"{path}: item {item_id} refers to <image {k}> but has no image_{k}")
    unreferenced = [k for k in sorted(present) if k not in order]
    text = f"{IMAGE_TAG}\n" * len(unreferenced) + _PLACEHOLDER.sub(IMAGE_TAG, text)
    images = [
        resolve_image(present[k], folders, path, item_id, f"image_{k}")
        for k in unreferenced + order
    ]
    return text, images


class MMMU(Benchmark):
    """MMMU validation (module docstring)."""

    name = "mmmu"
    category = "Knowledge"
    prompt_suffix = MCQ_SUFFIX
    other_suffixes = (SHORT_ANSWER_SUFFIX,)

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        folders = [path if path.is_dir() else path.parent]
        items = []
        for position, row in enumerate(read_rows(path)):
            require(row, ("id", "question", "answer", "question_type"), path, position)
            item_id = str(row["id"])
            kind = row["question_type"]
            answer = str(row["answer"]).strip()
            if kind == "multiple-choice":
                require(row, ("options",), path, item_id)
                choices = _literal_list(row["options"], path, item_id, "options")
                if answer not in LETTERS[: len(choices)]:
                    raise ValueError(f"{path}: item {item_id} answer {answer!r} is not an option")
                body, suffix, gold = mcq_body(str(row["question"]), choices), MCQ_SUFFIX, answer
            elif kind == "open":
                choices, suffix = [], SHORT_ANSWER_SUFFIX
                body, gold = str(row["question"]), _accepted_answers(answer)
            else:
                raise ValueError(f"{path}: item {item_id} question_type {kind!r} unknown")
            text, images = place_images(body, row, folders, path, item_id)
            parts = item_id.split("_")
            items.append(
                EvalItem(
                    id=item_id,
                    images=images,
                    prompt=build_prompt(text, suffix, 0),
                    answer=gold,
                    choices=choices,
                    meta={
                        "question_type": kind,
                        "subject": "_".join(parts[1:-1]) if len(parts) > 2 else "",
                    },
                )
            )
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        if item.meta["question_type"] == "multiple-choice":
            return extract_choice(prediction, item.choices)
        return normalize_short(prediction)

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        correct = [
            p == item.answer
            if item.meta["question_type"] == "multiple-choice"
            else open_answer_correct(p, item.answer)
            for item, p in zip(items, predictions)
        ]
        return accuracy_results(items, predictions, correct, "subject", "question_type")
