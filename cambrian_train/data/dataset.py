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
from PIL import Image, UnidentifiedImageError

from cambrian_train.config.validate import vision_slot_len
from cambrian_train.data.documents import encode_document, is_document
from cambrian_train.data.images import content_box, image_size, load_image, tower_tensors
from cambrian_train.data.media import MediaPlan, check_slots, plan_media, record_images
from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import (
    IMAGE_TAG,
    ChatTemplate,
    Turn,
    check_against_tokenizer,
    get_template,
    parse_turns,
)
from cambrian_train.data.tiling import (
    check_counts,
    enabled,
    expand_image_tags,
    num_tiles,
    tile_image,
)
from cambrian_train.data.tokenize import Encoded, append_text, encode
from cambrian_train.data.video import read_frame_list, read_video_file
from cambrian_train.models.vision.base import ImageSpec

log = logging.getLogger(__name__)
__all__ = ["ImageTextEncoder", "Sample", "Skipped", "SupervisedDataset", "record_images"]


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
    """What turns text + image paths into model inputs (shared by training and evaluation).

    With ``tiling`` on (data/tiling.py) an image is cut into tiles, each its own image slot:
    a prompt's ``<image>`` tags then need the tile counts (:meth:`tile_counts`) to be encoded,
    and :meth:`load_images` / :meth:`image_tensors` return every tile of every image in order.
    """

    tokenizer: object
    template: ChatTemplate
    image_specs: Dict[str, ImageSpec]
    image_folder: str
    slot_len: int
    max_images: int
    max_length: int
    aspect_ratio: str = "pad"
    system_prompt: Optional[str] = None
    tiling: Optional[object] = None  # a TilingConfig (data.tiling); None or max_num 0: off
    num_frames: int = 8  # frames a video record gives (data.video.num_frames)

    @property
    def placeholder_id(self) -> int:
        return self.tokenizer.pad_token_id

    def tile_counts(self, images: Sequence[Union[str, bytes, Image.Image]]) -> List[int]:
        """Image slots each image takes: 1 without tiling, else its tiles, from the size in its
        header (a path relative to ``image_folder`` or encoded bytes; nothing is decoded) or of
        a decoded RGB image. RecordError reasons: missing_image, bad_image."""
        if not enabled(self.tiling):
            return [1] * len(images)
        return [num_tiles(*self._size(ref), self.tiling) for ref in images]

    def load_images(
        self, refs: Sequence[Union[str, bytes]], counts: Optional[Sequence[int]] = None
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """Decode and preprocess → ({tower: [n, 3, S, S] uint8}, boxes [n, 4]); n counts
        tiles with tiling on. ``counts`` (what the prompt was encoded with) are checked.

        A ref is a path (relative to ``image_folder``) or encoded image bytes (benchmarks that
        embed their images). RecordError reasons: missing_image, bad_image.
        """
        return self.image_tensors([self._decode(ref) for ref in refs], counts=counts)

    def load_media(self, plan: MediaPlan) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """A record's tensors: its images' tiles, or its video's sampled frames (not tiled).
        RecordError reasons: missing_image, bad_image, missing_video, bad_video."""
        if plan.video is None:
            return self.load_images(plan.images, plan.counts)
        if isinstance(plan.video, str):
            frames = read_video_file(os.path.join(self.image_folder, plan.video), self.num_frames)
        else:
            frames = read_frame_list(plan.video, self.num_frames, self._decode)
        return self.image_tensors(frames, tile=False)

    def image_tensors(
        self, images: Sequence, tile: bool = True, counts: Optional[Sequence[int]] = None
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """Decoded RGB images → ({tower: [n, 3, S, S] uint8}, boxes [n, 4]): with tiling on
        (and ``tile``) each image's tiles in order. RecordError ``bad_image`` when an image's
        tiles differ from ``counts``."""
        if tile and enabled(self.tiling):
            tiled = [tile_image(img, self.tiling) for img in images]
            if counts is not None and [len(t) for t in tiled] != list(counts):
                raise RecordError(
                    "bad_image",
                    f"decoded images give {[len(t) for t in tiled]} tiles, their headers "
                    f"{list(counts)}",
                )
            images = [t for tiles in tiled for t in tiles]
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

    def _source(self, ref: Union[str, bytes]) -> Tuple[object, str]:
        if isinstance(ref, (bytes, bytearray)):
            return io.BytesIO(ref), f"of {len(ref)} bytes"
        source = os.path.join(self.image_folder, ref)
        if not os.path.isfile(source):
            raise RecordError("missing_image", f"image {source} does not exist")
        return source, source

    def _decode(self, ref: Union[str, bytes]):
        source, where = self._source(ref)
        try:
            return load_image(source)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise RecordError("bad_image", f"image {where} cannot be decoded: {err}") from None

    def _size(self, ref: Union[str, bytes, Image.Image]) -> Tuple[int, int]:
        if isinstance(ref, Image.Image):
            return ref.size
        source, where = self._source(ref)
        try:
            return image_size(source)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise RecordError("bad_image", f"image {where} cannot be read: {err}") from None

    def expand_tags(self, text: str, counts: Optional[Sequence[int]]) -> str:
        """``text`` with its i-th ``<image>`` repeated ``counts[i]`` times (one per tile).
        ``counts`` None: one slot per tag, which with tiling on is a caller's error."""
        tags = text.count(IMAGE_TAG)
        if counts is None:
            if tags and enabled(self.tiling):
                raise ValueError(
                    "data.tiling is on: encode a prompt with its images' tile counts "
                    "(ImageTextEncoder.tile_counts)"
                )
            return text
        check_counts(counts, tags, "prompt")
        return expand_image_tags(text, counts)[0]

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

    def encode_prompt(self, question: str, counts: Optional[Sequence[int]] = None) -> Encoded:
        """A generation prompt for one user question (may contain <image>); no labels.
        ``counts``: slots per image tag (:meth:`tile_counts` of its images; needed with
        tiling on)."""
        out = Encoded()
        question = self.expand_tags(question, counts)
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
        tiling=cfg.data.tiling,
        num_frames=cfg.data.video.num_frames,
    )


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
        # one slot per document image: documents are not tiled (their images are many)
        pixel_values, boxes = enc.image_tensors([enc._decode(r) for r in images], tile=False)
        ids, labels, starts = encoded.input_ids, encoded.labels, encoded.image_starts
        return Sample(record_id, ids, labels, starts, pixel_values, boxes, index)

    def _sample(self, record: dict, record_id: str, index: int) -> Sample:
        try:
            turns = parse_turns(record["conversations"], record_id)
        except ValueError as err:
            raise RecordError("unknown_role", str(err)) from None
        if not any(t.role == "assistant" for t in turns):
            raise RecordError("no_assistant_turn", "no 'gpt' turn")
        enc = self.encoder
        plan = plan_media(record, turns, enc.image_folder, enc.tiling, enc.num_frames)
        check_slots(plan, enc.max_images)
        encoded = enc.encode_turns(plan.turns, record_id)
        pixel_values, boxes = enc.load_media(plan)
        return Sample(
            record_id,
            encoded.input_ids,
            encoded.labels,
            encoded.image_starts,
            pixel_values,
            boxes,
            index,
        )
