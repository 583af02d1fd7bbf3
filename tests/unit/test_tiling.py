"""Dynamic tiling (data.tiling): InternVL2's grid rule, tile pixels, the encoder's slot layout,
the sampler's lengths, the config checks, and tiling at evaluation and inference."""

from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image

from cambrian_train.config.schema import LLMConfig, TilingConfig
from cambrian_train.config.validate import ConfigError, validate
from cambrian_train.data.dataset import ImageTextEncoder, Sample, Skipped, SupervisedDataset
from cambrian_train.data.images import image_size, load_image, to_tensor
from cambrian_train.data.lengths import LengthSpec, compute_lengths
from cambrian_train.data.records import open_records
from cambrian_train.data.templates import get_template, parse_turns
from cambrian_train.data.tiling import candidate_grids, image_grid, max_tiles, num_tiles, tile_image
from cambrian_train.models.llm import load_tokenizer
from cambrian_train.models.vision.base import ImageSpec
from cambrian_train.tiny import ensure_asset

SPECS = {
    "a": ImageSpec(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "b": ImageSpec(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}
SLOT = 6


def tiling(max_num=12, min_num=1, tile_size=448, thumbnail=True):
    return TilingConfig(max_num=max_num, min_num=min_num, tile_size=tile_size, thumbnail=thumbnail)


# (width, height, settings, expected (columns, rows)), each derived by hand in the comment
KNOWN = [
    # aspect 1: (1,1) has distance 0; (2,2) ties but 448² <= 0.5·448²·4
    (448, 448, tiling(), (1, 1)),
    # aspect 2: (2,1) first at distance 0; (4,2) ties, 896·448 <= 0.5·448²·8
    (896, 448, tiling(), (2, 1)),
    # aspect 3.33 with at most 6 tiles: 3 (3,1) is nearest (0.33), then 4 (0.67)
    (1000, 300, tiling(max_num=6), (3, 1)),
    # the area rule: 640² = 409600 > 0.5·448²·4 = 401408 → (2,2); 600² = 360000 is not → (1,1)
    (640, 640, tiling(), (2, 2)),
    (600, 600, tiling(), (1, 1)),
    # 1000² = 1e6 > 0.5·448²·9 = 903168 → (3,3); (4,4) has 16 > 12 tiles
    (1000, 1000, tiling(), (3, 3)),
    # min_num 2 excludes (1,1): (2,2) is the only grid at distance 0, small image or not
    (300, 300, tiling(max_num=6, min_num=2), (2, 2)),
    # aspect 2 with 3..8 tiles: (2,1) is excluded, (4,2) has distance 0
    (200, 100, tiling(max_num=8, min_num=3, tile_size=100), (4, 2)),
    # portrait 1:3 → (1,3); max_num 1 → always (1,1)
    (300, 900, tiling(max_num=6), (1, 3)),
    (900, 300, tiling(max_num=1), (1, 1)),
]


@pytest.mark.parametrize("width,height,settings,grid", KNOWN)
def test_grid_on_known_sizes(width, height, settings, grid):
    assert image_grid(width, height, settings) == grid
    n = grid[0] * grid[1]
    assert num_tiles(width, height, settings) == n + (1 if n > 1 else 0)


def reference_grid(width, height, min_num, max_num, tile):
    """InternVL2's rule written out another way: among the grids at the smallest aspect-ratio
    distance (in candidate order), the last one after the first whose tile area is under twice
    the image's area replaces the first."""
    grids = candidate_grids(min_num, max_num)
    aspect = width / height
    distance = [abs(aspect - i / j) for i, j in grids]
    tied = [g for g, d in zip(grids, distance) if d == min(distance)]
    larger = [g for g in tied[1:] if width * height > 0.5 * tile * tile * g[0] * g[1]]
    return larger[-1] if larger else tied[0]


def test_candidates_and_rule_against_a_reference():
    grids = candidate_grids(1, 3)  # by tile count; equal counts in set order, as InternVL2
    assert sorted(grids) == [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1)]
    assert [i * j for i, j in grids] == [1, 2, 2, 3, 3]
    assert sorted(candidate_grids(2, 4)) == sorted(
        [(1, 2), (2, 1), (1, 3), (3, 1), (2, 2), (1, 4), (4, 1)]
    )
    rng = random.Random(0)
    for _ in range(3000):
        w, h = rng.randint(1, 3000), rng.randint(1, 3000)
        lo = rng.randint(1, 3)
        hi = rng.randint(lo, 12)
        tile = rng.choice([32, 224, 336, 448])
        expect = reference_grid(w, h, lo, hi, tile)
        assert image_grid(w, h, tiling(hi, lo, tile)) == expect, (w, h, lo, hi, tile)


def blocks_image(cols, rows, side):
    """An image of cols×rows blocks of side px, block (r, c) a distinct colour."""
    img = Image.new("RGB", (cols * side, rows * side))
    colours = {}
    for r in range(rows):
        for c in range(cols):
            colour = (40 * c + 20, 60 * r + 30, 200 - 30 * (r * cols + c))
            img.paste(colour, (c * side, r * side, (c + 1) * side, (r + 1) * side))
            colours[r, c] = colour
    return img, colours


def test_tiles_are_the_resized_image_crops_row_major():
    img, colours = blocks_image(3, 2, 100)  # 300×200: aspect 1.5 → (3,2) at 6 tiles
    tiles = tile_image(img, tiling(max_num=6, tile_size=100))
    assert len(tiles) == 7  # 6 tiles + thumbnail
    for k in range(6):
        r, c = divmod(k, 3)
        assert tiles[k].size == (100, 100)
        assert set(tiles[k].getdata()) == {colours[r, c]}, (r, c)  # no resize at this size
    # a smaller image is resized (bicubic) to 300×200 first: each tile is that image's crop
    small = img.resize((150, 100), Image.Resampling.NEAREST)
    tiles = tile_image(small, tiling(max_num=6, tile_size=100))
    resized = small.resize((300, 200), Image.Resampling.BICUBIC)
    for k in range(6):
        r, c = divmod(k, 3)
        crop = resized.crop((c * 100, r * 100, c * 100 + 100, r * 100 + 100))
        assert list(tiles[k].getdata()) == list(crop.getdata())
        assert tiles[k].getpixel((50, 50)) == colours[r, c]
    thumb = small.resize((100, 100), Image.Resampling.BICUBIC)
    assert list(tiles[6].getdata()) == list(thumb.getdata())


def test_thumbnail_only_with_more_than_one_tile():
    square, _ = blocks_image(1, 1, 448)
    assert len(tile_image(square, tiling())) == 1  # 1×1: the image itself, no thumbnail
    assert tile_image(square, tiling())[0].size == (448, 448)
    wide, _ = blocks_image(2, 1, 448)
    assert len(tile_image(wide, tiling())) == 3
    assert len(tile_image(wide, tiling(thumbnail=False))) == 2
    assert num_tiles(896, 448, tiling(thumbnail=False)) == 2
    assert tile_image(wide, TilingConfig()) == [wide]  # max_num None: off
    assert num_tiles(896, 448, TilingConfig(max_num=0)) == 1
    assert max_tiles(tiling(max_num=12)) == 13
    assert max_tiles(tiling(max_num=12, thumbnail=False)) == 12
    assert max_tiles(tiling(max_num=1)) == 1


def test_header_size_follows_exif_orientation(tmp_path):
    img = Image.new("RGB", (60, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: decoded 20×60
    img.save(tmp_path / "rot.jpg", exif=exif)
    img.save(tmp_path / "plain.png")
    assert image_size(tmp_path / "rot.jpg") == load_image(tmp_path / "rot.jpg").size == (20, 60)
    assert image_size(tmp_path / "plain.png") == (60, 20)


@pytest.fixture(scope="module")
def tokenizer():
    cfg = LLMConfig(
        checkpoint=ensure_asset("llama"), template="llama3", num_layers=4, hidden_size=128
    )
    return load_tokenizer(cfg)


def make_encoder(tokenizer, folder, settings, max_images=8, max_length=256):
    return ImageTextEncoder(
        tokenizer,
        get_template("llama3"),
        SPECS,
        str(folder),
        slot_len=SLOT,
        max_images=max_images,
        max_length=max_length,
        system_prompt="",
        tiling=settings,
    )


def two_colour(width, height, left, right):
    img = Image.new("RGB", (width, height), left)
    img.paste(right, (width // 2, 0, width, height))
    return img


@pytest.fixture
def images(tmp_path):
    two_colour(32, 16, (255, 0, 0), (0, 0, 255)).save(tmp_path / "wide.png")  # (2,1) → 3 slots
    Image.new("RGB", (16, 16), (0, 255, 0)).save(tmp_path / "square.png")  # (1,1) → 1 slot
    Image.new("RGB", (16, 48), (9, 9, 9)).save(tmp_path / "tall.png")  # (1,3) → 4 slots
    return tmp_path


def human(text):
    return {"from": "human", "value": text}


def gpt(text):
    return {"from": "gpt", "value": text}


SMALL = TilingConfig(max_num=4, tile_size=16)


def test_one_tag_becomes_its_tiles_consecutive_slots(tokenizer, images):
    encoder = make_encoder(tokenizer, images, SMALL)
    record = {"id": "r", "image": "wide.png", "conversations": [human("<image>\nq?"), gpt("red")]}
    sample = SupervisedDataset([record], encoder)[0]
    assert isinstance(sample, Sample), sample
    first = sample.image_starts[0]
    assert sample.image_starts == [first, first + SLOT, first + 2 * SLOT]
    # the same ids as the untiled encoder on a text with three tags
    plain = make_encoder(tokenizer, images, TilingConfig())
    turns = parse_turns([human("<image><image><image>\nq?"), gpt("red")], "r")
    expected = plain.encode_turns(turns, "r")
    assert sample.input_ids == expected.input_ids
    assert sample.labels == expected.labels
    assert sample.image_starts == expected.image_starts
    # pixels: left tile red, right tile blue, thumbnail both; square tiles: no padding band
    a = sample.pixel_values["a"]
    assert a.shape == (3, 3, 32, 32) and sample.pixel_values["b"].shape == (3, 3, 8, 8)
    assert torch.equal(
        a[0], torch.tensor([255, 0, 0], dtype=torch.uint8)[:, None, None].expand(3, 32, 32)
    )
    assert torch.equal(
        a[1], torch.tensor([0, 0, 255], dtype=torch.uint8)[:, None, None].expand(3, 32, 32)
    )
    thumb = two_colour(32, 16, (255, 0, 0), (0, 0, 255)).resize((16, 16), Image.Resampling.BICUBIC)
    assert torch.equal(a[2], to_tensor(thumb, SPECS["a"], "pad"))
    assert sample.image_boxes.tolist() == [[0.0, 0.0, 1.0, 1.0]] * 3


def test_several_images_keep_their_order(tokenizer, images):
    encoder = make_encoder(tokenizer, images, SMALL)
    record = {
        "id": "r",
        "image": ["tall.png", "square.png", "wide.png"],
        "conversations": [
            human("<image> and <image>\nq"),
            gpt("x"),
            human("<image> too"),
            gpt("y"),
        ],
    }
    sample = SupervisedDataset([record], encoder)[0]
    assert isinstance(sample, Sample), sample
    starts = sample.image_starts
    assert len(starts) == 4 + 1 + 3
    # tall's 4 slots are back to back, then text, then square's 1, then (next turn) wide's 3
    assert starts[1:4] == [starts[0] + SLOT * k for k in (1, 2, 3)]
    assert starts[4] > starts[3] + SLOT and starts[5] > starts[4] + SLOT
    assert starts[6:] == [starts[5] + SLOT, starts[5] + 2 * SLOT]
    assert sample.pixel_values["a"].shape[0] == 8
    assert torch.all(sample.pixel_values["a"][4] == torch.tensor([0, 255, 0])[:, None, None])


def test_tiles_past_the_slots_are_skipped(tokenizer, images):
    encoder = make_encoder(tokenizer, images, SMALL, max_images=5)
    record = {
        "id": "big",
        "image": ["tall.png", "wide.png"],
        "conversations": [human("<image><image>q"), gpt("x")],
    }
    out = SupervisedDataset([record], encoder)[0]
    assert isinstance(out, Skipped) and out.reason == "too_many_images"
    assert "7 tiles" in out.detail and "data.max_images=5" in out.detail
    missing = {"id": "m", "image": "gone.png", "conversations": [human("<image>q"), gpt("x")]}
    assert SupervisedDataset([missing], encoder)[0].reason == "missing_image"


def test_lengths_count_tiles(tokenizer, images, tmp_path):
    encoder = make_encoder(tokenizer, images, SMALL)
    records = [
        {"id": "a", "image": "wide.png", "conversations": [human("<image>\nq?"), gpt("red")]},
        {
            "id": "b",
            "image": ["tall.png", "square.png"],
            "conversations": [human("<image><image> hm"), gpt("ok")],
        },
        {"id": "c", "conversations": [human("text only"), gpt("fine")]},
        {"id": "d", "image": "gone.png", "conversations": [human("<image>q"), gpt("x")]},
    ]
    path = tmp_path / "recs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records))
    recs = open_records(str(path))
    spec = LengthSpec.from_encoder(encoder)
    lengths = compute_lengths(recs, spec)
    dataset = SupervisedDataset(recs, encoder)
    for i in range(3):
        assert lengths.lengths[i] == len(dataset[i].input_ids), i
    assert lengths.lengths[0] == len(dataset[0].input_ids) and len(dataset[0].image_starts) == 3
    assert list(lengths.multimodal) == [True, True, False, True]
    assert list(lengths.estimated) == [False, False, False, True]  # no header to read
    untiled = LengthSpec.from_encoder(make_encoder(tokenizer, images, TilingConfig()))
    assert compute_lengths(recs, untiled).lengths[0] == lengths.lengths[0] - 2 * SLOT
    # the cache key follows every tiling setting
    keys = {
        LengthSpec.from_encoder(make_encoder(tokenizer, images, t)).key()
        for t in (
            SMALL,
            TilingConfig(max_num=6, tile_size=16),
            TilingConfig(max_num=4, tile_size=32),
            TilingConfig(max_num=4, min_num=2, tile_size=16),
            TilingConfig(max_num=4, tile_size=16, thumbnail=False),
            TilingConfig(),
        )
    }
    assert len(keys) == 6


DEMO_TILED = [
    "experiment=demo",
    "data.tiling.max_num=4",
    "data.tiling.tile_size=32",
    "data.max_images=5",
    "model.towers.clip.num_tokens=16",
    "model.image_token_len=16",
    "stages.pretrain.max_length=128",
    "stages.finetune.max_length=144",
]


def test_config_checks_the_slots_hold_one_tiled_image(compose):
    validate(compose(DEMO_TILED), check_paths=False)
    with pytest.raises(ConfigError, match=r"data.max_images=4 .*data.tiling.max_num=4 .*= 5 slots"):
        validate(compose([*DEMO_TILED, "data.max_images=4"]), check_paths=False)
    validate(
        compose([*DEMO_TILED, "data.max_images=4", "data.tiling.thumbnail=false"]),
        check_paths=False,
    )
    with pytest.raises(
        ConfigError, match=r"data.tiling.min_num=5 must be in \[1, data.tiling.max_num=4\]"
    ):
        validate(compose([*DEMO_TILED, "data.tiling.min_num=5"]), check_paths=False)
    with pytest.raises(ConfigError, match=r"data.tiling.max_num=-1"):
        validate(compose([*DEMO_TILED, "data.tiling.max_num=-1"]), check_paths=False)
    with pytest.raises(ConfigError, match=r"data.video.num_frames=0"):
        validate(compose(["experiment=demo", "data.video.num_frames=0"]), check_paths=False)
    validate(compose(["experiment=demo", "data.tiling.max_num=0"]), check_paths=False)  # off


def test_eval_and_inference_tile_as_training(tokenizer, images, compose, tmp_path):
    from omegaconf import OmegaConf

    from cambrian_train.eval.benchmarks.base import EvalItem
    from cambrian_train.eval.runner import encode_items, item_images
    from cambrian_train.infer.load import ExportedConfig, parse_config, prompt_settings

    encoder = make_encoder(tokenizer, images, SMALL)
    items = [EvalItem("x", ["wide.png"], "<image>\nWhat colour?", "red")]

    class Bench:
        name = "fixture"

    (prompt,) = encode_items(encoder, Bench(), items)
    assert len(prompt.image_starts) == 3
    pixels, boxes = item_images(encoder, items[0])
    assert pixels["a"].shape[0] == 3 and boxes.shape == (3, 4)
    with pytest.raises(ValueError, match="tile_counts"):
        encoder.encode_prompt("<image>\nWhat colour?")  # tiling on: counts are needed
    # the tiling settings travel with the prompt settings of a run and of an export
    cfg = compose(DEMO_TILED)
    settings = prompt_settings(cfg, "finetune")
    assert settings.tiling == cfg.data.tiling and settings.tiling.max_num == 4
    path = tmp_path / "cambrian.yaml"
    path.write_text(
        OmegaConf.to_yaml(OmegaConf.structured(ExportedConfig(model=cfg.model, prompt=settings)))
    )
    assert parse_config(path, ExportedConfig).prompt.tiling == TilingConfig(max_num=4, tile_size=32)


@pytest.mark.integration
def test_tiled_two_stage_run_and_its_checkpoint_tile(tiny_overrides, tmp_path):
    """The CLI trains both stages with tiling on (nothing skipped), evaluates, and the model
    loaded back from its checkpoint tiles prompts as training did."""
    import subprocess
    import sys

    from cambrian_train.eval.vqa import load_questions, question_text
    from cambrian_train.infer.load import load_pretrained

    overrides = [*tiny_overrides, *DEMO_TILED[1:]]
    proc = subprocess.run(
        [sys.executable, "-m", "cambrian_train", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    for stage in ("pretrain", "finetune"):
        assert results["stages"][stage]["skipped"]["total"] == 0
        assert results["stages"][stage]["eval"]["count"] == 8
    _, _, encoder = load_pretrained(tmp_path / "run" / "finetune" / "checkpoint")
    assert encoder.tiling == TilingConfig(max_num=4, tile_size=32) and encoder.max_images == 5
    folder = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("data.root="))
    question = load_questions(f"{folder}/test.jsonl")[0]
    image = f"{folder}/images/{question.image}"
    prompt = encoder.encode_prompt(question_text(question), encoder.tile_counts([image]))
    assert len(prompt.image_starts) == 5  # 64-px square: 2×2 tiles of 32 px + thumbnail
    pixels, _ = encoder.load_images([image], [5])
    assert pixels["clip"].shape == (5, 3, 64, 64)
