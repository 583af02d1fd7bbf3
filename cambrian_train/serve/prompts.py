"""Server requests → model inputs: conversations with images, checked before anything is queued.

A conversation is a list of :class:`Message` (role, text, the message's images). Each image
becomes an ``<image>`` line before its message's text, the conversation is rendered through the
model's chat template (the prompt encoder of ``load_pretrained``) and tokenised exactly as
``cambrian-chat`` does; every problem a user can fix — no question, too many images, a file that
is not an image, a prompt longer than the model's length — is a :class:`RequestError` naming the
value, raised before the request reaches the generator. Used by serve/openai_api.py and
serve/ui.py.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

from PIL import Image

from cambrian_train.data.dataset import ImageTextEncoder, Sample
from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import IMAGE_TAG, Turn
from cambrian_train.data.tokenize import Encoded, append_text
from cambrian_train.infer.chat import prompt_sample

MAX_IMAGE_BYTES = 32 * 1024 * 1024  # one decoded data: URL
ROLES = ("system", "user", "assistant")

ImageRef = Union[str, bytes]  # a local path, or encoded image bytes


class RequestError(ValueError):
    """A request the server will not run; ``message`` says what to change. ``param`` names the
    offending field (OpenAI error objects carry it), ``status`` the HTTP status."""

    def __init__(
        self,
        message: str,
        param: Optional[str] = None,
        status: int = 400,
        code: Optional[str] = None,
    ):
        super().__init__(message)
        self.param = param
        self.status = status
        self.code = code


@dataclass
class Message:
    """One message of a conversation; ``images`` come before its text in the prompt."""

    role: str  # system | user | assistant
    text: str
    images: List[ImageRef] = field(default_factory=list)


@dataclass(eq=False)
class Prompt:
    """A checked request: the sample the generator collates, and its token count."""

    sample: Sample

    @property
    def num_tokens(self) -> int:
        return len(self.sample.input_ids)


def image_from_url(url: str, allow_local_files: bool, param: str = "image_url") -> ImageRef:
    """An ``image_url`` → image bytes (``data:`` URL, base64) or a local path (``file://`` URL
    or a plain path, only with ``allow_local_files``). Remote URLs are refused: the server
    fetches nothing."""
    if not isinstance(url, str) or not url:
        raise RequestError(f"{param}: the url must be a non-empty string, got {url!r}", param)
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or not head.endswith(";base64"):
            raise RequestError(f"{param}: a data: URL must be 'data:<type>;base64,<data>'", param)
        if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise RequestError(f"{param}: image larger than {MAX_IMAGE_BYTES} bytes", param)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as err:
            raise RequestError(
                f"{param}: the data: URL is not valid base64 ({err})", param
            ) from None
    if url.split(":", 1)[0].lower() in ("http", "https", "ftp", "gs", "s3"):
        raise RequestError(
            f"{param}: {url[:80]!r}: this server fetches no remote images; send the image as a "
            "data: URL (data:image/png;base64,...)",
            param,
        )
    path = url[len("file://") :] if url.startswith("file://") else url
    if not allow_local_files:
        raise RequestError(
            f"{param}: {url[:80]!r}: local image paths are off; start cambrian-serve with "
            "--allow-local-files, or send the image as a data: URL",
            param,
        )
    if not os.path.isfile(path):
        raise RequestError(f"{param}: image file {path} does not exist", param)
    return os.path.abspath(path)


def _turns(encoder: ImageTextEncoder, messages: Sequence[Message]) -> List[Turn]:
    if not messages:
        raise RequestError("messages: the conversation is empty", "messages")
    turns = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if msg.role not in ROLES:
            raise RequestError(f"{where}.role={msg.role!r} is not one of {ROLES}", where)
        if msg.role == "system" and i > 0:
            raise RequestError(f"{where}: a system message can only come first", where)
        if msg.images and msg.role != "user":
            raise RequestError(f"{where}: only user messages can hold images", where)
        if IMAGE_TAG in msg.text:
            raise RequestError(
                f"{where}: the text holds {IMAGE_TAG}; send images as image parts / uploads, "
                "the server places them",
                where,
            )
        turns.append(Turn(msg.role, f"{IMAGE_TAG}\n" * len(msg.images) + msg.text))
    last = messages[-1]
    if last.role != "user":
        raise RequestError("messages: the last message must be the user's", "messages")
    if encoder.template.plain:
        if not last.images:
            raise RequestError(
                "this model was trained on the plain (stage-1 captioning) template: send an "
                "image, its text is not used",
                "messages",
            )
    elif not last.text.strip():
        raise RequestError(
            "empty question: write some text (an image alone is not one)", "messages"
        )
    return turns


def build_prompt(encoder: ImageTextEncoder, messages: Sequence[Message]) -> Prompt:
    """Render, tokenise and load the images of a conversation ending with a user message."""
    turns = _turns(encoder, messages)
    images = [ref for msg in messages for ref in msg.images]
    if len(images) > encoder.max_images:
        raise RequestError(
            f"the conversation has {len(images)} images; this model takes at most "
            f"{encoder.max_images} (its data.max_images). Start a new conversation or send fewer",
            "messages",
            code="too_many_images",
        )
    system = encoder.system_prompt
    if turns[0].role == "system":
        system, turns = turns[0].text, turns[1:]
    try:
        text = encoder.template.prompt(turns, system)
    except RecordError as err:
        raise RequestError(f"messages: {err}", "messages") from None
    if text.count(IMAGE_TAG) != len(images):
        raise RequestError(
            f"the {encoder.template.name} template places {text.count(IMAGE_TAG)} of the "
            f"{len(images)} images; send images only in the last user message",
            "messages",
        )
    try:  # with data.tiling, each image takes its tiles' slots (read from its header)
        counts = encoder.tile_counts(images)
    except RecordError as err:
        raise RequestError(f"not an image: {err.detail}", "messages", code=err.reason) from None
    if sum(counts) > encoder.max_images:
        raise RequestError(
            f"the images take {sum(counts)} image slots as tiles; this model takes at most "
            f"{encoder.max_images} (its data.max_images). Send fewer or smaller images",
            "messages",
            code="too_many_images",
        )
    text = encoder.expand_tags(text, counts if images else None)
    encoded = Encoded()
    append_text(encoded, text, False, encoder.tokenizer, encoder.slot_len, encoder.placeholder_id)
    if len(encoded.input_ids) > encoder.max_length:
        raise RequestError(
            f"the prompt is {len(encoded.input_ids)} tokens ({encoder.slot_len} per image), more "
            f"than the model's {encoder.max_length}; shorten it or start a new conversation",
            "messages",
            code="context_length_exceeded",
        )
    try:
        return Prompt(prompt_sample(encoder, encoded, images, counts if images else None))
    except RecordError as err:
        raise RequestError(f"not an image: {err.detail}", "messages", code=err.reason) from None
    except Image.DecompressionBombError as err:
        raise RequestError(f"image too large to decode: {err}", "messages") from None
