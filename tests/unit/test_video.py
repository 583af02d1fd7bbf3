"""Video records (data.video): segment-sampled frames from a PyAV-decoded file or a frame list,
their prompt text and slots, the sampler's lengths, and the skip reasons / missing decoder."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

from cambrian_train.config.schema import LLMConfig, TilingConfig
from cambrian_train.data.dataset import ImageTextEncoder, Sample, Skipped, SupervisedDataset
from cambrian_train.data.lengths import LengthSpec, compute_lengths
from cambrian_train.data.records import open_records
from cambrian_train.data.templates import get_template, parse_turns
from cambrian_train.data.video import VideoDecoderMissing, frame_indices, video_prompt
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.models.vision.base import ImageSpec
from cambrian_train.tiny import ensure_asset

av = pytest.importorskip("av")

SPECS = {"a": ImageSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
SLOT = 6


def colour(k):
    """Frame k's colour: 4 levels per channel 80 apart, so the nearest one survives the codec."""
    return ((k % 4) * 80, ((k // 4) % 4) * 80, (k // 16) * 160)


def nearest_frame(pixels):
    """The k whose colour is nearest the mean of a [3, S, S] uint8 frame."""
    mean = pixels.float().mean(dim=(1, 2)).numpy()
    return int(np.argmin([np.abs(mean - np.array(colour(k))).sum() for k in range(32)]))


def write_video(path, num_frames, codec="mpeg4"):
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        stream.bit_rate = 4_000_000
        for k in range(num_frames):
            array = np.full((64, 64, 3), colour(k), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def test_frame_indices_by_hand():
    # 30 frames, 8 segments: seg = 29/8 = 3.625; int(1.8125 + round(3.625k)), round half to
    # even (14.5 → 14): 0, 4, 7, 11, 14, 18, 22, 25 plus 1.8125
    assert frame_indices(30, 8) == [1, 5, 8, 12, 15, 19, 23, 26]
    # fewer frames than segments repeat: seg = 4/8; round(0.5k) = 0 0 1 2 2 2 3 4 (half even)
    assert frame_indices(5, 8) == [0, 0, 1, 2, 2, 2, 3, 4]
    # seg = 7/8: 0.4375 + round(0.875k) = 0 1 2 3 4 4 5 6
    assert frame_indices(8, 8) == [0, 1, 2, 3, 4, 4, 5, 6]
    assert frame_indices(1, 4) == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        frame_indices(0, 8)
    assert video_prompt(3) == "Frame1: <image>\nFrame2: <image>\nFrame3: <image>"


@pytest.fixture(scope="module")
def tokenizer():
    cfg = LLMConfig(
        checkpoint=ensure_asset("llama"), template="llama3", num_layers=4, hidden_size=128
    )
    return load_tokenizer(cfg)


def make_encoder(tokenizer, folder, num_frames=8, max_images=8):
    return ImageTextEncoder(
        tokenizer,
        get_template("llama3"),
        SPECS,
        str(folder),
        slot_len=SLOT,
        max_images=max_images,
        max_length=256,
        system_prompt="",
        tiling=TilingConfig(max_num=4, tile_size=16),  # frames are never tiled
        num_frames=num_frames,
    )


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


def video_record(video, rid="v"):
    return {"id": rid, "video": video, "conversations": [human("<video>\nWhat?"), gpt("shapes")]}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    write_video(root / "clip.mp4", 30)
    write_video(root / "clip.mkv", 30)  # Matroska stores no frame count: counted by packets
    write_video(root / "short.mp4", 5)
    (root / "frames").mkdir()
    for k in range(12):
        Image.new("RGB", (20, 10), colour(k)).save(root / "frames" / f"{k:03d}.png")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return root


@pytest.mark.parametrize("name", ["clip.mp4", "clip.mkv"])
def test_video_file_frames_are_the_segment_frames(tokenizer, media, name):
    sample = SupervisedDataset([video_record(name)], make_encoder(tokenizer, media))[0]
    assert isinstance(sample, Sample), sample
    frames = sample.pixel_values["a"]
    assert frames.shape == (8, 3, 32, 32)
    assert [nearest_frame(f) for f in frames] == [1, 5, 8, 12, 15, 19, 23, 26]
    assert sample.image_boxes.tolist() == [[0.0, 0.0, 1.0, 1.0]] * 8


def test_short_video_repeats_frames(tokenizer, media):
    sample = SupervisedDataset([video_record("short.mp4")], make_encoder(tokenizer, media))[0]
    assert isinstance(sample, Sample), sample
    assert [nearest_frame(f) for f in sample.pixel_values["a"]] == [0, 0, 1, 2, 2, 2, 3, 4]


def test_frame_list_record_and_its_token_layout(tokenizer, media):
    encoder = make_encoder(tokenizer, media, num_frames=4)
    frames = [f"frames/{k:03d}.png" for k in range(12)]
    sample = SupervisedDataset([video_record(frames)], encoder)[0]
    assert isinstance(sample, Sample), sample
    # seg = 11/4 = 2.75: int(1.375 + round(2.75k)) = 1, 4, 7, 9 (round(8.25) = 8)
    got = [tuple(int(v) for v in f[:, 16, 16]) for f in sample.pixel_values["a"]]
    assert got == [colour(k) for k in (1, 4, 7, 9)]  # PNG: exact; 20×10 padded, not tiled
    # the <video> tag reads as four "FrameN: <image>" lines, each one slot
    text = "Frame1: <image>\nFrame2: <image>\nFrame3: <image>\nFrame4: <image>\nWhat?"
    expected = encoder.encode_turns(parse_turns([human(text), gpt("shapes")], "v"), "v")
    assert sample.input_ids == expected.input_ids and sample.labels == expected.labels
    assert sample.image_starts == expected.image_starts and len(sample.image_starts) == 4
    first = sample.image_starts[0]
    assert tokenizer.decode(sample.input_ids[:first]).endswith("Frame1: ")
    assert tokenizer.decode(sample.input_ids[first + SLOT : sample.image_starts[1]]) == (
        "\nFrame2: "
    )
    assert sample.image_boxes[0].tolist() == [0.0, 0.25, 1.0, 0.75]  # pad-to-square band


def test_lengths_of_video_records(tokenizer, media, tmp_path):
    encoder = make_encoder(tokenizer, media, num_frames=4)
    records = [
        video_record("clip.mp4", "file"),
        video_record([f"frames/{k:03d}.png" for k in range(12)], "list"),
        video_record("gone.mp4", "missing"),  # no decoding for lengths: 4 slots all the same
    ]
    path = tmp_path / "videos.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    recs = open_records(str(path))
    lengths = compute_lengths(recs, LengthSpec.from_encoder(encoder))
    dataset = SupervisedDataset(recs, encoder)
    assert lengths.lengths[0] == len(dataset[0].input_ids) == lengths.lengths[1]
    assert lengths.lengths[2] == lengths.lengths[0] and not lengths.estimated.any()
    assert lengths.multimodal.all()
    eight = LengthSpec.from_encoder(make_encoder(tokenizer, media, num_frames=8))
    assert eight.key() != LengthSpec.from_encoder(encoder).key()
    # four more "FrameN: <image>" lines: 4 slots + their text
    assert compute_lengths(recs, eight).lengths[0] > lengths.lengths[0] + 4 * SLOT


def test_bad_videos_are_skipped_with_reasons(tokenizer, media):
    encoder = make_encoder(tokenizer, media, num_frames=4)
    frames = [f"frames/{k:03d}.png" for k in range(12)]
    cases = {
        "missing_video": video_record("gone.mp4"),
        "bad_video": video_record("broken.mp4"),
        "video_count_mismatch": {
            "id": "two-tags",
            "video": "clip.mp4",
            "conversations": [human("<video><video>"), gpt("x")],
        },
        "bad_record": {
            "id": "both",
            "video": "clip.mp4",
            "image": "frames/000.png",
            "conversations": [human("<video><image>"), gpt("x")],
        },
    }
    for reason, record in cases.items():
        out = SupervisedDataset([record], encoder)[0]
        assert isinstance(out, Skipped) and out.reason == reason, (reason, out)
    no_video = {"id": "t", "conversations": [human("<video> what"), gpt("x")]}
    assert SupervisedDataset([no_video], encoder)[0].reason == "video_count_mismatch"
    lost = video_record([*frames[:4], "frames/gone.png", *frames[5:]])  # frame 4 is sampled
    out = SupervisedDataset([lost], encoder)[0]
    assert out.reason == "missing_video" and "gone.png" in out.detail
    small = make_encoder(tokenizer, media, num_frames=4, max_images=3)
    out = SupervisedDataset([video_record("clip.mp4")], small)[0]
    assert out.reason == "too_many_images" and "4 frames" in out.detail


def test_missing_pyav_is_a_clear_error(tokenizer, media, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    encoder = make_encoder(tokenizer, media, num_frames=4)
    with pytest.raises(VideoDecoderMissing, match=r"\[video\]"):
        SupervisedDataset([video_record("clip.mp4")], encoder)[0]
    path = tmp_path / "v.jsonl"
    path.write_text(json.dumps(video_record("clip.mp4")))
    with pytest.raises(VideoDecoderMissing, match="pip install"):  # the start-up lengths pass
        compute_lengths(open_records(str(path)), LengthSpec.from_encoder(encoder))
    frames = video_record([f"frames/{k:03d}.png" for k in range(12)])
    assert isinstance(SupervisedDataset([frames], encoder)[0], Sample)  # no decoder needed
