"""POPE: object-hallucination yes/no questions in three negative-sampling settings.

Expected releases (``path`` is either):

- a table (lmms-lab/POPE parquet, or JSON / JSONL) with ``question``, ``answer`` (yes/no),
  ``category`` (adversarial / popular / random) and ``image`` (struct, or a file name);
- the original POPE directory: ``coco_pope_{adversarial,popular,random}.json`` (one JSON object a
  line: ``question_id, image, text, label``; the category comes from the file name) with the
  COCO val2014 images in ``val2014/`` (or beside the files).

Image names are looked up beside the data file, then in ``val2014/`` and ``images/``.
Prompt: ``<image>\\nquestion`` + short-answer suffix (LLaVA's POPE prompt). Extraction (LLaVA's
POPE rule): the first sentence, commas dropped; "no" if one of its words is No / no / not, else
"yes"; an empty generation is unparsed. Score per category: accuracy, precision, recall, F1 and
yes-ratio (percent; "yes" is the positive class); headline: F1 averaged over categories.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence

from cambrian_train.eval.benchmarks.base import (
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    EvalItem,
    PathLike,
    build_prompt,
    check_predictions,
    count_unparsed,
    percent,
)
from cambrian_train.eval.benchmarks.readers import (
    Row,
    first_field,
    read_jsonl,
    read_rows,
    resolve_image,
)

CATEGORIES = ("adversarial", "popular", "random")
_NO_WORDS = frozenset(("No", "no", "not"))


def _pope_files(root: Path) -> List[tuple]:
    files = [(c, root / f"coco_pope_{c}.json") for c in CATEGORIES]
    found = [(c, f) for c, f in files if f.is_file()]
    if not found:
        raise ValueError(f"{root} holds none of {[f.name for _, f in files]} and no .parquet")
    return found


def extract_yes_no(prediction: str) -> str:
    """LLaVA's POPE rule (module docstring)."""
    text = prediction.strip()
    if not text:
        return ""
    words = text.split(".")[0].replace(",", "").split()
    return "no" if any(w in _NO_WORDS for w in words) else "yes"


def binary_metrics(gold: Sequence[str], predicted: Sequence[str]) -> Dict[str, float]:
    """Accuracy, precision, recall, F1, yes-ratio (percent) with "yes" as positive."""
    tp = sum(g == "yes" and p == "yes" for g, p in zip(gold, predicted))
    fp = sum(g == "no" and p == "yes" for g, p in zip(gold, predicted))
    fn = sum(g == "yes" and p != "yes" for g, p in zip(gold, predicted))
    correct = sum(g == p for g, p in zip(gold, predicted))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": percent(correct, len(gold)),
        "precision": 100 * precision,
        "recall": 100 * recall,
        "f1": 100 * f1,
        "yes_ratio": percent(sum(p == "yes" for p in predicted), len(gold)),
        "count": len(gold),
    }


class POPE(Benchmark):
    """POPE (module docstring)."""

    name = "pope"
    category = "Other"
    prompt_suffix = SHORT_ANSWER_SUFFIX

    def _item(self, row: Row, category: str, path: Path, position: int) -> EvalItem:
        item_id = str(row.get("question_id", position))
        question = first_field(row, ("question", "text"), path, item_id)
        answer = str(first_field(row, ("answer", "label"), path, item_id)).strip().lower()
        if answer not in ("yes", "no"):
            raise ValueError(f"{path}: item {item_id} answer {answer!r} is not yes/no")
        if category not in CATEGORIES:
            raise ValueError(f"{path}: item {item_id} category {category!r} not in {CATEGORIES}")
        image = first_field(row, ("image",), path, item_id)
        folders = [path.parent, path.parent / "val2014", path.parent / "images"]
        return EvalItem(
            id=f"{category}/{item_id}",
            images=[resolve_image(image, folders, path, item_id)],
            prompt=build_prompt(str(question).strip(), self.prompt_suffix, 1),
            answer=answer,
            meta={"category": category},
        )

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        if path.is_dir() and not any(path.rglob("*.parquet")):
            return [
                self._item(row, category, file, i)
                for category, file in _pope_files(path)
                for i, row in enumerate(read_jsonl(file))
            ]
        items = []
        for position, row in enumerate(read_rows(path)):
            category = str(first_field(row, ("category",), path, position)).strip()
            items.append(self._item(row, category, path, position))
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        return extract_yes_no(prediction)

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        gold: Dict[str, List[str]] = defaultdict(list)
        predicted: Dict[str, List[str]] = defaultdict(list)
        for item, prediction in zip(items, predictions):
            gold[item.meta["category"]].append(str(item.answer))
            predicted[item.meta["category"]].append(prediction)
        by_category = {c: binary_metrics(gold[c], predicted[c]) for c in sorted(gold)}
        f1 = [m["f1"] for m in by_category.values()]
        return {
            "score": sum(f1) / len(f1),
            "count": len(items),
            "unparsed": count_unparsed(predictions),
            "accuracy": sum(m["accuracy"] for m in by_category.values()) / len(by_category),
            "by_category": by_category,
        }
