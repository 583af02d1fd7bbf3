"""Video records: ``num_frames`` frames sampled by segments, each frame one image slot.

A record gives ``"video": "clip.mp4"`` (a file decoded with PyAV, the ``[video]`` extra) or
``"video": ["f0.jpg", "f1.jpg", ...]`` (frame files in order), paths relative to the image
folder, and one ``<video>`` tag in its text. The tag becomes ``num_frames`` lines
``Frame1: <image>`` … ``FrameN: <image>`` joined by ``\\n`` (:func:`video_prompt`; InternVL2's
text, e.g. its MVBench evaluation ``'\\n'.join('Frame{i+1}: <image>')``), so
``"<video>\\nWhat happens?"`` reads ``"Frame1: <image>\\n…\\nFrame8: <image>\\nWhat happens?"``
exactly as InternVL2's video prompt. Frames are not tiled.

Which frames (:func:`frame_indices`) is InternVL2's ``get_index`` without a time bound: with
``F`` frames, ``seg = (F - 1) / N`` (its ``max_frame`` is the last index, ``len(vr) - 1``) and
frame ``k`` is ``int(seg / 2 + round(seg · k))`` (numpy's round, half to even). A video with
fewer than ``N`` frames repeats frames (as InternVL2 does), so every video record takes exactly
``N`` slots and its token length needs no decoding.

Reasons a record is skipped: ``missing_video`` (no such file, or a frame file missing),
``bad_video`` (undecodable, no video stream, no frame). A video file while PyAV is not installed
raises :class:`VideoDecoderMissing` (naming the extra) — at start-up when the sampler's lengths
pass reads the records (data/lengths.py), else at the first such record — since skipping every
video of a data set would be silent data loss.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, List, Sequence

import numpy as np
from PIL import Image

from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import IMAGE_TAG

log = logging.getLogger(__name__)

VIDEO_TAG = "<video>"
INSTALL_HINT = "pip install -e '.[video]' (or pip install av)"


class VideoDecoderMissing(RuntimeError):
    """A record names a video file and PyAV is not installed."""


def import_av():
    """The ``av`` module; :class:`VideoDecoderMissing` naming the extra when it is absent."""
    try:
        import av
    except ImportError:
        raise VideoDecoderMissing(
            f"a record names a video file, and PyAV (the [video] extra) is not installed: "
            f'{INSTALL_HINT}; frame-list records ("video": [frame files]) need no decoder'
        ) from None
    return av


def frame_indices(num_available: int, num_frames: int) -> List[int]:
    """The ``num_frames`` frame indices of a video of ``num_available`` frames (module
    docstring: InternVL2's ``get_index``); repeats indices when there are fewer frames."""
    if num_available < 1 or num_frames < 1:
        raise ValueError(f"cannot sample {num_frames} of {num_available} frames")
    seg = float(num_available - 1) / num_frames
    return [int(seg / 2 + np.round(seg * k)) for k in range(num_frames)]


def video_prompt(num_frames: int) -> str:
    """What a ``<video>`` tag becomes: ``Frame1: <image>\\n…FrameN: <image>``."""
    return "\n".join(f"Frame{i + 1}: {IMAGE_TAG}" for i in range(num_frames))


def read_frame_list(
    paths: Sequence[str], num_frames: int, decode: Callable[[str], Image.Image]
) -> List[Image.Image]:
    """The sampled frames of a frame-file list; ``decode`` (a path → RGB image) raises
    RecordError ``missing_image`` / ``bad_image``, reported as ``missing_video`` / ``bad_video``."""
    picked = frame_indices(len(paths), num_frames)
    decoded = {}
    for i in sorted(set(picked)):
        try:
            decoded[i] = decode(paths[i])
        except RecordError as err:
            reason = "missing_video" if err.reason == "missing_image" else "bad_video"
            raise RecordError(reason, f"frame {i} of the video: {err.detail}") from None
    return [decoded[i] for i in picked]


def _count_frames(container, stream) -> int:
    """Frames of ``stream``: the container's count, else one per demuxed packet with data."""
    if stream.frames > 0:
        return int(stream.frames)
    count = sum(1 for packet in container.demux(stream) if packet.size > 0)
    container.seek(0)
    return count


def _decode_at(container, stream, wanted: Sequence[int]) -> tuple:
    """Decode from the start up to the last wanted frame → ({index: RGB image}, frames seen)."""
    need, last = set(wanted), max(wanted)
    found, seen = {}, 0
    for frame in container.decode(stream):
        if seen in need:
            found[seen] = frame.to_image().convert("RGB")
        seen += 1
        if seen > last:
            break
    return found, seen


def read_video_file(path: str, num_frames: int) -> List[Image.Image]:
    """The sampled frames of a video file (PyAV). RecordError reasons: missing_video,
    bad_video; :class:`VideoDecoderMissing` without PyAV."""
    av = import_av()
    if not os.path.isfile(path):
        raise RecordError("missing_video", f"video {path} does not exist")
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise RecordError("bad_video", f"video {path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            count = _count_frames(container, stream)
            if count < 1:
                raise RecordError("bad_video", f"video {path} has no frame")
            wanted = frame_indices(count, num_frames)
            found, seen = _decode_at(container, stream, wanted)
            if seen <= max(wanted):  # the container's frame count was too high
                if seen < 1:
                    raise RecordError("bad_video", f"video {path}: no frame decodes")
                log.debug("video %s: %d frames decode, the container says %d", path, seen, count)
                container.seek(0)
                wanted = frame_indices(seen, num_frames)
                found, _ = _decode_at(container, stream, wanted)
    except (av.error.FFmpegError, OSError, ValueError, IndexError) as err:
        raise RecordError("bad_video", f"video {path} cannot be decoded: {err}") from None
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise RecordError("bad_video", f"video {path}: frames {missing[:4]} do not decode")
    return [found[i] for i in wanted]
