"""MME: yes/no questions, two per image, over 10 perception and 4 cognition subtasks.

Expected releases (``path`` is either):

- the official folder release (``MME_Benchmark_release_version/``): one folder per subtask;
  each question file ``<name>.txt`` holds lines ``question<TAB>answer`` and its image is
  ``<name>.jpg``/``.png`` -- beside it, or for artwork, celebrity, landmark, posters and scene in
  ``images/`` with the txt files in ``questions_answers_YES_or_NO/``;
- a table (lmms-lab/MME parquet, or JSON / JSONL / TSV) with ``question_id`` (the image name,
  shared by its two questions), ``question``, ``answer`` (Yes/No), ``category`` (the subtask),
  ``image`` (struct, or a path relative to the file).

Prompt: ``<image>\\nquestion`` (it ends with "Please answer yes or no.") + short-answer suffix
(Cambrian's MME eval). Extraction (official): lower-cased, periods dropped; "yes"/"no" as is,
else "yes"/"no" found in the first 4 characters, else unparsed. Score per subtask: ``acc`` (per
question) + ``acc_plus`` (per image: both questions right), each percent, summed; ``perception``
and ``cognition`` sum their subtasks; the headline ``score`` is perception (MME-P, max 2000).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from cambrian_train.eval.benchmarks.base import (
    SHORT_ANSWER_SUFFIX,
    Benchmark,
    EvalItem,
    ImageRef,
    PathLike,
    build_prompt,
    check_predictions,
    count_unparsed,
    percent,
)
from cambrian_train.eval.benchmarks.readers import read_rows, require, resolve_image

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
IMAGE_EXTENSIONS = (".jpg", ".png", ".jpeg")
_SPLIT_LAYOUT = ("images", "questions_answers_YES_or_NO")


def _yes_no(value: Any, path: Path, where: Any) -> str:
    answer = str(value).strip().lower()
    if answer not in ("yes", "no"):
        raise ValueError(f"{path}: item {where} answer {value!r} is not Yes/No")
    return answer


def _subtask(value: Any, path: Path, where: Any) -> str:
    name = str(value).strip()
    if name not in PERCEPTION + COGNITION:
        raise ValueError(f"{path}: item {where} category {name!r} is not an MME subtask")
    return name


def _folder_questions(task_dir: Path) -> List[Tuple[str, str, Path, str]]:
    """(question, answer, image, image id) of one subtask folder of the official release."""
    image_dir, text_dir = task_dir, task_dir
    if all((task_dir / d).is_dir() for d in _SPLIT_LAYOUT):
        image_dir, text_dir = (task_dir / d for d in _SPLIT_LAYOUT)
    rows = []
    for text_file in sorted(text_dir.glob("*.txt")):
        images = [image_dir / f"{text_file.stem}{ext}" for ext in IMAGE_EXTENSIONS]
        image = next((i for i in images if i.is_file()), None)
        if image is None:
            raise ValueError(f"{text_file}: no image {text_file.stem}.jpg/.png in {image_dir}")
        lines = [ln for ln in text_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        for number, line in enumerate(lines, 1):
            parts = line.split("\t")
            if len(parts) != 2:
                raise ValueError(f"{text_file}: line {number} is not 'question<TAB>answer'")
            answer = _yes_no(parts[1], text_file, f"line {number}")
            rows.append((parts[0].strip(), answer, image, image.name))
    return rows


def extract_yes_no(prediction: str) -> str:
    """ "yes"/"no" per the official MME rule (module docstring), else ``""``."""
    text = prediction.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return ""


class MME(Benchmark):
    """MME (module docstring)."""

    name = "mme"
    category = "General"
    prompt_suffix = SHORT_ANSWER_SUFFIX

    def _item(
        self, item_id: str, task: str, question: str, answer: str, image: ImageRef, image_id: str
    ) -> EvalItem:
        return EvalItem(
            id=item_id,
            images=[image],
            prompt=build_prompt(question, self.prompt_suffix, 1),
            answer=answer,
            meta={"category": task, "image_id": image_id},
        )

    def _load_folders(self, root: Path) -> List[EvalItem]:
        items = []
        for task in PERCEPTION + COGNITION:
            if not (root / task).is_dir():
                continue
            for n, (question, answer, image, image_id) in enumerate(_folder_questions(root / task)):
                items.append(
                    self._item(f"{task}/{n}", task, question, answer, str(image), image_id)
                )
        if not items:
            raise ValueError(f"{root} holds no MME subtask folder (e.g. {root / 'existence'})")
        return items

    def load(self, path: PathLike) -> List[EvalItem]:
        path = Path(path)
        if path.is_dir() and not any(path.rglob("*.parquet")):
            return self._load_folders(path)
        base = path if path.is_dir() else path.parent
        items = []
        for position, row in enumerate(read_rows(path)):
            require(row, ("question_id", "question", "answer", "category", "image"), path, position)
            task = _subtask(row["category"], path, position)
            image_id = str(row["question_id"])
            image = resolve_image(row["image"], [base], path, image_id)
            answer = _yes_no(row["answer"], path, position)
            items.append(
                self._item(
                    f"{position}", task, str(row["question"]).strip(), answer, image, image_id
                )
            )
        return items

    def extract(self, prediction: str, item: EvalItem) -> str:
        return extract_yes_no(prediction)

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        per_task: Dict[str, List[bool]] = defaultdict(list)
        per_image: Dict[Tuple[str, str], List[bool]] = defaultdict(list)
        for item, prediction in zip(items, predictions):
            correct = prediction == item.answer
            per_task[item.meta["category"]].append(correct)
            per_image[(item.meta["category"], item.meta["image_id"])].append(correct)
        subtasks = {}
        for task, answers in per_task.items():
            images = [all(v) for (t, _), v in per_image.items() if t == task]
            acc, acc_plus = percent(sum(answers), len(answers)), percent(sum(images), len(images))
            subtasks[task] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}
        perception = sum(subtasks[t]["score"] for t in PERCEPTION if t in subtasks)
        cognition = sum(subtasks[t]["score"] for t in COGNITION if t in subtasks)
        return {
            "score": perception,
            "perception": perception,
            "cognition": cognition,
            "count": len(items),
            "unparsed": count_unparsed(predictions),
            "missing_subtasks": [t for t in PERCEPTION + COGNITION if t not in subtasks],
            "by_subtask": dict(sorted(subtasks.items())),
        }
