"""SEED-Bench, image part (SEED-I): 9 image dimensions, four-option questions.

Expected release: the official ``SEED-Bench.json`` (``{"question_type": {name: id},
"questions": [{question_id, question, choice_a..choice_d, answer (letter), data_id, data_type,
question_type_id}]}``) with the images in ``SEED-Bench-image/`` beside it (named by
``data_id``). ``path`` is the JSON file or the directory holding both. Only ``data_type ==
"image"`` questions are kept (the video questions belong to SEED-V).

Prompt: ``<image>\\nquestion\\nA. ...\\nD. ...`` + MCQ suffix. Score: accuracy (percent) and per
question type (its name from ``question_type``, else the id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from cambrian_train.eval.benchmarks.base import MCQ_SUFFIX, EvalItem, PathLike, build_prompt
from cambrian_train.eval.benchmarks.mcq import LETTERS, MultipleChoiceBenchmark, mcq_body
from cambrian_train.eval.benchmarks.readers import read_json, require, resolve_image

JSON_NAME = "SEED-Bench.json"
IMAGE_DIR = "SEED-Bench-image"
_CHOICE_FIELDS = ("choice_a", "choice_b", "choice_c", "choice_d")


def _type_names(data: dict) -> Dict[str, str]:
    names = data.get("question_type") or {}
    return {str(type_id): str(name) for name, type_id in names.items()}


class SEEDImage(MultipleChoiceBenchmark):
    """SEED-Bench image questions (module docstring)."""

    name = "seed_img"
    category = "General"
    prompt_suffix = MCQ_SUFFIX
    score_keys = ("question_type",)

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        if path.is_dir():
            path = path / JSON_NAME
        data = read_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
            raise ValueError(f"{path}: expected an object with a 'questions' list")
        type_names = _type_names(data)
        folders = [path.parent / IMAGE_DIR, path.parent]
        items = []
        for position, row in enumerate(data["questions"]):
            require(row, ("question_id", "data_type"), path, position)
            if row["data_type"] != "image":
                continue
            item_id = str(row["question_id"])
            require(row, ("question", "answer", "data_id", *_CHOICE_FIELDS), path, item_id)
            choices = [str(row[f]) for f in _CHOICE_FIELDS]
            answer = str(row["answer"]).strip().upper()
            if answer not in LETTERS[: len(choices)]:
                raise ValueError(f"{path}: item {item_id} answer {answer!r} is not A-D")
            type_id = str(row.get("question_type_id", ""))
            items.append(
                EvalItem(
                    id=item_id,
                    images=[resolve_image(row["data_id"], folders, path, item_id, "data_id")],
                    prompt=build_prompt(mcq_body(str(row["question"]), choices), MCQ_SUFFIX, 1),
                    answer=answer,
                    choices=choices,
                    meta={"question_type": type_names.get(type_id, type_id)},
                )
            )
        return items
