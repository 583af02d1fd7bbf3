"""ChartQA test: questions on charts, scored by relaxed accuracy.

Expected release: the official ChartQA ``test/`` folder holding ``test_human.json`` and
``test_augmented.json`` (lists of ``{imgname, query, label}``) and the charts in ``png/``.
``path`` is that folder (both splits are read, whichever exist) or one split's JSON file (the split
is named after the file). Images are looked up in ``png/`` beside the JSON, then beside it.

Prompt: ``<image>\\nquery`` + short-answer suffix. Extraction: the answer stripped, one final
period dropped. Score: relaxed accuracy (:func:`~.vqa_scores.relaxed_correct`: numbers within
5 %, else case-insensitive exact match) per split, percent; the headline is the mean of the splits'
accuracies (the paper's ChartQA number averages human and augmented).
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
from cambrian_train.eval.benchmarks.vqa_scores import relaxed_correct

SPLIT_FILES = ("test_human.json", "test_augmented.json")


def _split_files(path: Path) -> List[Path]:
    if not path.is_dir():
        return [path]
    files = [path / name for name in SPLIT_FILES if (path / name).is_file()]
    if not files:
        raise ValueError(f"ChartQA folder {path} holds neither of {SPLIT_FILES}")
    return files


class ChartQA(Benchmark):
    """ChartQA test (module docstring)."""

    name = "chartqa"
    category = "OCR & Chart"
    prompt_suffix = SHORT_ANSWER_SUFFIX

    def load(self, path: PathLike) -> List[EvalItem]:
        items = []
        for file in _split_files(Path(path)):
            split = file.stem.removeprefix("test_")
            folders = [file.parent / "png", file.parent]
            for position, row in enumerate(read_rows(file)):
                require(row, ("imgname", "query", "label"), file, position)
                item_id = f"{split}/{position}"
                items.append(
                    EvalItem(
                        id=item_id,
                        images=[resolve_image(row["imgname"], folders, file, item_id, "imgname")],
                        prompt=build_prompt(str(row["query"]).strip(), self.prompt_suffix, 1),
                        answer=str(row["label"]).strip(),
                        meta={"split": split},
                    )
                )
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        text = prediction.strip()
        return text[:-1].rstrip() if text.endswith(".") else text

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        correct = [
            bool(p) and relaxed_correct(p, item.answer) for item, p in zip(items, predictions)
        ]
        results = accuracy_results(items, predictions, correct, "split")
        results["accuracy"] = results["score"]
        splits = results["by_split"]
        results["score"] = sum(splits.values()) / len(splits)
        return results
