"""MMVP (Tong et al.): 150 image pairs, 300 two-option questions, scored by pairs.

Expected release: the MMVP directory (Hugging Face MMVP/MMVP) holding ``Questions.csv`` (header
``Index, Question, Options, Correct Answer``; the public file's first cell may read ``lndex``)
and ``MMVP Images/<Index>.jpg`` (``.png``/``.jpeg`` accepted). ``path`` is that directory (or the
CSV, images beside it). Options read ``"(a) Open (b) Closed"``; the answer ``"(a)"``.

Prompt: ``<image>\\nquestion\\nA. ...\\nB. ...`` + MCQ suffix (Cambrian's MMVP eval rewrites the
options the same way). Extraction: the MCQ rule (a letter, or an option's text). Score: pair
accuracy (percent): questions 2k-1 and 2k (by Index) form pair k, which counts only if both are
right; also the per-question ``accuracy``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

from cambrian_train.eval.benchmarks.base import (
    MCQ_SUFFIX,
    EvalItem,
    PathLike,
    build_prompt,
    check_predictions,
    count_unparsed,
    percent,
)
from cambrian_train.eval.benchmarks.mcq import LETTERS, MultipleChoiceBenchmark, mcq_body
from cambrian_train.eval.benchmarks.readers import first_field, read_delimited, require

CSV_NAME = "Questions.csv"
IMAGE_DIRS = ("MMVP Images", "images")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_OPTION = re.compile(r"\(([a-z])\)\s*(.*?)\s*(?=\([a-z]\)|$)", re.DOTALL)


def parse_options(text: str) -> List[str]:
    """``"(a) Open (b) Closed"`` -> ``["Open", "Closed"]``."""
    return [option for _, option in _OPTION.findall(text.strip())]


def _image(root: Path, index: int, path: Path) -> str:
    for folder in IMAGE_DIRS:
        for ext in IMAGE_EXTENSIONS:
            candidate = root / folder / f"{index}{ext}"
            if candidate.is_file():
                return str(candidate)
    raise ValueError(f"{path}: item {index}: no image {index}.jpg/.png under {root}/{IMAGE_DIRS}")


class MMVP(MultipleChoiceBenchmark):
    """MMVP (module docstring)."""

    name = "mmvp"
    category = "Vision-Centric"
    prompt_suffix = MCQ_SUFFIX

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        csv_path = path / CSV_NAME if path.is_dir() else path
        if not csv_path.is_file():
            raise ValueError(f"MMVP questions file {csv_path} does not exist")
        items = []
        for position, row in enumerate(read_delimited(csv_path, ",")):
            raw_index = first_field(row, ("Index", "lndex"), csv_path, position)
            require(row, ("Question", "Options", "Correct Answer"), csv_path, raw_index)
            index = int(raw_index)
            choices = parse_options(row["Options"])
            answer = row["Correct Answer"].strip().strip("()").upper()
            if len(choices) < 2 or answer not in LETTERS[: len(choices)]:
                raise ValueError(
                    f"{csv_path}: item {index}: options {row['Options']!r} / answer "
                    f"{row['Correct Answer']!r} do not parse as '(a) .. (b) ..' / '(a)'"
                )
            items.append(
                EvalItem(
                    id=str(index),
                    images=[_image(csv_path.parent, index, csv_path)],
                    prompt=build_prompt(mcq_body(row["Question"].strip(), choices), MCQ_SUFFIX, 1),
                    answer=answer,
                    choices=choices,
                    meta={"pair": (index - 1) // 2},
                )
            )
        return items

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        pairs: Dict[int, List[bool]] = {}
        for item, prediction in zip(items, predictions):
            pairs.setdefault(item.meta["pair"], []).append(prediction == item.answer)
        incomplete = sorted(k for k, v in pairs.items() if len(v) != 2)
        if incomplete:
            raise ValueError(f"{self.name}: pairs {incomplete[:5]} do not hold exactly 2 questions")
        correct = sum(all(v) for v in pairs.values())
        right = sum(p == item.answer for item, p in zip(items, predictions))
        return {
            "score": percent(correct, len(pairs)),
            "count": len(items),
            "pairs": len(pairs),
            "accuracy": percent(right, len(items)),
            "unparsed": count_unparsed(predictions),
        }
