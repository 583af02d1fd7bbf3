"""Map-style datasets: LLaVA records → :class:`Sample` (training) or eval prompts.

A record that cannot be used is returned as :class:`Skipped` with a reason, never replaced by
another sample; the loader counts reasons (data/loader.py) and ``data.strict`` turns the first
one into an error.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import UnidentifiedImageError

from cambrian_train.config.validate import vision_slot_len
from cambrian_train.data.documents import encode_document, is_document
from cambrian_train.data.images import content_box, load_image, tower_tensors
from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import (
    IMAGE_TAG,
    ChatTemplate,
    Turn,
    check_against_tokenizer,
    get_template,
    parse_turns,
)
from cambrian_train.data.tokenize import Encoded, append_text, encode
from cambrian_train.models.vision.base import ImageSpec

log = logging.getLogger(__name__)


@dataclass
class Sample:
    id: str
    input_ids: List[int]
    labels: List[int]
    image_starts: List[int]
    pixel_values: Dict[str, torch.Tensor]  # tower -> [n_images, 3, S, S] uint8 (or normalised)
    image_boxes: torch.Tensor  # [n_images, 4] content box (images.content_box)
    index: int = -1  # position in the data set (packing's resume state names carried samples)


@dataclass
class Skipped:
    index: int
    id: str
    reason: str
    detail: str


@dataclass
class ImageTextEncoder:
    """What turns text + image paths into model inputs (shared by training and evaluation)."""

    tokenizer: object
    template: ChatTemplate
    image_specs: Dict[str, ImageSpec]
    image_folder: str
    slot_len: int
    max_images: int
    max_length: int
    aspect_ratio: str = "pad"
    system_prompt: Optional[str] = None

    @property
    def placeholder_id(self) -> int:
        return self.tokenizer.pad_token_id

    def load_images(
        self, refs: Sequence[Union[str, bytes]]
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """Decode and preprocess → ({tower: [n, 3, S, S] uint8}, boxes [n, 4]).

        A ref is a path (relative to ``image_folder``) or encoded image bytes (benchmarks that
        embed their images). RecordError reasons: missing_image, bad_image.
        """
        return self.image_tensors([self._decode(ref) for ref in refs])

    def image_tensors(self, images: Sequence) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """Decoded RGB images → ({tower: [n, 3, S, S] uint8}, boxes [n, 4])."""
        per_tower: Dict[str, list] = {name: [] for name in self.image_specs}
        boxes = []
        for img in images:
            for name, tensor in tower_tensors(img, self.image_specs, self.aspect_ratio).items():
                per_tower[name].append(tensor)
            boxes.append(content_box(img.width, img.height, self.aspect_ratio))
        pixels = {
            name: torch.stack(ts)
            if ts
            else torch.zeros(0, 3, s.image_size, s.image_size, dtype=torch.uint8)
            for (name, ts), s in zip(per_tower.items(), self.image_specs.values())
        }
        return pixels, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)

    def _decode(self, ref: Union[str, bytes]):
        if isinstance(ref, (bytes, bytearray)):
            source, where = io.BytesIO(ref), f"of {len(ref)} bytes"
        else:
            source = where = os.path.join(self.image_folder, ref)
            if not os.path.isfile(source):
                raise RecordError("missing_image", f"image {source} does not exist")
        try:
            return load_image(source)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise RecordError("bad_image", f"image {where} cannot be decoded: {err}") from None

    def encode_turns(self, turns: List[Turn], record_id: str = "?") -> Encoded:
        """A training conversation with its labels."""
        return encode(
            turns,
            self.template,
            self.tokenizer,
            self.slot_len,
            self.placeholder_id,
            self.max_length,
            self.system_prompt,
            record_id=record_id,
        )

    def encode_prompt(self, question: str) -> Encoded:
        """A generation prompt for one user question (may contain <image>); no labels."""
        out = Encoded()
        text = self.template.generation_prompt(question, self.system_prompt)
        append_text(out, text, False, self.tokenizer, self.slot_len, self.placeholder_id)
        if len(out.input_ids) > self.max_length:
            raise RecordError("too_long", f"prompt of {len(out.input_ids)} tokens")
        return out


def stage_encoder(
    cfg, stage, tokenizer, image_specs: Dict[str, ImageSpec], image_folder: Optional[str] = None
) -> ImageTextEncoder:
    """The encoder a training stage uses (``cfg``: TrainConfig, ``stage``: StageConfig).

    Its template is checked against the tokenizer's own chat template once, here: a
    difference raises TemplateMismatch before any record is read.
    """
    template = get_template(stage.template or cfg.model.llm.template, tokenizer)
    if check_against_tokenizer(template, tokenizer):
        log.info("template %s renders exactly as the tokenizer's chat template", template.name)
    return ImageTextEncoder(
        tokenizer=tokenizer,
        template=template,
        image_specs=image_specs,
        image_folder=cfg.data.image_folder if image_folder is None else image_folder,
        slot_len=vision_slot_len(cfg.model.image_token_len, cfg.model.image_newline),
        max_images=cfg.data.max_images,
        max_length=stage.max_length,
        aspect_ratio=cfg.data.image_aspect_ratio,
        system_prompt=cfg.data.system_prompt,
    )


def record_images(record: dict) -> List[str]:
    image = record.get("image")
    if image is None:
        return []
    images = image if isinstance(image, list) else [image]
    if not all(isinstance(p, str) for p in images):
        raise RecordError("bad_record", f"'image' must be a path or a list of paths: {image!r}")
    return images


class SupervisedDataset(torch.utils.data.Dataset):
    """Training samples from LLaVA records and interleaved documents (data/documents.py)."""

    def __init__(self, records: Sequence, encoder: ImageTextEncoder):
        self.records = records
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Union[Sample, Skipped]:
        record_id = f"#{index}"
        try:
            record = self.records[index]
            if is_document(record):  # interleaved image-text (data/documents.py)
                return self._document(record, str(record.get("id", record_id)), index)
            if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
                raise RecordError("bad_record", "not a dict with a 'conversations' list")
            record_id = str(record.get("id", record_id))
            return self._sample(record, record_id, index)
        except RecordError as err:
            return Skipped(index, record_id, err.reason, err.detail)

    def _document(self, record: dict, record_id: str, index: int) -> Sample:
        enc = self.encoder
        encoded, images = encode_document(
            record, enc.tokenizer, enc.slot_len, enc.placeholder_id, enc.max_images, enc.max_length
        )
        pixel_values, boxes = enc.load_images(images)
        ids, labels, starts = encoded.input_ids, encoded.labels, encoded.image_starts
        return Sample(record_id, ids, labels, starts, pixel_values, boxes, index)

    def _sample(self, record: dict, record_id: str, index: int) -> Sample:
        try:
            turns = parse_turns(record["conversations"], record_id)
        except ValueError as err:
            raise RecordError("unknown_role", str(err)) from None
        if not any(t.role == "assistant" for t in turns):
            raise RecordError("no_assistant_turn", "no 'gpt' turn")
        images = record_images(record)
        tags = sum(t.text.count(IMAGE_TAG) for t in turns)
        if tags != len(images):
            raise RecordError(
                "image_count_mismatch", f"{tags} <image> tags for {len(images)} images"
            )
        if len(images) > self.encoder.max_images:
            raise RecordError(
                "too_many_images",
                f"{len(images)} images > data.max_images={self.encoder.max_images}",
            )
        encoded = self.encoder.encode_turns(turns, record_id)
        pixel_values, boxes = self.encoder.load_images(images)
        return Sample(
            record_id,
            encoded.input_ids,
            encoded.labels,
            encoded.image_starts,
            pixel_values,
            boxes,
            index,
        )
