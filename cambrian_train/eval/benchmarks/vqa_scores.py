"""Open-answer scores: VQA accuracy (official normalisation), ANLS, ChartQA relaxed accuracy.

- :func:`normalize_vqa_answer`: the VQA / TextVQA (EvalAI) answer processor: lower-case; drop
  ``,`` and ``?``, split ``'s``; each other punctuation mark deleted if it stands beside a space
  somewhere in the answer, else replaced by a space; periods not followed by a digit removed;
  number words zero..ten and none -> digits; articles a/an/the dropped; apostrophe-less
  contractions restored (``dont`` -> ``don't``: every spelling of a contraction below with some
  apostrophes dropped maps to it, except spellings that are ordinary words: ``were``, ``its``).
- :func:`vqa_accuracy`: for each of the n leave-one-out subsets of the gold answers,
  ``min(#matches / 3, 1)``; averaged (10 answers: the official 10-choose-9 averaging; one to
  four matches give 0.3, 0.6, 0.9, 1.0).
- :func:`anls`: DocVQA's Average Normalized Levenshtein Similarity for one item: the best over
  gold answers of ``1 - dist / max(len)`` on lower-cased, whitespace-collapsed text, 0 when the
  normalised distance is 0.5 or more.
- :func:`relaxed_correct`: ChartQA: numbers (a trailing ``%`` divides by 100) within 5 % of a
  non-zero target count as correct; anything else must match exactly, ignoring case.
"""

from __future__ import annotations

import itertools
import re
from functools import cache
from typing import Dict, Optional, Sequence

_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset(("a", "an", "the"))
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<")
_PUNCTUATION += ("@", "`", ",", "?", "!")
_PERIOD_STRIP = re.compile(r"\.(?!\d)")  # a period not followed by a digit
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll let's ma'am mightn't
mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't she'd've
she's should've shouldn't shouldn't've somebody'd somebody'd've somebody'll somebody's someone'd
someone'd've someone'll someone's something'd something'd've something'll that's there'd
there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've
weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll
who're who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll
y'all'd've you'd you'd've you'll you're you've
""".split()
_ORDINARY_WORDS = frozenset(("were", "well", "hell", "shell", "ill", "its", "shed", "wed", "id"))


@cache
def _contraction_map() -> Dict[str, str]:
    mapping: Dict[str, str] = {}
    for word in _CONTRACTIONS:
        positions = [i for i, ch in enumerate(word) if ch == "'"]
        for keep in itertools.product((True, False), repeat=len(positions)):
            if all(keep):
                continue
            dropped = {p for p, k in zip(positions, keep) if not k}
            spelling = "".join(ch for i, ch in enumerate(word) if i not in dropped)
            if spelling not in _ORDINARY_WORDS:
                mapping.setdefault(spelling, word)
    return mapping


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCTUATION:
        if f"{p} " in text or f" {p}" in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out)


def normalize_vqa_answer(text: str) -> str:
    """The official VQA/TextVQA answer normalisation (module docstring)."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text)
    contractions = _contraction_map()
    words = []
    for word in text.split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(contractions.get(word, word))
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy in [0, 1] of one prediction against the annotators' answers."""
    if not answers:
        raise ValueError("vqa_accuracy needs at least one gold answer")
    pred = normalize_vqa_answer(prediction)
    gold = [normalize_vqa_answer(a) for a in answers]
    if len(gold) == 1:
        return float(pred == gold[0])
    matches = sum(1 for g in gold if g == pred)
    total = 0.0
    for left_out in gold:
        others = matches - (left_out == pred)
        total += min(1.0, others / 3.0)
    return total / len(gold)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _anls_text(text: str) -> str:
    return " ".join(text.strip().lower().split())


def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """ANLS in [0, 1] of one prediction: best similarity over the gold answers."""
    if not answers:
        raise ValueError("anls needs at least one gold answer")
    pred = _anls_text(prediction)
    best = 0.0
    for answer in answers:
        gold = _anls_text(answer)
        length = max(len(pred), len(gold))
        distance = levenshtein(pred, gold) / length if length else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best


def _to_float(text: str) -> Optional[float]:
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correct(prediction: str, target: str, tolerance: float = 0.05) -> bool:
    """ChartQA relaxed accuracy for one answer (module docstring)."""
    prediction, target = prediction.strip(), target.strip()
    pred_value, target_value = _to_float(prediction), _to_float(target)
    if pred_value is not None and target_value:
        return abs(pred_value - target_value) / abs(target_value) <= tolerance
    return prediction.lower() == target.lower()
