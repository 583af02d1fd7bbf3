"""ScienceQA-IMG (SQA-I): the image questions of the ScienceQA test split.

Expected release: lmms-lab/ScienceQA, config ``ScienceQA-IMG``, split ``test`` (parquet shards;
``path`` is a shard or the directory holding them), columns ``question, choices (list),
answer (int, 0-based), hint, image (struct with bytes), subject, grade, category``. A JSON /
JSONL file with the same fields and ``image`` a path relative to the file works too. Rows without
an image (when given the full ScienceQA test split) are skipped and their number logged: SQA-I
is defined on the image questions only.

Prompt (Cambrian's ScienceQA eval): ``<image>\\n[hint ]question\\nA. ...`` + Cambrian's SQA
suffix. Score: accuracy (percent), per subject.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List

from cambrian_train.eval.benchmarks.base import EvalItem, PathLike, build_prompt
from cambrian_train.eval.benchmarks.mcq import MultipleChoiceBenchmark, index_letter, mcq_body
from cambrian_train.eval.benchmarks.readers import (
    is_missing,
    optional_str,
    read_rows,
    require,
    resolve_image,
)

log = logging.getLogger(__name__)

SQA_SUFFIX = "Please answer directly with only the letter of the correct option and nothing else."


class ScienceQAImage(MultipleChoiceBenchmark):
    """ScienceQA test, image subset (module docstring)."""

    name = "sqa_img"
    category = "Knowledge"
    prompt_suffix = SQA_SUFFIX
    score_keys = ("subject",)

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        base = path if path.is_dir() else path.parent
        items, skipped = [], 0
        for position, row in enumerate(read_rows(path)):
            require(row, ("question", "choices", "answer"), path, position)
            if is_missing(row.get("image")):
                skipped += 1
                continue
            item_id = str(row.get("id", position))
            choices = [str(c) for c in row["choices"]]
            hint = optional_str(row.get("hint"))
            question = str(row["question"]).strip()
            body = mcq_body(f"{hint} {question}" if hint else question, choices)
            items.append(
                EvalItem(
                    id=item_id,
                    images=[resolve_image(row["image"], [base], path, item_id)],
                    prompt=build_prompt(body, self.prompt_suffix, 1),
                    answer=index_letter(row["answer"], choices, path, item_id),
                    choices=choices,
                    meta={"subject": optional_str(row.get("subject")) or ""},
                )
            )
        if skipped:
            log.info(
                "%s: skipped %d text-only questions (SQA-I is the image subset)", path, skipped
            )
        return items
