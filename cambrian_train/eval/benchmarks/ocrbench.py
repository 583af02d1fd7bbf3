"""OCRBench: 1000 OCR questions over 29 source data sets, scored by answer containment.

Expected release: the official ``OCRBench.json`` (a list of ``{dataset_name, id, image_path,
question, answers (str or list), type}``) with images under ``OCRBench_Images/`` (image paths are
looked up relative to the JSON's folder, then that subfolder); or lmms-lab/OCRBench parquet
(``dataset``, ``question``, ``question_type``, ``answer`` (list), ``image`` struct). ``path`` is
the JSON file or the parquet shard / directory.

Prompt: ``<image>\\nquestion`` + "Give the short answer directly." (Cambrian's OCRBench eval).
Score (official rule): an item is right if any gold answer occurs in the prediction -- both
lower-cased, stripped, newlines as spaces; for HME100k (handwritten formulas) case is kept and
all spaces and newlines removed instead. Headline ``score``: the number right (out of 1000 for
the full release), also ``percent`` and the count per question type.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence

from cambrian_train.eval.benchmarks.base import (
    Benchmark,
    EvalItem,
    PathLike,
    build_prompt,
    check_predictions,
    count_unparsed,
    percent,
)
from cambrian_train.eval.benchmarks.readers import first_field, read_rows, require, resolve_image

OCRBENCH_SUFFIX = "Give the short answer directly."
IMAGE_DIR = "OCRBench_Images"
FORMULA_SET = "HME100k"


def ocr_answer_found(prediction: str, answers: Sequence[str], dataset: str) -> bool:
    """The official containment rule (module docstring)."""
    for answer in answers:
        if dataset == FORMULA_SET:
            gold = answer.strip().replace("\n", " ").replace(" ", "")
            pred = prediction.strip().replace("\n", " ").replace(" ", "")
        else:
            gold = answer.lower().strip().replace("\n", " ")
            pred = prediction.lower().strip().replace("\n", " ")
        if gold and gold in pred:
            return True
    return False


class OCRBench(Benchmark):
    """OCRBench (module docstring)."""

    name = "ocrbench"
    category = "OCR & Chart"
    prompt_suffix = OCRBENCH_SUFFIX

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        base = path if path.is_dir() else path.parent
        items = []
        for position, row in enumerate(read_rows(path)):
            item_id = str(row.get("id", position))
            require(row, ("question",), path, item_id)
            answers = first_field(row, ("answers", "answer"), path, item_id)
            answers = [str(a) for a in answers] if isinstance(answers, list) else [str(answers)]
            image = first_field(row, ("image_path", "image"), path, item_id)
            items.append(
                EvalItem(
                    id=item_id,
                    images=[resolve_image(image, [base, base / IMAGE_DIR], path, item_id)],
                    prompt=build_prompt(str(row["question"]).strip(), self.prompt_suffix, 1),
                    answer=answers,
                    meta={
                        "dataset": str(
                            first_field(row, ("dataset_name", "dataset"), path, item_id)
                        ),
                        "type": str(first_field(row, ("type", "question_type"), path, item_id)),
                    },
                )
            )
        return items

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        right = [
            ocr_answer_found(p, item.answer, item.meta["dataset"])
            for item, p in zip(items, predictions)
        ]
        by_type = Counter(item.meta["type"] for item, ok in zip(items, right) if ok)
        return {
            "score": sum(right),
            "count": len(items),
            "percent": percent(sum(right), len(items)),
            "unparsed": count_unparsed(predictions),
            "by_type": {t: by_type.get(t, 0) for t in sorted({i.meta["type"] for i in items})},
        }
