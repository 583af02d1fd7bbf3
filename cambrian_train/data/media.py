"""What a record's images or video become in its text and its image slots (:func:`plan_media`).

One plan serves the dataset (data/dataset.py, which then decodes) and the sampler's length pass
(data/lengths.py, which does not), so both see the same tags and slot counts: each ``<image>``
tag is repeated once per tile of its image (data/tiling.py; tile counts from the image headers,
no decoding) and a ``<video>`` tag becomes ``num_frames`` frame lines of one slot each
(data/video.py). A record holds images or a video, not both.

RecordError reasons: ``bad_record`` (a malformed ``image`` / ``video`` field, or both),
``image_count_mismatch`` / ``video_count_mismatch`` (tags vs media), ``missing_image`` /
``bad_image`` (an image header, with tiling on). A video file without PyAV raises
:class:`~cambrian_train.data.video.VideoDecoderMissing`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Union

from PIL import UnidentifiedImageError

from cambrian_train.data.images import image_size
from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import IMAGE_TAG, Turn
from cambrian_train.data.tiling import enabled, expand_image_tags, num_tiles
from cambrian_train.data.video import VIDEO_TAG, import_av, video_prompt


@dataclass(frozen=True)
class MediaPlan:
    """``turns`` with the tags expanded; ``images`` (paths) or ``video`` (a path or frame
    paths); ``counts``: slots per image (its tiles), or one per sampled frame."""

    turns: List[Turn]
    images: List[str]
    video: Union[None, str, List[str]]
    counts: List[int]

    @property
    def num_slots(self) -> int:
        return sum(self.counts)


def record_images(record: dict) -> List[str]:
    image = record.get("image")
    if image is None:
        return []
    images = image if isinstance(image, list) else [image]
    if not all(isinstance(p, str) for p in images):
        raise RecordError("bad_record", f"'image' must be a path or a list of paths: {image!r}")
    return images


def record_video(record: dict) -> Union[None, str, List[str]]:
    video = record.get("video")
    if video is None:
        return None
    if isinstance(video, str) and video:
        return video
    if isinstance(video, list) and video and all(isinstance(p, str) for p in video):
        return video
    raise RecordError(
        "bad_record", f"'video' must be a path or a non-empty list of frame paths: {video!r}"
    )


def header_tiles(path: str, tiling) -> int:
    """Tiles of the image file ``path`` from its header. RecordError missing_image, bad_image."""
    if not os.path.isfile(path):
        raise RecordError("missing_image", f"image {path} does not exist")
    try:
        width, height = image_size(path)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise RecordError("bad_image", f"image {path} cannot be read: {err}") from None
    return num_tiles(width, height, tiling)


def plan_media(
    record: dict, turns: List[Turn], image_folder: str, tiling, num_frames: int
) -> MediaPlan:
    """The plan of ``record`` whose conversation is ``turns`` (module docstring); ``tiling``
    a TilingConfig (or None: off), ``num_frames`` the frames a video gives."""
    images, video = record_images(record), record_video(record)
    image_tags = sum(t.text.count(IMAGE_TAG) for t in turns)
    video_tags = sum(t.text.count(VIDEO_TAG) for t in turns)
    if video is not None:
        if images:
            raise RecordError("bad_record", "a record holds 'image' or 'video', not both")
        if video_tags != 1 or image_tags:
            raise RecordError(
                "video_count_mismatch",
                f"a video record needs one {VIDEO_TAG} tag and no {IMAGE_TAG}: found "
                f"{video_tags} and {image_tags}",
            )
        if isinstance(video, str):
            import_av()  # a clear error now, not one skipped record per video
        frames = video_prompt(num_frames)
        out = [Turn(t.role, t.text.replace(VIDEO_TAG, frames)) for t in turns]
        return MediaPlan(out, [], video, [1] * num_frames)
    if video_tags:
        raise RecordError("video_count_mismatch", f"{video_tags} {VIDEO_TAG} tags for no video")
    if image_tags != len(images):
        raise RecordError(
            "image_count_mismatch", f"{image_tags} {IMAGE_TAG} tags for {len(images)} images"
        )
    if not enabled(tiling) or not images:
        return MediaPlan(list(turns), images, None, [1] * len(images))
    counts = [header_tiles(os.path.join(image_folder, p), tiling) for p in images]
    out, k = [], 0
    for t in turns:
        text, k = expand_image_tags(t.text, counts, k)
        out.append(Turn(t.role, text))
    return MediaPlan(out, images, None, counts)


def check_slots(plan: Optional[MediaPlan], max_images: int) -> None:
    """RecordError ``too_many_images`` when the plan needs more than ``max_images`` slots."""
    if plan is not None and plan.num_slots > max_images:
        media = (
            f"a video of {plan.num_slots} frames"
            if plan.video is not None
            else (
                f"{len(plan.images)} images ({plan.num_slots} tiles)"
                if plan.num_slots != len(plan.images)
                else f"{len(plan.images)} images"
            )
        )
        raise RecordError("too_many_images", f"{media} > data.max_images={max_images} slots")
