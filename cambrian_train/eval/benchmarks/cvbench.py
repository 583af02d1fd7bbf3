"""CV-Bench (Cambrian-1's vision-centric benchmark), as ``cvbench_2d`` and ``cvbench_3d``.

Expected release: nyu-visionx/CV-Bench, ``test.parquet`` (``image`` struct) or ``test.jsonl``
(``filename``: image path relative to the file, e.g. ``img/2D/count/ade20k_10.png``); fields
``idx, type ("2D"/"3D"), task, question, choices (list), answer ("(A)"), source
("ADE20K"/"COCO"/"Omni3D")``. ``path`` is the file (or the parquet directory); each benchmark
keeps the rows of its ``type``.

Prompt: ``<image>\\nquestion\\nA. ...`` + MCQ suffix. Score as the official script: accuracy per
``source``, and the headline is their mean (2D: mean of ADE20K and COCO accuracies; 3D: the
Omni3D accuracy); also per task.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

from cambrian_train.eval.benchmarks.base import (
    MCQ_SUFFIX,
    EvalItem,
    PathLike,
    accuracy_results,
    build_prompt,
    check_predictions,
)
from cambrian_train.eval.benchmarks.mcq import LETTERS, MultipleChoiceBenchmark, mcq_body
from cambrian_train.eval.benchmarks.readers import (
    first_field,
    read_rows,
    require,
    resolve_image,
)

_ANSWER = re.compile(r"\(?([A-Z])\)?")


class CVBench(MultipleChoiceBenchmark):
    """CV-Bench rows of one ``type`` (set by the subclasses)."""

    category = "Vision-Centric"
    prompt_suffix = MCQ_SUFFIX
    bench_type: str

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        base = path if path.is_dir() else path.parent
        items = []
        for position, row in enumerate(read_rows(path)):
            require(row, ("type",), path, position)
            if row["type"] != self.bench_type:
                continue
            item_id = str(row.get("idx", position))
            require(row, ("question", "choices", "answer", "source", "task"), path, item_id)
            choices = [str(c) for c in row["choices"]]
            match = _ANSWER.fullmatch(str(row["answer"]).strip())
            if match is None or match.group(1) not in LETTERS[: len(choices)]:
                raise ValueError(
                    f"{path}: item {item_id} answer {row['answer']!r} is not an option"
                )
            image = first_field(row, ("image", "filename"), path, item_id)
            items.append(
                EvalItem(
                    id=item_id,
                    images=[resolve_image(image, [base], path, item_id)],
                    prompt=build_prompt(mcq_body(str(row["question"]), choices), MCQ_SUFFIX, 1),
                    answer=match.group(1),
                    choices=choices,
                    meta={"source": str(row["source"]), "task": str(row["task"])},
                )
            )
        return items

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        correct = [p == item.answer for item, p in zip(items, predictions)]
        results = accuracy_results(items, predictions, correct, "source", "task")
        results["accuracy"] = results["score"]
        per_source = results["by_source"]
        results["score"] = sum(per_source.values()) / len(per_source)
        return results


class CVBench2D(CVBench):
    """CV-Bench 2D (ADE20K + COCO: counting, spatial relation)."""

    name = "cvbench_2d"
    bench_type = "2D"


class CVBench3D(CVBench):
    """CV-Bench 3D (Omni3D: depth order, relative distance)."""

    name = "cvbench_3d"
    bench_type = "3D"
