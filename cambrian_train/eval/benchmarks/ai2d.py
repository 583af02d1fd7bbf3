"""AI2D (test): science diagrams, four-option questions.

Expected release: lmms-lab/ai2d (parquet; ``path`` is a shard or their directory) with columns
``question, options (list), answer (the 0-based option index, as str or int), image (struct)``;
or a JSON / JSONL file with the same fields and ``image`` a path relative to the file.

Prompt: ``<image>\\nquestion\\nA. ...`` + MCQ suffix (Cambrian's AI2D eval). Score: accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from cambrian_train.eval.benchmarks.base import MCQ_SUFFIX, EvalItem, PathLike, build_prompt
from cambrian_train.eval.benchmarks.mcq import MultipleChoiceBenchmark, index_letter, mcq_body
from cambrian_train.eval.benchmarks.readers import read_rows, require, resolve_image


class AI2D(MultipleChoiceBenchmark):
    """AI2D test (module docstring)."""

    name = "ai2d"
    category = "Knowledge"
    prompt_suffix = MCQ_SUFFIX

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        base = path if path.is_dir() else path.parent
        items = []
        for position, row in enumerate(read_rows(path)):
            require(row, ("question", "options", "answer", "image"), path, position)
            item_id = str(row.get("id", position))
            choices = [str(c) for c in row["options"]]
            items.append(
                EvalItem(
                    id=item_id,
                    images=[resolve_image(row["image"], [base], path, item_id)],
                    prompt=build_prompt(mcq_body(str(row["question"]), choices), MCQ_SUFFIX, 1),
                    answer=index_letter(row["answer"], choices, path, item_id),
                    choices=choices,
                )
            )
        return items
