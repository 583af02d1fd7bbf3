"""Conversation → token ids and labels, with each ``<image>`` expanded into placeholder runs.

Labels come from the template's segment boundaries: tokens of supervised segments keep their
ids, all others (prompts, system text, placeholders) get -100. Every image tag becomes
``slot_len`` placeholder ids whose start position is recorded, so the model never searches for
images.

Mask/text consistency. The text between image tags is tokenized as one piece (the ids are
exactly the tokenization of the rendered text), and each token is labelled by the segment its
characters (offset mapping) lie in. A token that crosses a prompt/answer boundary means the mask
cannot follow the template: :class:`TemplateMismatch` is raised, never a skip. Tokenizing each
segment on its own instead would change the ids at boundaries: SentencePiece tokenizers
(Metaspace, ``prepend_scheme="first"``: Llama-2, Mistral, Phi-3, Yi) put a ``▁`` before every
separately tokenized piece that does not start with a space, so ``"<|assistant|>\\n" + "red"``
tokenized in two calls gives ``▁red`` where the whole text gives ``re d``.

Special tokens. The tokenizer is called with ``add_special_tokens=False``; the template writes
the only BOS. A record whose text contains a special token of the tokenizer or a control string
of the template (``<|begin_of_text|>``, ``<s>``, ``[INST]``…) is skipped as
``special_token_in_text``; a BOS anywhere but at position 0 is then a template fault
(:class:`TemplateMismatch`).
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import (
    IMAGE_TAG,
    ChatTemplate,
    Segment,
    TemplateMismatch,
    Turn,
)

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: List[int] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    image_starts: List[int] = field(default_factory=list)  # first placeholder index per image


@dataclass(frozen=True)
class _Spans:
    """Where the supervised flag changes in a rendered text (character positions)."""

    text: str
    first_supervised: bool
    cuts: Tuple[int, ...]

    @classmethod
    def of(cls, segments: List[Segment]) -> _Spans:
        text, cuts, flags = "", [], []
        for seg in segments:
            if not seg.text:
                continue
            if flags and seg.supervised != flags[-1]:
                cuts.append(len(text))
            flags.append(seg.supervised)
            text += seg.text
        return cls(text, flags[0] if flags else False, tuple(cuts))

    def supervised_at(self, pos: int) -> bool:
        return self.first_supervised ^ (bisect_right(self.cuts, pos) % 2 == 1)

    def cut_inside(self, lo: int, hi: int) -> Optional[int]:
        """A flag change strictly inside (lo, hi), or None."""
        i = bisect_right(self.cuts, lo)
        return self.cuts[i] if i < len(self.cuts) and self.cuts[i] < hi else None


def append_text(
    out: Encoded, text: str, supervised: bool, tokenizer, slot_len: int, placeholder_id: int
) -> None:
    """Tokenise ``text`` onto ``out``, expanding each <image> into ``slot_len`` placeholders."""
    append_segments(out, [Segment(text, supervised)], tokenizer, slot_len, placeholder_id)


def append_segments(
    out: Encoded,
    segments: List[Segment],
    tokenizer,
    slot_len: int,
    placeholder_id: int,
    context: str = "text",
) -> None:
    """Tokenise rendered segments onto ``out``: one tokenizer call per image-free chunk.

    RecordError reasons: image_in_answer. TemplateMismatch: a token crosses a boundary between
    supervised and unsupervised text (``context`` names template and record in the message).
    """
    if any(seg.supervised and IMAGE_TAG in seg.text for seg in segments):
        raise RecordError("image_in_answer", "an assistant turn contains <image>")
    spans = _Spans.of(segments)
    pos = 0
    for k, chunk in enumerate(spans.text.split(IMAGE_TAG)):
        if k > 0:
            out.image_starts.append(len(out.input_ids))
            out.input_ids.extend([placeholder_id] * slot_len)
            out.labels.extend([IGNORE_INDEX] * slot_len)
            pos += len(IMAGE_TAG)
        if chunk:
            _append_chunk(out, spans, pos, pos + len(chunk), tokenizer, context)
        pos += len(chunk)


def _append_chunk(out: Encoded, spans: _Spans, lo: int, hi: int, tokenizer, context: str) -> None:
    """Tokenise ``spans.text[lo:hi]`` and label each token by the segment it lies in.

    A token covers its offsets plus any characters the tokenizer left uncovered before it
    (offsets trimmed of a leading space), so a space cut off from its word is noticed too.
    """
    enc = tokenizer(spans.text[lo:hi], add_special_tokens=False, return_offsets_mapping=True)
    covered = 0
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        first = lo + min(start, covered)
        last = max(lo + end, first)
        covered = max(covered, end)
        cut = spans.cut_inside(first, last)
        if cut is not None:
            token = tokenizer.decode([token_id])
            raise TemplateMismatch(
                f"{context}: token {token!r} (id {token_id}) crosses the boundary between prompt "
                f"and answer in {spans.text[max(0, cut - 30) : cut]!r} | "
                f"{spans.text[cut : cut + 30]!r}; the label mask cannot follow the template's "
                "segments (a boundary must fall between tokens: put a space that precedes the "
                "answer into the answer)"
            )
        supervised = spans.supervised_at(min(first, hi - 1))
        out.input_ids.append(token_id)
        out.labels.append(token_id if supervised else IGNORE_INDEX)


@functools.lru_cache(maxsize=16)
def _forbidden_pattern(tokenizer, markers: Tuple[str, ...]) -> Optional[re.Pattern]:
    """Special tokens of the tokenizer (named and added) plus the template's control strings."""
    strings = set(tokenizer.all_special_tokens) | set(markers)
    strings |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    strings -= {IMAGE_TAG, ""}
    if not strings:
        return None
    return re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)))


def check_special_tokens(turns: List[Turn], template: ChatTemplate, tokenizer) -> None:
    """RecordError ``special_token_in_text`` when rendered record text holds a control string."""
    pattern = _forbidden_pattern(tokenizer, tuple(template.markers))
    if pattern is None:
        return
    for i, turn in enumerate(turns):
        if template.plain and turn.role == "user":
            continue  # the plain template drops user text (only its <image> tags are kept)
        found = pattern.search(turn.text)
        if found:
            raise RecordError(
                "special_token_in_text",
                f"turn {i} ({turn.role}) contains {found.group()!r}, a special token of the "
                f"tokenizer or a control string of template {template.name!r}",
            )


def check_bos(out: Encoded, template: ChatTemplate, tokenizer, context: str) -> None:
    """At most one BOS, at position 0, and there when the template writes the tokenizer's BOS."""
    bos_id = tokenizer.bos_token_id
    if bos_id is None:
        return
    positions = [i for i, t in enumerate(out.input_ids) if t == bos_id]
    if positions not in ([], [0]):
        raise TemplateMismatch(
            f"{context}: BOS id {bos_id} at positions {positions[:8]}; only position 0 may hold "
            "it (the template writes the only BOS, the tokenizer adds none)"
        )
    if getattr(template, "bos", "") == tokenizer.bos_token and positions != [0]:
        raise TemplateMismatch(
            f"{context}: the template writes BOS {tokenizer.bos_token!r} but the ids do not "
            "start with its id (the tokenizer does not treat it as one special token)"
        )


def encode(
    turns: List[Turn],
    template: ChatTemplate,
    tokenizer,
    slot_len: int,
    placeholder_id: int,
    max_length: int,
    system_prompt: Optional[str] = None,
    *,
    record_id: str = "?",
) -> Encoded:
    """Tokenise a conversation.

    RecordError reasons (the sample is skipped and counted): special_token_in_text,
    image_in_answer, unrenderable, too_long, empty_after_masking. TemplateMismatch (raised): the
    token masks cannot follow the rendered text, or a BOS is doubled.
    """
    context = f"template {template.name!r}, record {record_id}"
    check_special_tokens(turns, template, tokenizer)
    if all(not t.text.strip() for t in turns if t.role == "assistant"):
        raise RecordError("empty_after_masking", "every assistant turn is empty")
    out = Encoded()
    segments = template.render(turns, system_prompt)
    append_segments(out, segments, tokenizer, slot_len, placeholder_id, context)
    check_bos(out, template, tokenizer, context)
    if len(out.input_ids) > max_length:
        raise RecordError("too_long", f"{len(out.input_ids)} tokens > max_length={max_length}")
    if all(label == IGNORE_INDEX for label in out.labels):
        raise RecordError("empty_after_masking", "no supervised token left")
    return out
