"""MMBench (dev, English) with CircularEval.

Expected release: the official OpenCompass TSV (e.g. ``MMBench_DEV_EN.tsv``) with columns
``index, question, hint, A, B, C, D[, E], answer, category, l2-category, image`` where ``image`` is
the base64-encoded image (VLMEvalKit's circular TSVs may instead hold, in a copy's ``image`` cell,
the ``index`` of the row that carries the image). ``path`` is the TSV file.

Circular groups: a row's group is its ``g_index`` column when present, else ``index % 1e6``.
When some group holds several rows the TSV is taken as already circular (its rows are the
variants). Otherwise (the plain dev TSV) the variants are generated here: for n options, rotation
k (k = 0..n-1) shows original option ``(i + k) % n`` at position i and moves the answer letter
accordingly; variant ids are ``index + k * 1e6`` (VLMEvalKit's numbering).

Prompt: ``<image>\\n[hint\\n]question\\nA. ...\\nB. ...\\n`` + MCQ suffix (LLaVA's MMBench prompt).
Score: CircularEval accuracy (percent): a group counts only if every variant is answered right;
also ``vanilla`` (accuracy on rotation-0 rows only) and circular accuracy per category and
l2-category.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence

from cambrian_train.eval.benchmarks.base import (
    MCQ_SUFFIX,
    Benchmark,
    EvalItem,
    PathLike,
    build_prompt,
    check_predictions,
    count_unparsed,
    percent,
)
from cambrian_train.eval.benchmarks.mcq import LETTERS, extract_choice, mcq_body
from cambrian_train.eval.benchmarks.readers import (
    Row,
    decode_base64,
    is_missing,
    optional_str,
    read_rows,
    require,
)

GROUP_STRIDE = 1_000_000
_OPTION_COLUMNS = LETTERS[:8]
_IMAGE_REFERENCE_MAX_LEN = 64  # a cell this short is a row index, not a base64 image


def _int_field(row: Row, name: str, path: Path, where: Any) -> int:
    try:
        return int(float(row[name]))
    except ValueError:
        raise ValueError(
            f"{path}: item {where} field {name!r} is not an integer: {row[name]!r}"
        ) from None


def _choices(row: Row) -> List[str]:
    choices = []
    for letter in _OPTION_COLUMNS:
        if letter not in row or is_missing(row[letter]):
            break
        choices.append(str(row[letter]).strip())
    return choices


def _images(rows: List[Row], indices: List[int], path: Path) -> Dict[int, bytes]:
    """Decoded image per row index, following short cells that name another row's index."""
    cells = {i: str(row["image"]).strip() for i, row in zip(indices, rows)}
    images = {}
    for index, cell in cells.items():
        if len(cell) <= _IMAGE_REFERENCE_MAX_LEN and cell.isdigit():
            target = int(cell)
            if target not in cells or len(cells[target]) <= _IMAGE_REFERENCE_MAX_LEN:
                raise ValueError(f"{path}: item {index} image refers to row {cell}, which has none")
            cell = cells[target]
        images[index] = decode_base64(cell, path, index)
    return images


def _rotations(choices: List[str], answer: int, circular: bool) -> List[tuple]:
    """(rotation k, rotated choices, rotated answer index) for every variant to ask."""
    if circular:
        return [(0, choices, answer)]
    n = len(choices)
    return [(k, choices[k:] + choices[:k], (answer - k) % n) for k in range(n)]


class MMBench(Benchmark):
    """MMBench-EN dev, CircularEval (module docstring)."""

    name = "mmbench"
    category = "General"
    prompt_suffix = MCQ_SUFFIX

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        rows = read_rows(path)
        for position, row in enumerate(rows):
            require(row, ("index", "question", "answer", "image", "A", "B"), path, position)
        indices = [_int_field(row, "index", path, i) for i, row in enumerate(rows)]
        images = _images(rows, indices, path)
        groups = [
            _int_field(row, "g_index", path, i)
            if not is_missing(row.get("g_index"))
            else i % GROUP_STRIDE
            for row, i in zip(rows, indices)
        ]
        circular = len(set(groups)) < len(groups)
        items = []
        for row, index, group in zip(rows, indices, groups):
            choices = _choices(row)
            answer = str(row["answer"]).strip().upper()
            if answer not in LETTERS[: len(choices)]:
                raise ValueError(
                    f"{path}: item {index} answer {answer!r} is not one of its options"
                )
            hint = optional_str(row.get("hint"))
            question = str(row["question"]).strip()
            question = f"{hint}\n{question}" if hint else question
            for k, rotated, answer_index in _rotations(choices, LETTERS.index(answer), circular):
                items.append(
                    EvalItem(
                        id=str(index + k * GROUP_STRIDE),
                        images=[images[index]],
                        prompt=build_prompt(mcq_body(question, rotated), self.prompt_suffix, 1),
                        answer=LETTERS[answer_index],
                        choices=rotated,
                        meta={
                            "group": group,
                            "rotation": k if not circular else index // GROUP_STRIDE,
                            "category": optional_str(row.get("category")) or "",
                            "l2_category": optional_str(row.get("l2-category")) or "",
                        },
                    )
                )
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        return extract_choice(prediction, item.choices)

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        group_ok: Dict[Any, bool] = {}
        group_meta: Dict[Any, EvalItem] = {}
        vanilla = []
        for item, prediction in zip(items, predictions):
            correct = prediction == item.answer
            key = item.meta["group"]
            group_ok[key] = group_ok.get(key, True) and correct
            group_meta.setdefault(key, item)
            if item.meta["rotation"] == 0:
                vanilla.append(correct)
        results: Dict[str, Any] = {
            "score": percent(sum(group_ok.values()), len(group_ok)),
            "count": len(items),
            "groups": len(group_ok),
            "unparsed": count_unparsed(predictions),
            "vanilla": percent(sum(vanilla), len(vanilla)) if vanilla else None,
        }
        for key in ("category", "l2_category"):
            per: Dict[str, List[bool]] = defaultdict(list)
            for group, ok in group_ok.items():
                per[group_meta[group].meta[key]].append(ok)
            results[f"by_{key}"] = {k: percent(sum(v), len(v)) for k, v in sorted(per.items())}
        return results
