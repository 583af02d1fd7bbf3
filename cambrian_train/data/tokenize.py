"""Conversation → token ids and labels, with each ``<image>`` expanded into placeholder runs.

Labels come from the template's segment boundaries: supervised segments keep their ids, all
others (prompts, system text, placeholders) get -100. Every image tag becomes ``slot_len``
placeholder ids whose start position is recorded, so the model never searches for images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import IMAGE_TAG, Template, Turn

IGNORE_INDEX = -100


@dataclass
class Encoded:
    input_ids: List[int] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    image_starts: List[int] = field(default_factory=list)  # first placeholder index per image


def append_text(
    out: Encoded, text: str, supervised: bool, tokenizer, slot_len: int, placeholder_id: int
) -> None:
    """Tokenise ``text`` onto ``out``, expanding each <image> into ``slot_len`` placeholders."""
    pieces = text.split(IMAGE_TAG)
    if supervised and len(pieces) > 1:
        raise RecordError("image_in_answer", "an assistant turn contains <image>")
    for k, piece in enumerate(pieces):
        if k > 0:
            out.image_starts.append(len(out.input_ids))
            out.input_ids.extend([placeholder_id] * slot_len)
            out.labels.extend([IGNORE_INDEX] * slot_len)
        if piece:
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            out.input_ids.extend(ids)
            out.labels.extend(ids if supervised else [IGNORE_INDEX] * len(ids))


def encode(
    turns: List[Turn],
    template: Template,
    tokenizer,
    slot_len: int,
    placeholder_id: int,
    max_length: int,
    system_prompt: Optional[str] = None,
) -> Encoded:
    """Tokenise a conversation.

    RecordError reasons: image_in_answer, too_long, empty_after_masking.
    """
    out = Encoded()
    for segment in template.render(turns, system_prompt):
        append_text(out, segment.text, segment.supervised, tokenizer, slot_len, placeholder_id)
    if len(out.input_ids) > max_length:
        raise RecordError("too_long", f"{len(out.input_ids)} tokens > max_length={max_length}")
    if all(label == IGNORE_INDEX for label in out.labels[1:]):
        raise RecordError("empty_after_masking", "no supervised token left")
    return out
