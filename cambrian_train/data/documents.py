"""Interleaved image-text documents (OBELICS / IDEFICS style) → training samples.

A record ``{"texts": ["a", null, "b", …], "images": [null, "x.jpg", null, …]}`` (equal-length
lists; at every position exactly one of the two is non-null) is one document, detected per record
by its ``texts`` + ``images`` keys, so document and LLaVA sources mix in one run
(``data.sources``; data/mixture.py resolves the image paths per source). Laid out as::

    [BOS] text-ids | image placeholders (slot_len) | text-ids … EOS

in the document's order, no chat template. Every text element is tokenised on its own (no
special tokens added); BOS is the tokenizer's ``bos_token`` (left out when it has none), EOS its
``eos_token``. Labels: every text token and EOS are supervised, BOS and placeholders are not.

Rejected (a :class:`Skipped` reason, counted by the loader):

- ``bad_document``: the lists differ in length, are not lists, a position holds both or
  neither, a text is not a string or an image not a path;
- ``image_tag_in_text``: a text holds a literal ``<image>``, which would read as an image that
  has no picture (rejected rather than escaped: an escape would change the text);
- ``special_token_in_text``: a text holds a special token of the tokenizer (it would forge a
  BOS/EOS or a placeholder id);
- ``no_text``: no text element (nothing to supervise);
- ``too_many_images``: more images than ``data.max_images``;
- ``too_long``: more tokens than the stage's ``max_length``. Too-long documents are skipped, not
  truncated, as a too-long LLaVA record is: truncating would make a record's length depend on
  the stage (the sampler's cached lengths, data/lengths.py, would no longer be the encoded
  lengths), and a cut must never split an image run. Raise ``max_length`` or pre-split long
  documents.
"""

from __future__ import annotations

from typing import List, Tuple

from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import IMAGE_TAG
from cambrian_train.data.tokenize import IGNORE_INDEX, Encoded, _forbidden_pattern

TEXTS_KEY, IMAGES_KEY = "texts", "images"


def is_document(record) -> bool:
    """Whether ``record`` is an interleaved document (it has ``texts`` and ``images``)."""
    return isinstance(record, dict) and TEXTS_KEY in record and IMAGES_KEY in record


def document_parts(record: dict, tokenizer=None) -> Tuple[List[str], List[str], List[int]]:
    """(texts, image paths, layout) of a document, checked (module docstring); ``layout`` holds,
    per position, the index of its text (>= 0) or ``-1 - k`` for image ``k``. With
    ``tokenizer``, texts holding one of its special tokens are rejected too."""
    texts, images = record[TEXTS_KEY], record[IMAGES_KEY]
    if not isinstance(texts, list) or not isinstance(images, list):
        raise RecordError("bad_document", "'texts' and 'images' must both be lists")
    if len(texts) != len(images):
        raise RecordError(
            "bad_document", f"'texts' has {len(texts)} entries but 'images' has {len(images)}"
        )
    out_texts: List[str] = []
    out_images: List[str] = []
    layout: List[int] = []
    pattern = _forbidden_pattern(tokenizer, ()) if tokenizer is not None else None
    for position, (text, image) in enumerate(zip(texts, images)):
        if (text is None) == (image is None):
            both = "both a text and an image" if text is not None else "neither text nor image"
            raise RecordError("bad_document", f"position {position} holds {both}")
        if text is not None:
            if not isinstance(text, str):
                raise RecordError("bad_document", f"text at position {position} is {text!r}")
            if IMAGE_TAG in text:
                raise RecordError(
                    "image_tag_in_text",
                    f"text at position {position} contains {IMAGE_TAG!r}; images are the "
                    "'images' entries",
                )
            found = pattern.search(text) if pattern is not None else None
            if found:
                raise RecordError(
                    "special_token_in_text",
                    f"text at position {position} contains {found.group()!r}, a special token "
                    "of the tokenizer",
                )
            layout.append(len(out_texts))
            out_texts.append(text)
        else:
            if not isinstance(image, str):
                raise RecordError("bad_document", f"image at position {position} is {image!r}")
            layout.append(-1 - len(out_images))
            out_images.append(image)
    if not any(t.strip() for t in out_texts):
        raise RecordError("no_text", "the document has no text to train on")
    return out_texts, out_images, layout


def special_count(tokenizer) -> int:
    """Tokens a document gets besides its texts and images: BOS (if any) and EOS."""
    return (tokenizer.bos_token_id is not None) + 1


def encode_document(
    record: dict, tokenizer, slot_len: int, placeholder_id: int, max_images: int, max_length: int
) -> Tuple[Encoded, List[str]]:
    """(token ids, labels and image starts; the image paths in order) of a document."""
    texts, images, layout = document_parts(record, tokenizer)
    if len(images) > max_images:
        raise RecordError("too_many_images", f"{len(images)} images > data.max_images={max_images}")
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    length = sum(map(len, ids)) + len(images) * slot_len + special_count(tokenizer)
    if length > max_length:
        raise RecordError("too_long", f"{length} tokens > max_length={max_length}")
    out = Encoded()
    if tokenizer.bos_token_id is not None:
        out.input_ids.append(tokenizer.bos_token_id)
        out.labels.append(IGNORE_INDEX)
    for entry in layout:
        if entry >= 0:
            out.input_ids.extend(ids[entry])
            out.labels.extend(ids[entry])
        else:
            out.image_starts.append(len(out.input_ids))
            out.input_ids.extend([placeholder_id] * slot_len)
            out.labels.extend([IGNORE_INDEX] * slot_len)
    out.input_ids.append(tokenizer.eos_token_id)
    out.labels.append(tokenizer.eos_token_id)
    return out, images


def document_pieces(record: dict, tokenizer) -> Tuple[List[str], int, bool, int]:
    """What data/lengths.py counts for a document: (texts, number of images, multimodal, extra
    tokens: BOS/EOS); RecordError for a document the dataset rejects before tokenising."""
    texts, images, _ = document_parts(record, tokenizer)
    return texts, len(images), bool(images), special_count(tokenizer)
